"""`python -m medsweep.report PATH ...`: the same entry point as the `medsweep-report` console script."""

import sys

from medsweep.report import main

if __name__ == "__main__":
    sys.exit(main())
