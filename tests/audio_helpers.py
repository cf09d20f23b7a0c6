"""Helpers of the audio tests: one segment through the audio interface, and a click detector."""

from __future__ import annotations

from typing import Any

import numpy as np

from metabgm_edge.audio import SAMPLE_RATE, AudioBackend, AudioRequest
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


def worst_jump_ratio(x: np.ndarray, at: int, near: int = 64, context: int = SAMPLE_RATE // 10) -> float:
    """The largest sample-to-sample step within ``near`` samples of ``at`` divided by the largest
    step in the ``context`` samples before and after (the local envelope of the signal's steps).
    A click makes this much larger than 1."""
    d = np.abs(np.diff(x, axis=0)).max(axis=1)
    around = d[max(0, at - near) : at + near]
    before = d[max(0, at - near - context) : max(0, at - near)]
    after = d[at + near : at + near + context]
    local = max(float(before.max(initial=0.0)), float(after.max(initial=0.0)), 1e-9)
    return float(around.max()) / local
