from metabgm_edge.cli import run

run()
