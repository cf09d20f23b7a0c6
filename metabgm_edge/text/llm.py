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

    def generate(self, request: StageRequest) -> str:
        config = GenerationConfig(max_new_tokens=request.max_new_tokens, seed=request.seed)
        result = self.llm.chat(request.messages, config)
        log.debug(
            "%s: %d prompt + %d new tokens (%s) in %.2f s, first token %.2f s, %.1f tok/s",
            request.stage,
            result.prompt_tokens,
            len(result.token_ids),
            result.stop_reason,
            result.total_s,
            result.first_token_s,
            result.decode_tokens_per_s,
        )
        return result.text.strip()
