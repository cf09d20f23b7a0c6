"""The packaged build's entry point: the same command line as the `metabgm-edge` script."""

import multiprocessing

from metabgm_edge.cli import run

if __name__ == "__main__":
    multiprocessing.freeze_support()  # Windows: a frozen program must say so before any child starts
    run()
