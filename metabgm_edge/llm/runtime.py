"""The generation loop: a bundle's ONNX decoder with its KV cache, on onnxruntime alone.

``LLM.load(folder)`` verifies the bundle, opens the session on the best provider (see
:mod:`metabgm_edge.ort.session`) and the tokenizer. ``LLM.stream`` is a generator of token ids:
nothing runs until it is iterated. ``LLM.generate`` / ``LLM.chat`` collect a
:class:`GenerationResult` with timings.

Every step goes through IO binding: the KV cache stays where the provider computes it (GPU memory
on CUDA / TensorRT) and is bound back as the next step's past, only the last position's logits
come to the host. The same code path runs on the CPU, where the tests exercise it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from metabgm_edge.bundle import LLMSection, Manifest, open_bundle
from metabgm_edge.errors import BundleError
from metabgm_edge.llm import chat as templates
from metabgm_edge.llm import sampling
from metabgm_edge.ort import binding
from metabgm_edge.ort.session import OpenedSession, open_graph

log = logging.getLogger(__name__)

StopReason = Literal["stop_token", "stop_string", "max_new_tokens", "context"]


class GenerationConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Per-call knobs. ``None`` means the bundle's default (its manifest's ``generation``)."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int = 0
    stop_strings: list[str] | None = None


class GenerationResult(msgspec.Struct, kw_only=True):
    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: StopReason
    first_token_s: float
    """From the call to the first new token: tokenizing, prefill and one sampling step."""
    total_s: float
    decode_tokens_per_s: float
    """New tokens after the first, per second of the time after the first."""


class DecodeState:
    """One sequence's KV cache. ``forward(ids)`` appends ids and returns the last position's logits."""

    def __init__(self, llm: LLM) -> None:
        self._llm = llm
        cache = llm.section.cache
        empty = binding.empty([1, cache.num_kv_heads, 0, cache.head_dim], cache.kv_dtype, llm.device)
        self._past: list[ort.OrtValue] = [empty] * (2 * cache.num_layers)
        self.length = 0

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` (in chunks no longer than the engine's profile allows) and return the
        logits of the last position."""
        llm = self._llm
        if not ids:
            raise ValueError("forward needs at least one token id")
        if self.length + len(ids) > llm.context_length:
            raise ValueError(
                f"{self.length + len(ids)} tokens exceed the bundle's context of {llm.context_length}"
            )
        step = llm.max_chunk or len(ids)
        for start in range(0, len(ids) - step, step):
            self._run(ids[start : start + step])
        return self._run(ids[len(ids) - ((len(ids) - 1) % step + 1) :])

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        llm = self._llm
        n = len(ids)
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, self.length + n), dtype=np.int64),
            "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None, :],
        }
        step = binding.Step(llm.session, llm.device)
        step.host({k: v for k, v in feeds.items() if k in llm.input_names})
        step.values(dict(zip(llm.past_names, self._past, strict=True)))
        outputs = step.out_host(["logits"]).out_device(llm.present_names).run()
        self._past = [outputs[name] for name in llm.present_names]
        self.length += n
        return np.asarray(outputs["logits"].numpy()[0, -1], dtype=np.float32)


