"""Choosing the next token from one row of logits: NumPy only.

Same semantics as transformers' processors, applied in the same order: repetition penalty over
every token seen so far (prompt included), then greedy argmax, or temperature and top-p followed
by one draw from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

_FLOOR = 1e-5


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Divide positive and multiply negative logits of already seen tokens by ``penalty`` (CTRL)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def top_p_candidates(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of most likely tokens whose mass reaches ``top_p``: (ids, renormalized probs).

    Sorts only the tokens above a small probability floor when they hold the needed mass (every
    token left out is less likely than every one kept, so the nucleus is among them), else a
    growing top-k slice (64, 256, ...); never the whole vocabulary on every step.
    """
    if top_p >= 1.0:
        return np.arange(probs.size), probs
    likely = np.flatnonzero(probs >= _FLOOR)
    if probs[likely].sum() >= top_p:
        order = likely[np.argsort(probs[likely])[::-1]]
        cumulative = np.cumsum(probs[order])
        keep = min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, order.size)
        kept = probs[order[:keep]]
        return order[:keep], kept / kept.sum()
    k = min(64, probs.size)
    while True:
        top = np.argpartition(probs, probs.size - k)[probs.size - k :] if k < probs.size else np.arange(k)
        order = top[np.argsort(probs[top])[::-1]]
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= top_p or k == probs.size:
            keep = min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, order.size)
            kept = probs[order[:keep]]
            return order[:keep], kept / kept.sum()
        k = min(k * 4, probs.size)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted, dtype=np.float64)
    return exp / exp.sum()


class NgramBlocker:
    """Forbids the token that would repeat an n-gram already in the sequence (transformers'
    ``no_repeat_ngram_size``): no loops, and no long verbatim copies of the prompt, which small
    models otherwise make of the narrative in stage 2. One dictionary lookup per step.
    """

    def __init__(self, size: int, prompt: Sequence[int] = (), exempt: Collection[int] = ()) -> None:
        self.size = size
        self.exempt = frozenset(exempt)
        """Never banned (stop tokens: ending the answer is always allowed)."""
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], set[int]] = {}
        for token in prompt:
            self.add(token)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        n = self.size
        if n > 0 and len(self.tokens) >= n:
            self._next.setdefault(tuple(self.tokens[-n:-1]), set()).add(token)

    def banned(self) -> list[int]:
        n = self.size
        if n <= 0 or len(self.tokens) < n - 1:
            return []
        key = tuple(self.tokens[len(self.tokens) - (n - 1) :]) if n > 1 else ()
        return sorted(self._next.get(key, set()) - self.exempt)


def next_token(
    logits: np.ndarray,
    seen: np.ndarray,
    *,
    do_sample: bool,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    rng: np.random.Generator,
    banned: list[int] | None = None,
) -> int:
    """One token id from a 1-D row of logits. Greedy when ``do_sample`` is false or temperature is 0."""
    logits = apply_repetition_penalty(logits.astype(np.float32, copy=False), seen, repetition_penalty)
    if banned:
        logits = logits.copy()
        logits[banned] = -np.inf
    if not do_sample or temperature <= 0.0:
        return int(np.argmax(logits))
    ids, probs = top_p_candidates(softmax(logits / temperature), top_p)
    return int(ids[rng.choice(ids.size, p=probs)])


class Sampler:
    """:func:`next_token` with one request's settings bound."""

    def __init__(
        self,
        *,
        do_sample: bool,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        rng: np.random.Generator,
    ) -> None:
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.rng = rng

    def __call__(self, logits: np.ndarray, seen: np.ndarray, banned: list[int] | None = None) -> int:
        return next_token(
            logits,
            seen,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            rng=self.rng,
            banned=banned,
        )
