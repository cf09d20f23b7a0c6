"""Choosing the next codes: classifier-free guidance, then greedy or seeded top-k / top-p sampling.

Guidance is transformers' ``ClassifierFreeGuidanceLogitsProcessor``: the batch holds the
conditional and the unconditional rows, and the logits used are
``uncond + guidance_scale * (cond - uncond)``. Sampling then follows transformers' warpers in
their order (temperature, top-k, top-p) and draws from the softmax with a numpy generator seeded
per segment, so the same request gives the same music. ``do_sample=False`` is greedy (argmax),
what the tests compare with transformers.
"""

from __future__ import annotations

import numpy as np
from msgspec import Struct


class SamplingConfig(Struct, kw_only=True, frozen=True):
    do_sample: bool = True
    top_k: int = 250
    top_p: float = 0.0
    """0 (or 1) turns top-p off."""
    temperature: float = 1.0
    guidance_scale: float = 3.0

    def check(self) -> SamplingConfig:
        if self.top_k < 0 or not 0.0 <= self.top_p <= 1.0 or self.temperature < 0 or self.guidance_scale < 0:
            raise ValueError(
                f"need top_k >= 0, 0 <= top_p <= 1, temperature >= 0, guidance_scale >= 0; got {self}"
            )
        return self

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


def guide(logits: np.ndarray, scale: float) -> np.ndarray:
    """(2, K, V) conditional and unconditional rows -> (K, V) guided logits; (1, K, V) -> (K, V)."""
    if logits.shape[0] == 1:
        return logits[0]
    cond, uncond = logits[0], logits[1]
    return uncond + (cond - uncond) * np.float32(scale)


def choose(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """One code per codebook from guided logits (K, V)."""
    if not config.do_sample or config.temperature == 0.0:
        return logits.argmax(axis=-1).astype(np.int64)
    x = logits.astype(np.float64) / config.temperature
    k, v = x.shape
    if 0 < config.top_k < v:
        kth = np.partition(x, v - config.top_k, axis=-1)[:, v - config.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if 0.0 < config.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < config.top_p  # always keeps the top one
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((k, 1))
    out = (np.cumsum(p, axis=-1) < u).sum(axis=-1)
    return np.minimum(out, v - 1).astype(np.int64)
