"""The decoder's TensorRT / TensorRT-RTX optimization profile, from the bundle's manifest alone.

With the in-place cache every shape but the prompt's is fixed: the cache is always
``context_length`` positions and so is the attention mask. Only ``input_ids`` (and
``position_ids`` where the graph has them) vary, from one token (a decode step) to the longest
piece of prompt one step takes. Every corner is a shape the graph really takes.
"""

from __future__ import annotations

from typing import Final

from metabgm_edge.bundle import Graph, KVCache, ShapeProfile

DEFAULT_MAX_PROMPT: Final = 512
"""Longest piece of prompt one run takes on TensorRT(-RTX); longer prompts run in chunks."""


def decoder_profile(
    graph: Graph, cache: KVCache, max_prompt: int, opt_prompt: int | None = None
) -> ShapeProfile:
    length = cache.context_length
    max_prompt = max(1, min(max_prompt, length - 1))
    opt = max(1, min(opt_prompt or 256, max_prompt))
    kv = [1, cache.num_kv_heads, length, cache.head_dim]
    corners: dict[str, dict[str, list[int]]] = {}
    for corner, n in (("min", 1), ("opt", opt), ("max", max_prompt)):
        shapes: dict[str, list[int]] = {}
        for name in graph.inputs:
            if name in ("input_ids", "position_ids"):
                shapes[name] = [1, n]
            elif name == "attention_mask":
                shapes[name] = [1, length]
            elif name.startswith("past_key_values"):
                shapes[name] = list(kv)
        corners[corner] = shapes
    return ShapeProfile(min=corners["min"], opt=corners["opt"], max=corners["max"])
