"""The audio interface: one request in, audio chunks out as they are ready, and a typed anchor.

Every audio backend follows it, and nothing outside a backend imports the backend's internals:

- :class:`AudioRequest`: the description, how many seconds (plus a ``tail`` that overlaps the
  next segment's head in the crossfade), the seed, the previous segment's :class:`Anchor`, and the
  last seconds of what is playing (``context``), so a backend whose anchor is missing or of
  another backend can still continue the music.
- :meth:`AudioBackend.stream` yields :class:`AudioChunk` s in order; their frames add up to
  ``seconds + tail``. The last one carries the anchor of the music at ``seconds`` (where the next
  segment begins). A caller may queue the first chunk before the segment is finished.
- :class:`Anchor`: the paper's melodic anchor, the backend's own type (the synthesizer's key,
  tempo, motif and notes; MusicGen's codes of the last seconds), with ``to_bytes`` /
  ``from_bytes`` and a one-line ``summary`` for logs; optionally a :class:`BarGrid` (where its
  bar lines are), which lets the scheduler join the next segment at a bar line. :func:`anchor_to_metadata` and
  :func:`continue_from` store it in and read it from a WAV's metadata for every backend.

Backends: ``synth`` (:mod:`.procedural`, numpy only, the embedded default) and MusicGen bundles
(:mod:`.musicgen`, onnxruntime). :func:`open_audio_backend` opens either by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metabgm_edge.audio.interface import (
    CHANNELS,
    CONTEXT_SECONDS,
    SAMPLE_RATE,
    SPEED_MARGIN,
    Anchor,
    AudioBackend,
    AudioChunk,
    AudioRequest,
    BarGrid,
    anchor_from_metadata,
    anchor_to_metadata,
    continue_from,
    interleave,
    next_join_point,
    render,
    single,
)
from metabgm_edge.errors import NO_ONNXRUNTIME, BackendError

__all__ = [
    "CHANNELS",
    "CONTEXT_SECONDS",
    "SAMPLE_RATE",
    "SPEED_MARGIN",
    "Anchor",
    "AudioBackend",
    "AudioChunk",
    "AudioRequest",
    "BarGrid",
    "anchor_from_metadata",
    "anchor_to_metadata",
    "continue_from",
    "interleave",
    "next_join_point",
    "open_audio_backend",
    "render",
    "single",
]


# -- opening a backend ----------------------------------------------------------------------------


def open_audio_backend(spec: str | None = None, **options: Any) -> AudioBackend:
    """``None`` or ``"synth"``: the embedded procedural synthesizer (no weights). A folder: a
    MusicGen bundle made by ``metabgm-edge export musicgen``. Anything else raises BackendError
    saying what is available. ``options`` go to the MusicGen loader (``providers``, ``threads``);
    the synthesizer takes ``channels`` (1 stands in for a mono model)."""
    name = (spec or "synth").strip()
    if name.lower() in ("synth", "procedural", "default"):
        from metabgm_edge.audio.procedural import ProceduralSynth

        return ProceduralSynth(**{k: v for k, v in options.items() if k == "channels"})
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            from metabgm_edge.audio.musicgen import MusicGen
        except ImportError as exc:  # onnxruntime missing: say which extra to install
            why = NO_ONNXRUNTIME if "onnxruntime" in f"{exc.name} {exc}" else str(exc)
            raise BackendError(f"cannot run the MusicGen bundle {path}: {why}") from None

        return MusicGen.load(path, **options)
    raise BackendError(
        f"unknown audio backend {spec!r}: use 'synth' (the embedded procedural synthesizer, the default), "
        "'auto', or the folder of a bundle made by 'metabgm-edge export musicgen' "
        "(e.g. engines/musicgen-small)"
    )
