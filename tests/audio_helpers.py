"""One segment through the audio interface, collected: what the tests of backends call."""

from __future__ import annotations

from typing import Any

import numpy as np

from metabgm_edge.audio import AudioBackend, AudioRequest
from metabgm_edge.audio import render as render_request


def render(
    backend: AudioBackend,
    description: str,
    seconds: float,
    anchor: Any = None,
    *,
    tail: float = 0.0,
    seed: int = 0,
    first_chunk: float = 0.0,
    context: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    request = AudioRequest(description=description, seconds=seconds, tail=tail, seed=seed, anchor=anchor,
                           first_chunk=first_chunk, context=context)  # fmt: skip
    return render_request(backend, request)
