"""Audio generation, buffering and output.

An audio backend renders one segment from a music description. ``anchor`` is the paper's melodic
anchor: whatever the backend needs to continue the music in the next segment (for the
procedural synthesizer: key, tempo, motif, last chord, phase; for MusicGen: the codes of the
previous audio's tail). ``None`` starts fresh.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 32000
CHANNELS = 2


@runtime_checkable
class AudioBackend(Protocol):
    name: str
    sample_rate: int
    channels: int

    def render(
        self, description: str, seconds: float, anchor: Any | None, *, tail: float = 0.0, seed: int = 0
    ) -> tuple[np.ndarray, Any]:
        """Return (audio, next_anchor).

        ``audio`` is float32 of shape (frames, channels) holding ``seconds + tail`` seconds; the
        ``tail`` overlaps the next segment's head in an equal-power crossfade. ``next_anchor``
        describes the music at ``seconds`` (where the next segment begins).
        """
        ...


def open_audio_backend(spec: str | None = None) -> AudioBackend:
    """``None`` or ``"synth"``: the embedded procedural synthesizer (no weights).

    Anything else raises BackendError saying what is available.
    """
    from metabgm_edge.errors import BackendError

    name = (spec or "synth").strip()
    if name.lower() in ("synth", "procedural", "default"):
        from metabgm_edge.audio.synth import ProceduralSynth

        return ProceduralSynth()
    raise BackendError(
        f"unknown audio backend {spec!r}: the available backend is 'synth' (the embedded procedural "
        "synthesizer, the default); a MusicGen ONNX bundle is not supported yet"
    )
