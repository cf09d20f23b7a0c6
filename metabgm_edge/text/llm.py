"""The adapter that puts an exported LLM bundle behind the text interface of the two stages."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from metabgm_edge.llm.runtime import LLM, GenerationConfig
from metabgm_edge.text import StageRequest

log = logging.getLogger(__name__)


class LLMText:
    """:class:`~metabgm_edge.text.TextBackend` over an exported bundle.

    Renders the request's messages with the bundle's chat template and generates with the bundle's
    defaults, ``request.max_new_tokens`` and ``request.seed``: the same request gives the same text.
    """

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.name = f"llm:{llm.manifest.name} ({llm.manifest.quantization}, {llm.provider})"

    @classmethod
    def load(
        cls, path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> LLMText:
        return cls(LLM.load(path, providers=providers, threads=threads))

    batches = True
    """Several requests decode as one batch (:meth:`LLM.generate_batch`): the weights are read once
    per step for all of them."""

    def generate(self, request: StageRequest) -> str:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[StageRequest]) -> list[str]:
        prompts = [self.llm.render_chat(r.messages) for r in requests]
        configs = [GenerationConfig(max_new_tokens=r.max_new_tokens, seed=r.seed) for r in requests]
        results = self.llm.generate_batch(prompts, configs)
        for request, result in zip(requests, results, strict=True):
            log.debug(
                "%s: %d prompt + %d new tokens (%s) in %.2f s, first token %.2f s, %.1f tok/s (batch of %d)",
                request.stage,
                result.prompt_tokens,
                len(result.token_ids),
                result.stop_reason,
                result.total_s,
                result.first_token_s,
                result.decode_tokens_per_s,
                len(requests),
            )
        return [result.text.strip() for result in results]
