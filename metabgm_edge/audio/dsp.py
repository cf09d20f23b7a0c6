"""Small signal helpers shared by the backends and the mixer: crossfades and fades.

The crossfade is equal-power (cos/sin gains) for unrelated signals, the case of a scene change
or another backend. When the two sides are correlated (a backend continuing the same music,
which re-renders the notes still sounding), plain equal power would swell by up to 3 dB in the
middle, so the gains are normalised by the measured correlation ``r`` of the overlap:
``a² + b² + 2·r·a·b = 1`` keeps the expected power constant for any ``r`` in [0, 1] (``r = 0``
is exactly equal power, ``r = 1`` equal gain).
"""

from __future__ import annotations

import numpy as np

__all__ = ["crossfade", "fade"]


def crossfade(out_audio: np.ndarray, in_audio: np.ndarray, *, correlation: float | None = None) -> np.ndarray:
    """Crossfade ``out_audio`` into ``in_audio`` (same shape); return a new float32 array.

    ``correlation`` None measures it on the overlap; it is clamped to [0, 1].
    """
    n = out_audio.shape[0]
    if n == 0:
        return in_audio.astype(np.float32, copy=True)
    if correlation is None:
        correlation = _measure(out_audio, in_audio)
    r = min(1.0, max(0.0, float(correlation)))
    p = (np.arange(n, dtype=np.float64) + 0.5) / n
    u = np.cos(0.5 * np.pi * p)
    v = np.sin(0.5 * np.pi * p)
    s = 1.0 / np.sqrt(u * u + v * v + 2.0 * r * u * v)
    a = (u * s).astype(np.float32)[:, None]
    b = (v * s).astype(np.float32)[:, None]
    return out_audio * a + in_audio * b


def _measure(x: np.ndarray, y: np.ndarray) -> float:
    xx = float(np.vdot(x, x))
    yy = float(np.vdot(y, y))
    if xx <= 1e-12 or yy <= 1e-12:
        return 0.0
    return float(np.vdot(x, y)) / np.sqrt(xx * yy)


def fade(audio: np.ndarray, *, out: bool) -> np.ndarray:
    """Equal-power fade-in or fade-out over the whole of ``audio``."""
    n = audio.shape[0]
    p = (np.arange(n, dtype=np.float64) + 0.5) / n
    g = np.cos(0.5 * np.pi * p) if out else np.sin(0.5 * np.pi * p)
    return audio * g.astype(np.float32)[:, None]
