"""The generation loop: a bundle's fused ONNX decoder with its in-place KV cache, on onnxruntime alone.

``LLM.load(folder)`` verifies the bundle, opens the session on the best provider (see
:mod:`metabgm_edge.ort.session`) and the tokenizer. ``LLM.stream`` is a generator of token ids:
nothing runs until it is iterated. ``LLM.generate`` / ``LLM.chat`` collect a
:class:`GenerationResult` with timings.

The decoder is one fused graph (GroupQueryAttention with rotary inside, fused norms, 4- or 8-bit
MatMulNBits; see ``engines/README.md``). Its KV cache is one preallocated buffer per layer, bound
through IO binding as both past input and present output, so the graph writes each new position
in place: nothing is concatenated or copied per step. The attention mask spans the whole buffer
(1 for filled positions), so every decode step has the same shapes and addresses: the binding is
made once per sequence and a step only writes the new token id and one mask entry. On a GPU the
cache never leaves device memory, only the logits row comes to the host, and the CUDA provider
replays the step as a CUDA graph. The same code runs on the CPU, where the tests exercise it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from metabgm_edge.bundle import LLMSection, Manifest, ShapeProfile, open_bundle
from metabgm_edge.errors import BundleError
from metabgm_edge.llm import chat as templates
from metabgm_edge.llm import sampling
from metabgm_edge.llm.profile import DEFAULT_MAX_PROMPT, decoder_profile
from metabgm_edge.ort import binding
from metabgm_edge.ort.session import OpenedSession, open_graph, profile_options

log = logging.getLogger(__name__)

StopReason = Literal["stop_token", "stop_string", "max_new_tokens", "context"]


class GenerationConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Per-call knobs. ``None`` means the bundle's default (its manifest's ``generation``)."""

    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    """Stop tokens are not chosen before this many new tokens (transformers' ``min_new_tokens``)."""
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
        shape = [1, cache.num_kv_heads, cache.context_length, cache.head_dim]
        # Zeros on the host are allocated lazily by the OS: only the positions written take memory.
        self._kv = [binding.zeros(shape, cache.kv_dtype, llm.device) for _ in range(2 * cache.num_layers)]
        self._mask = binding.Mirror(np.zeros((1, cache.context_length), np.int64), llm.device)
        self._token = binding.Mirror(np.zeros((1, 1), np.int64), llm.device)
        self._logits = binding.Mirror(np.zeros((1, 1, cache.vocab_size), llm.logits_dtype), llm.device)
        self._binding = llm.session.io_binding()
        for past, present, value in zip(llm.past_names, llm.present_names, self._kv, strict=True):
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)
        self._binding.bind_ortvalue_input("attention_mask", self._mask.value)
        if llm.section.cache.logits_last_only:
            self._binding.bind_ortvalue_output("logits", self._logits.value)
        else:
            self._binding.bind_output("logits", llm.device)
        self._decode_options, self._prompt_options = llm.run_options()
        self._decoding = False
        self.length = 0

    def reset(self) -> None:
        """Forget the sequence (the buffers stay: their addresses are what a CUDA graph replays)."""
        self._mask.array[:] = 0
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
        b = self._binding
        if n == 1:
            self._token.array[0, 0] = ids[0]
            self._token.sync()
            if not self._decoding:
                b.bind_ortvalue_input("input_ids", self._token.value)
                self._decoding = True
        else:
            b.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
            self._decoding = False
        if "position_ids" in llm.input_names:
            b.bind_cpu_input("position_ids", np.arange(self.length, self.length + n, dtype=np.int64)[None, :])
        self._mask.array[0, self.length : self.length + n] = 1
        self._mask.sync()
        replayable = n == 1 and "position_ids" not in llm.input_names
        llm.session.run_with_iobinding(b, self._decode_options if replayable else self._prompt_options)
        self.length += n
        if not llm.section.cache.logits_last_only:
            return np.asarray(b.get_outputs()[-1].numpy()[0, -1], dtype=np.float32)
        if llm.device != "cpu":
            return np.asarray(self._logits.value.numpy()[0, -1], dtype=np.float32)
        return np.array(self._logits.array[0, -1], dtype=np.float32)  # a copy: the buffer is reused


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
        logits_type = next(o.type for o in opened.session.get_outputs() if o.name == "logits")
        self.logits_dtype = np.float16 if "float16" in logits_type else np.float32
        self.max_chunk: int | None = None
        """Longest piece of prompt one step takes: the TensorRT profile's maximum, else unlimited."""
        self._graph_ids = itertools.count(1)
        profile = self._profile(manifest, opened.provider)
        if profile is not None:
            self.max_chunk = profile.max.get("input_ids", [1, 0])[1] or None
        self._states: list[DecodeState] = []
        chat = self.section.chat
        stop_ids = set(self.section.generation.stop_token_ids)
        end = tokenizer.token_to_id(templates.end_marker(chat.template, chat.eos_token))
        if end is not None:
            stop_ids.add(end)
        self.stop_token_ids = frozenset(stop_ids)

    @staticmethod
    def _profile(manifest: Manifest, provider: str) -> ShapeProfile | None:
        engine = manifest.engine_for("decoder", provider)
        if provider in ("tensorrt", "tensorrt_rtx") and engine and engine.shape_profiles:
            return engine.shape_profiles[0]
        if provider == "tensorrt_rtx":  # compiled at load: the profile the export would have used
            assert manifest.llm is not None
            return decoder_profile(manifest.graphs["decoder"], manifest.llm.cache, DEFAULT_MAX_PROMPT)
        return None

    def run_options(self) -> tuple[ort.RunOptions, ort.RunOptions]:
        """(decode, prompt) run options of a new sequence. On CUDA each sequence's decode step
        (same shapes and addresses every time) is captured once as its own CUDA graph and replayed;
        prompt runs, whose length varies, are never captured."""
        decode, prompt = ort.RunOptions(), ort.RunOptions()
        if self.provider == "cuda":
            decode.add_run_config_entry("gpu_graph_id", str(next(self._graph_ids)))
            prompt.add_run_config_entry("gpu_graph_id", "-1")
        return decode, prompt

    @classmethod
    def load(
        cls, path: str | Path, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> LLM:
        """Verify and open the bundle at ``path``. ``providers`` narrows the choice (e.g. ``["cpu"]``)."""
        folder = Path(path)
        t0 = time.perf_counter()
        manifest = open_bundle(folder, "llm")
        assert manifest.llm is not None
        rtx_profile = decoder_profile(manifest.graphs["decoder"], manifest.llm.cache, DEFAULT_MAX_PROMPT)
        opened = open_graph(
            folder,
            manifest,
            "decoder",
            providers=providers,
            threads=threads,
            provider_options={
                "cuda": {"enable_cuda_graph": "1"},
                "tensorrt_rtx": profile_options(rtx_profile, "tensorrt_rtx"),
            },
        )
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
        """A new, empty sequence (its own cache buffers)."""
        return DecodeState(self)

    def _acquire(self) -> DecodeState:
        """A sequence whose buffers are reused from the last generation when free (fixed addresses
        for CUDA graphs, no new allocation per request)."""
        try:
            state = self._states.pop()
        except IndexError:
            return DecodeState(self)
        state.reset()
        return state

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
        sampler = sampling.Sampler(
            do_sample=do_sample, temperature=temperature, top_p=top_p, repetition_penalty=penalty, rng=rng
        )
        state = self._acquire()
        try:
            return (
                yield from self._loop(
                    state, prompt_ids, (cfg.min_new_tokens, max_new), stop_strings, blocker, seen, sampler
                )
            )
        finally:
            self._states.append(state)

    def _loop(
        self,
        state: DecodeState,
        prompt_ids: Sequence[int],
        lengths: tuple[int, int],
        stop_strings: Sequence[str],
        blocker: sampling.NgramBlocker,
        seen: np.ndarray,
        sampler: sampling.Sampler,
    ) -> Iterator[int]:
        min_new, max_new = lengths
        logits = state.forward(prompt_ids)
        generated: list[int] = []
        while True:
            banned = blocker.banned()
            if len(generated) < min_new:
                banned = [*banned, *self.stop_token_ids]
            token = sampler(logits, np.flatnonzero(seen), banned)
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
