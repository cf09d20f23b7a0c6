"""metabgm-edge: a live, generated soundtrack for games.

The runtime: sources of game state, acquisition, characterization (the paper's Algorithm 1), the
two text stages, audio rendering and real-time playback. Conversion of heavy models lives in
:mod:`metabgm_edge.export` and needs the ``export`` extra.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
