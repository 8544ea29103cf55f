"""`python -m medsweep k=v ...`: the same entrypoint as the `medsweep` console script."""

from medsweep.cli import main

if __name__ == "__main__":
    main()
