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
from collections.abc import Callable, Iterator, Sequence
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


class BatchState:
    """Several sequences decoded together: one KV cache buffer per layer of ``batch`` rows.

    Each row's prompt is prefilled on its own (the row's slice of every buffer, bound by address,
    so a prompt runs exactly as it would alone); then every :meth:`step` feeds one token per row
    in one run, each row attending to its own length (the attention mask says which positions of
    its row are filled). Decoding is bound by reading the weights once per step, so ``batch`` rows
    cost little more than one. A row that has finished is fed its last token again with its mask
    unchanged: it rewrites its own last position, which nobody reads any more.
    """

    def __init__(self, llm: LLM, batch: int) -> None:
        self._llm = llm
        self.batch = batch
        cache = llm.section.cache
        self._row_shape = [1, cache.num_kv_heads, cache.context_length, cache.head_dim]
        shape = [batch, *self._row_shape[1:]]
        self._dtype = binding.NP_DTYPE[cache.kv_dtype]
        self._row_bytes = int(np.prod(self._row_shape)) * np.dtype(self._dtype).itemsize
        self._kv = [binding.zeros(shape, cache.kv_dtype, llm.device) for _ in range(2 * cache.num_layers)]
        self._mask = binding.Mirror(np.zeros((batch, cache.context_length), np.int64), llm.device)
        self._token = binding.Mirror(np.zeros((batch, 1), np.int64), llm.device)
        self._logits = binding.Mirror(np.zeros((batch, 1, cache.vocab_size), llm.logits_dtype), llm.device)
        self._binding = llm.session.io_binding()
        for past, present, value in zip(llm.past_names, llm.present_names, self._kv, strict=True):
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)
        self._binding.bind_ortvalue_input("attention_mask", self._mask.value)
        self._binding.bind_ortvalue_input("input_ids", self._token.value)
        if cache.logits_last_only:
            self._binding.bind_ortvalue_output("logits", self._logits.value)
        else:
            self._binding.bind_output("logits", llm.device)
        self._decode_options, self._prompt_options = llm.run_options()
        self.lengths = [0] * batch
        self._last = [0] * batch

    def reset(self) -> None:
        """Forget every row (the buffers stay, at the same addresses)."""
        self._mask.array[:] = 0
        self.lengths = [0] * self.batch
        self._last = [0] * self.batch

    def prefill(self, row: int, ids: Sequence[int]) -> np.ndarray:
        """Run row ``row``'s prompt (in chunks the engine's profile allows); its last logits."""
        llm = self._llm
        if self.lengths[row] + len(ids) > llm.context_length:
            raise ValueError(f"{self.lengths[row] + len(ids)} tokens exceed the bundle's context of "
                             f"{llm.context_length}")  # fmt: skip
        step = llm.max_chunk or len(ids)
        logits = None
        for start in range(0, len(ids), step):
            logits = self._prefill_chunk(row, ids[start : start + step])
        assert logits is not None
        self._last[row] = ids[-1]
        return logits

    def _prefill_chunk(self, row: int, ids: Sequence[int]) -> np.ndarray:
        llm = self._llm
        b = llm.session.io_binding()
        device = "cuda" if llm.device != "cpu" else "cpu"
        offset = row * self._row_bytes
        for past, present, value in zip(llm.past_names, llm.present_names, self._kv, strict=True):
            ptr = value.data_ptr() + offset
            b.bind_input(past, device, 0, self._dtype, self._row_shape, ptr)
            b.bind_output(present, device, 0, self._dtype, self._row_shape, ptr)
        n, length = len(ids), self.lengths[row]
        self._mask.array[row, length : length + n] = 1
        self._mask.sync()
        context = self._mask.array.shape[1]
        b.bind_input(
            "attention_mask",
            device,
            0,
            np.int64,
            [1, context],
            self._mask.value.data_ptr() + row * context * 8,
        )
        b.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        if "position_ids" in llm.input_names:
            b.bind_cpu_input("position_ids", np.arange(length, length + n, dtype=np.int64)[None, :])
        b.bind_output("logits", "cpu")
        llm.session.run_with_iobinding(b, self._prompt_options)
        self.lengths[row] = length + n
        return np.asarray(b.get_outputs()[-1].numpy()[0, -1], dtype=np.float32)

    def step(self, tokens: Sequence[int | None]) -> np.ndarray:
        """One token per row (None: the row has finished); the logits (batch, vocab) of the step."""
        llm = self._llm
        for row, token in enumerate(tokens):
            if token is None:
                self._token.array[row, 0] = self._last[row]
                continue
            if self.lengths[row] >= llm.context_length:
                raise ValueError(f"row {row} has filled the bundle's context of {llm.context_length}")
            self._token.array[row, 0] = token
            self._last[row] = token
            self._mask.array[row, self.lengths[row]] = 1
            self.lengths[row] += 1
        self._token.sync()
        self._mask.sync()
        options = self._decode_options
        if "position_ids" in llm.input_names:
            positions = np.asarray([[max(n - 1, 0)] for n in self.lengths], dtype=np.int64)
            self._binding.bind_cpu_input("position_ids", positions)
            options = self._prompt_options
        llm.session.run_with_iobinding(self._binding, options)
        if not llm.section.cache.logits_last_only:
            return np.asarray(self._binding.get_outputs()[-1].numpy()[:, -1], dtype=np.float32)
        if llm.device != "cpu":
            return np.asarray(self._logits.value.numpy()[:, -1], dtype=np.float32)
        return np.array(self._logits.array[:, -1], dtype=np.float32)


