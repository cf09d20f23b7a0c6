"""Chat templates: messages -> the prompt text a chat model was trained on.

Two families cover the models this project ships recipes for: LLaMA-2-Chat's ``[INST]`` format and
ChatML (SmolLM2, Qwen and others). Written out here rather than run from the model's Jinja
template, so the runtime needs no template engine; the export keeps the model's own template in
the bundle for reference. Special tokens (``<s>``, ``<|im_start|>``) appear as text and the
tokenizer maps them to their ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol


class Message(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


TEMPLATES: Final = ("chatml", "llama2")

_LLAMA2_BOS: Final = "<s>"
_LLAMA2_EOS: Final = "</s>"


def render(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    default_system: str | None = None,
) -> str:
    """The prompt for ``messages``, ending where the assistant's answer starts."""
    if not messages:
        raise ValueError("a chat needs at least one message")
    for message in messages:
        if message.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown chat role {message.role!r}: use system, user or assistant")
    if template == "chatml":
        return _chatml(messages, default_system)
    if template == "llama2":
        return _llama2(messages, bos_token or _LLAMA2_BOS, eos_token or _LLAMA2_EOS, default_system)
    raise ValueError(f"unknown chat template {template!r}: use one of {', '.join(TEMPLATES)}")


def end_marker(template: str, eos_token: str | None = None) -> str:
    """The text that ends an assistant turn: generation stops at its token."""
    return "<|im_end|>" if template == "chatml" else (eos_token or _LLAMA2_EOS)


def _chatml(messages: Sequence[Message], default_system: str | None) -> str:
    parts = []
    if messages[0].role != "system" and default_system:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts.extend(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _llama2(messages: Sequence[Message], bos: str, eos: str, default_system: str | None) -> str:
    """Meta's format: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>``."""
    system = default_system
    rest = list(messages)
    if rest[0].role == "system":
        system = rest.pop(0).content
    if not rest or rest[0].role != "user":
        raise ValueError("a LLaMA-2 chat must start with a user message (after an optional system one)")
    out = []
    pending_user: str | None = None
    for message in rest:
        if message.role == "system":
            raise ValueError("LLaMA-2's template takes one system message, at the start")
        if message.role == "user":
            if pending_user is not None:
                raise ValueError("LLaMA-2's template needs user and assistant messages to alternate")
            text = message.content.strip()
            if system and not out:
                text = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{text}"
            pending_user = text
        else:
            if pending_user is None:
                raise ValueError("LLaMA-2's template needs user and assistant messages to alternate")
            out.append(f"{bos}[INST] {pending_user} [/INST] {message.content.strip()} {eos}")
            pending_user = None
    if pending_user is None:
        raise ValueError("the last message must be the user's: the model answers it")
    out.append(f"{bos}[INST] {pending_user} [/INST]")
    return "".join(out)
