"""The paper's Section III-A: paired data for fine-tuning and evaluation (``metabgm-edge dataset``).

:mod:`.scenes` is the scenario grid (synthesized scenes), :mod:`.captions` reads musicians'
captions (MusicCaps columns), :mod:`.reverse` matches a caption to a scene (reverse generation),
:mod:`.pairs` is the row format (Alpaca-style Instruction-Input-Output with provenance) and the
split into train / validation / test. Teachers are text backends behind the text interface.
"""