class _Row:
    """One sequence's generation settings and progress: the sampler, the n-gram blocker, the
    tokens seen, the stop conditions. The same for a request alone and one in a batch."""

    def __init__(self, llm: LLM, prompt_ids: Sequence[int], cfg: GenerationConfig) -> None:
        g = llm.section.generation
        max_new = g.max_new_tokens if cfg.max_new_tokens is None else cfg.max_new_tokens
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new}")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= llm.context_length:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; this bundle takes at most {llm.context_length} "
                "(prompt and answer together): shorten the prompt"
            )
        do_sample = g.do_sample if cfg.do_sample is None else cfg.do_sample
        temperature = g.temperature if cfg.temperature is None else cfg.temperature
        top_p = g.top_p if cfg.top_p is None else cfg.top_p
        penalty = g.repetition_penalty if cfg.repetition_penalty is None else cfg.repetition_penalty
        ngram = g.no_repeat_ngram_size if cfg.no_repeat_ngram_size is None else cfg.no_repeat_ngram_size
        if temperature < 0 or not 0 < top_p <= 1 or penalty <= 0:
            raise ValueError(
                f"need temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0; got {temperature}, "
                f"{top_p}, {penalty}"
            )
        self.llm = llm
        self.prompt_ids = list(prompt_ids)
        self.min_new, self.max_new = cfg.min_new_tokens, max_new
        self.stop_strings = g.stop_strings if cfg.stop_strings is None else cfg.stop_strings
        self.blocker = sampling.NgramBlocker(ngram, prompt_ids, llm.stop_token_ids)
        self.seen = np.zeros(llm.section.cache.vocab_size, dtype=bool)
        self.seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.sampler = sampling.Sampler(
            do_sample=do_sample, temperature=temperature, top_p=top_p, repetition_penalty=penalty, rng=rng
        )
        self.generated: list[int] = []
        self.reason: StopReason | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None

    def choose(self, logits: np.ndarray, length: int) -> int | None:
        """The next token from ``logits`` (the row's length is ``length`` before it), or None when
        the row stops here with a stop token. Sets :attr:`reason` when the row is done."""
        llm = self.llm
        banned = self.blocker.banned()
        if len(self.generated) < self.min_new:
            banned = [*banned, *llm.stop_token_ids]
        token = self.sampler(logits, np.flatnonzero(self.seen), banned)
        if token in llm.stop_token_ids:
            self.reason = "stop_token"
            return None
        self.generated.append(token)
        self.blocker.add(token)
        self.seen[token] = True
        self.last_at = time.perf_counter()
        if self.first_at is None:
            self.first_at = self.last_at
        if self.stop_strings and any(s in llm.decode(self.generated) for s in self.stop_strings):
            self.reason = "stop_string"
        elif len(self.generated) >= self.max_new:
            self.reason = "max_new_tokens"
        elif length >= llm.context_length:
            self.reason = "context"
        return token


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
        self.max_batch: int | None = None
        """Most sequences one run takes: the TensorRT profile's batch, else unlimited."""
        if profile is not None:
            self.max_chunk = profile.max.get("input_ids", [1, 0])[1] or None
            self.max_batch = profile.max.get("input_ids", [1, 0])[0] or 1
        self._states: list[DecodeState] = []
        self._batches: dict[int, list[BatchState]] = {}
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
        row = _Row(self, prompt_ids, config or GenerationConfig())
        state = self._acquire()
        try:
            logits = state.forward(row.prompt_ids)
            while True:
                token = row.choose(logits, state.length)
                if token is None:
                    return row.reason
                yield token
                if row.reason is not None:
                    return row.reason
                logits = state.forward([token])
        finally:
            self._states.append(state)

    def generate(
        self, prompt: str | Sequence[int], config: GenerationConfig | None = None
    ) -> GenerationResult:
        """Run :meth:`stream` to the end; ``prompt`` is text (already templated) or token ids."""
        return self.generate_batch([prompt], [config])[0]

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        configs: Sequence[GenerationConfig | None] | None = None,
    ) -> list[GenerationResult]:
        """Generate for several prompts at once (each with its own settings and seed): their
        decoding steps run as one batch. Every result is what :meth:`generate` gives for that
        prompt alone; one prompt takes the single-sequence path (its cache reused between calls).
        """
        if not prompts:
            return []
        cfgs = list(configs) if configs is not None else [None] * len(prompts)
        if len(cfgs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(cfgs)} configs")
        limit = self.max_batch or len(prompts)
        if len(prompts) > limit:  # a fixed engine profile: in slices it takes
            out: list[GenerationResult] = []
            for i in range(0, len(prompts), limit):
                out += self.generate_batch(prompts[i : i + limit], cfgs[i : i + limit])
            return out
        t0 = time.perf_counter()
        rows = [
            _Row(self, self.encode(p) if isinstance(p, str) else list(p), c or GenerationConfig())
            for p, c in zip(prompts, cfgs, strict=True)
        ]
        if len(rows) == 1:
            state = self._acquire()
            try:
                self._run_rows(
                    rows,
                    lambda _, ids: state.forward(ids),
                    lambda feed: [state.forward(feed)],
                    lambda _: state.length,
                )
            finally:
                self._states.append(state)
        else:
            pool = self._batches.setdefault(len(rows), [])
            batch = pool.pop() if pool else BatchState(self, len(rows))
            batch.reset()
            try:
                self._run_rows(rows, batch.prefill, lambda tokens: list(batch.step(tokens)),
                               lambda i: batch.lengths[i])  # fmt: skip
            finally:
                pool.append(batch)
        end = time.perf_counter()
        return [self._result(row, t0, end, cfg) for row, cfg in zip(rows, cfgs, strict=True)]

    @staticmethod
    def _run_rows(
        rows: Sequence[_Row],
        prefill: Callable[[int, Sequence[int]], np.ndarray],
        step: Callable[[list[int | None]], list[np.ndarray]],
        length: Callable[[int], int],
    ) -> None:
        logits = [prefill(i, row.prompt_ids) for i, row in enumerate(rows)]
        while True:
            feed: list[int | None] = [None] * len(rows)
            for i, row in enumerate(rows):
                if row.reason is None:
                    token = row.choose(logits[i], length(i))
                    # A row that stopped on this token (stop string, length) needs no step after it.
                    feed[i] = token if row.reason is None else None
            if all(token is None for token in feed):
                return
            logits = step(feed)

    def _result(self, row: _Row, t0: float, end: float, config: GenerationConfig | None) -> GenerationResult:
        tokens = row.generated
        text = self.decode(tokens)
        for s in (
            config.stop_strings
            if config and config.stop_strings is not None
            else self.section.generation.stop_strings
        ):
            if s in text:
                text = text[: text.index(s)]
        first = row.first_at if row.first_at is not None else end
        last = row.last_at if row.last_at is not None else end
        decode_rate = (len(tokens) - 1) / (last - first) if len(tokens) > 1 and last > first else 0.0
        assert row.reason is not None
        return GenerationResult(
            text=text,
            token_ids=list(tokens),
            prompt_tokens=len(row.prompt_ids),
            stop_reason=row.reason,
            first_token_s=first - t0,
            total_s=end - t0,
            decode_tokens_per_s=decode_rate,
        )

    def chat(
        self, messages: Sequence[templates.Message], config: GenerationConfig | None = None
    ) -> GenerationResult:
        return self.generate(self.render_chat(messages), config)