class LLM:
    """A loaded bundle: session, tokenizer and manifest."""

    def __init__(self, folder: Path, manifest: Manifest, opened: OpenedSession, tokenizer: Tokenizer) -> None:
        self.folder = folder
        self.manifest = manifest
        assert manifest.llm is not None  # open_bundle checked the kind
        self.section: LLMSection = manifest.llm
        self.session = opened.session
        self.provider = opened.provider
        self.device = opened.device
        self.skipped_providers = opened.skipped
        self.tokenizer = tokenizer
        cache = self.section.cache
        self.input_names = set(opened.input_names)
        output_names = opened.output_names
        self.past_names = [
            template.format(layer=layer)
            for layer in range(cache.num_layers)
            for template in (cache.past_key, cache.past_value)
        ]
        self.present_names = [
            template.format(layer=layer)
            for layer in range(cache.num_layers)
            for template in (cache.present_key, cache.present_value)
        ]
        missing = [n for n in ("input_ids", "attention_mask", *self.past_names) if n not in self.input_names]
        missing += [n for n in ("logits", *self.present_names) if n not in output_names]
        if missing:
            raise BundleError(
                f"{opened.model_file} lacks the KV cache its manifest describes (missing {missing[:4]}"
                f"{'...' if len(missing) > 4 else ''}): the bundle is mismatched; re-export it"
            )
        self.context_length = cache.context_length
        self.max_chunk: int | None = None
        """Longest piece of prompt one step takes: the TensorRT profile's maximum, else unlimited."""
        engine = manifest.engine_for("decoder")
        if opened.provider == "tensorrt" and engine and engine.shape_profiles:
            self.max_chunk = engine.shape_profiles[0].max.get("input_ids", [1, 0])[1] or None
        chat = self.section.chat
        stop_ids = set(self.section.generation.stop_token_ids)
        end = tokenizer.token_to_id(templates.end_marker(chat.template, chat.eos_token))
        if end is not None:
            stop_ids.add(end)
        self.stop_token_ids = frozenset(stop_ids)

    @classmethod
    def load(
        cls, path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> LLM:
        """Verify and open the bundle at ``path``. ``providers`` narrows the choice (e.g. ``["cpu"]``)."""
        folder = Path(path)
        t0 = time.perf_counter()
        manifest = open_bundle(folder, "llm")
        opened = open_graph(folder, manifest, "decoder", providers=providers, threads=threads)
        assert manifest.llm is not None
        tokenizer_path = folder / manifest.llm.tokenizer_file
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{tokenizer_path} is not a valid tokenizer: {exc}") from None
        llm = cls(folder, manifest, opened, tokenizer)
        log.info(
            "loaded %s (%s, %s) on %s in %.2f s",
            manifest.name,
            manifest.quantization,
            manifest.target,
            llm.provider,
            time.perf_counter() - t0,
        )
        return llm

    # -- text <-> ids ------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[templates.Message]) -> str:
        c = self.section.chat
        return templates.render(
            c.template,
            messages,
            bos_token=c.bos_token,
            eos_token=c.eos_token,
            default_system=c.default_system,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_start|>``, ``<s>``) map to theirs."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------------------

    def start(self) -> DecodeState:
        return DecodeState(self)

    def stream(self, prompt_ids: Sequence[int], config: GenerationConfig | None = None) -> Iterator[int]:
        """Yield new token ids one by one; the generator's return value is the stop reason."""
        cfg = config or GenerationConfig()
        g = self.section.generation
        max_new = g.max_new_tokens if cfg.max_new_tokens is None else cfg.max_new_tokens
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new}")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.context_length:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; this bundle takes at most {self.context_length} "
                "(prompt and answer together): shorten the prompt"
            )
        do_sample = g.do_sample if cfg.do_sample is None else cfg.do_sample
        temperature = g.temperature if cfg.temperature is None else cfg.temperature
        top_p = g.top_p if cfg.top_p is None else cfg.top_p
        penalty = g.repetition_penalty if cfg.repetition_penalty is None else cfg.repetition_penalty
        stop_strings = g.stop_strings if cfg.stop_strings is None else cfg.stop_strings
        ngram = g.no_repeat_ngram_size if cfg.no_repeat_ngram_size is None else cfg.no_repeat_ngram_size
        blocker = sampling.NgramBlocker(ngram, prompt_ids, self.stop_token_ids)
        if temperature < 0 or not 0 < top_p <= 1 or penalty <= 0:
            raise ValueError(
                f"need temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0; got {temperature}, "
                f"{top_p}, {penalty}"
            )
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        seen = np.zeros(self.section.cache.vocab_size, dtype=bool)
        seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        state = self.start()
        logits = state.forward(prompt_ids)
        generated: list[int] = []
        while True:
            token = sampling.next_token(
                logits,
                np.flatnonzero(seen),
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                repetition_penalty=penalty,
                rng=rng,
                banned=blocker.banned(),
            )
            if token in self.stop_token_ids:
                return "stop_token"
            generated.append(token)
            blocker.add(token)
            seen[token] = True
            yield token
            if stop_strings and any(s in self.decode(generated) for s in stop_strings):
                return "stop_string"
            if len(generated) >= max_new:
                return "max_new_tokens"
            if state.length >= self.context_length:
                return "context"
            logits = state.forward([token])

    def generate(
        self, prompt: str | Sequence[int], config: GenerationConfig | None = None
    ) -> GenerationResult:
        """Run :meth:`stream` to the end; ``prompt`` is text (already templated) or token ids."""
        t0 = time.perf_counter()
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        tokens: list[int] = []
        first = last = t0
        stream = self.stream(ids, config)
        while True:
            try:
                token = next(stream)
            except StopIteration as stop:
                reason: StopReason = stop.value
                break
            last = time.perf_counter()
            if not tokens:
                first = last
            tokens.append(token)
        end = time.perf_counter()
        text = self.decode(tokens)
        for s in (
            config.stop_strings
            if config and config.stop_strings is not None
            else self.section.generation.stop_strings
        ):
            if s in text:
                text = text[: text.index(s)]
        decode_rate = (len(tokens) - 1) / (last - first) if len(tokens) > 1 and last > first else 0.0
        return GenerationResult(
            text=text,
            token_ids=tokens,
            prompt_tokens=len(ids),
            stop_reason=reason,
            first_token_s=(first if tokens else end) - t0,
            total_s=end - t0,
            decode_tokens_per_s=decode_rate,
        )

    def chat(
        self, messages: Sequence[templates.Message], config: GenerationConfig | None = None
    ) -> GenerationResult:
        return self.generate(self.render_chat(messages), config)
