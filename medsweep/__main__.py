"""`python -m medsweep k=v ...`: the same entrypoint as the `medsweep` console script."""

from medsweep.run import main

if __name__ == "__main__":
    main()
