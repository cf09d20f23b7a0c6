"""The embedded procedural synthesizer: numpy only, the default audio backend.

:mod:`.musicparse` reads the description, :mod:`.theory` plans harmony and motifs, :mod:`.synth`
plans and renders bars, :mod:`.voices` makes the instruments and the room.
"""

from metabgm_edge.audio.procedural.synth import ProceduralSynth, SynthAnchor

__all__ = ["ProceduralSynth", "SynthAnchor"]
