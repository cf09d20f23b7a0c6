"""Text generation for the two stages, behind one interface.

A backend turns a :class:`StageRequest` into text. The LLM runtime reads ``messages`` (the
rendered prompt template); the embedded composer reads the structured fields. Both get the same
request, so the pipeline in :mod:`metabgm_edge.stages` does not care which one runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from msgspec import Struct

from metabgm_edge.errors import NO_ONNXRUNTIME, BackendError
from metabgm_edge.listener_profile import DEFAULT_PROFILE, Profile

Stage = Literal["narrative", "description", "direct"]


class ChatMessage(Struct, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: str


class StageRequest(Struct, kw_only=True, frozen=True):
    stage: Stage
    messages: list[ChatMessage]
    """The prompt template rendered for this request (what an LLM reads)."""
    characterized: dict[str, Any]
    """Algorithm 1's output (what the composer reads)."""
    combat: bool
    narrative: str | None = None
    """Stage 1's output, set for the description stage."""
    profile: Profile = DEFAULT_PROFILE
    seed: int = 0
    max_new_tokens: int = 96
    timeout: float | None = None
    """Seconds this call may take (the scheduler sets it from what is left of the text stages' share
    of the deadline); None: no limit. Backends that can bound their own work (a server) use it."""


@runtime_checkable
class TextBackend(Protocol):
    name: str
    batches: bool
    """True when :meth:`generate_batch` is faster than one request after another (an LLM: its
    decoding steps run as one batch); a server then batches requests across players."""

    def generate(self, request: StageRequest) -> str:
        """Return the stage's text. May raise; the scheduler then uses the composer fallback."""
        ...

    def generate_batch(self, requests: Sequence[StageRequest]) -> list[str]:
        """Each request's text, as :meth:`generate` gives it alone, in order. May raise."""
        ...


def open_text_backend(spec: str | None = None) -> TextBackend:
    """``composer`` (default, embedded rules), the path of an exported LLM bundle, or an
    OpenAI-compatible server (``http://HOST:PORT/v1[?model=NAME]``, ``openai:MODEL``)."""
    if spec in (None, "", "composer"):
        from metabgm_edge.text.composer import Composer

        return Composer()
    from metabgm_edge.text.openai_compat import OpenAIText, is_openai_spec

    if is_openai_spec(spec):
        return OpenAIText.from_spec(spec)
    path = Path(spec)
    if path.is_dir():
        try:
            from metabgm_edge.text.llm import LLMText
        except ImportError as exc:  # onnxruntime missing: say which extra to install
            why = NO_ONNXRUNTIME if "onnxruntime" in f"{exc.name} {exc}" else str(exc)
            raise BackendError(f"cannot run the LLM bundle {path}: {why}") from None

        return LLMText.load(path)
    raise BackendError(
        f"unknown text backend {spec!r}: use 'composer', the folder of a bundle made by "
        "'metabgm-edge export llm' (for example engines/smollm2-135m-int8), an OpenAI-compatible "
        "server (http://127.0.0.1:8080/v1) or openai:MODEL"
    )
