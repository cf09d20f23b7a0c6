"""A MusicGen bundle on onnxruntime: conditioning, the decoding loop with its KV cache, EnCodec.

``MusicGenModel.load(folder)`` verifies the bundle and opens its graphs on the best provider
(:mod:`metabgm_edge.ort.session`). Then, in call order:

1. :meth:`MusicGenModel.condition`: the description through the T5 tokenizer and text encoder;
   with guidance, an unconditional row (zero hidden states, zero mask, as transformers does) is
   added; the ``cross_kv`` graph turns both into every layer's cross-attention keys and values,
   once per segment.
2. :meth:`MusicGenModel.frames`: the decoding loop. It prefills the start column and the prompt
   (the previous segment's codes, the melodic anchor) in one run, then predicts one column per
   step, applies the delay pattern (:mod:`.delay`) and yields each frame of codes as soon as all
   its codebooks are known. The self-attention cache stays where the provider computes it (IO
   binding); on a GPU bundle with ``decoder_static`` it is a preallocated buffer written in place.
3. :meth:`MusicGenModel.decode` / :meth:`MusicGenModel.encode`: EnCodec, codes <-> waveform.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from metabgm_edge.audio.musicgen.delay import DelayPattern
from metabgm_edge.audio.musicgen.sampling import SamplingConfig, choose, guide
from metabgm_edge.bundle import Manifest, MusicGenSection, open_bundle
from metabgm_edge.errors import BundleError
from metabgm_edge.ort import binding
from metabgm_edge.ort.session import OpenedSession, open_graph

log = logging.getLogger(__name__)

MAX_TEXT_TOKENS: Final = 128
CacheMode = Literal["auto", "static", "dynamic"]
GRAPHS: Final = ("text_encoder", "cross_kv", "decoder", "codec_decode", "codec_encode")


def kv_names(prefix: str, layers: int, suffix: str = "") -> list[str]:
    """``prefix_key.0, prefix_value.0, prefix_key.1, ...`` (the graphs' cache names)."""
    return [f"{prefix}_{kv}{suffix}.{i}" for i in range(layers) for kv in ("key", "value")]


@dataclass
class Conditioning:
    """One description, ready for the decoder: cross keys/values and the encoder mask."""

    description: str
    tokens: int
    mask: np.ndarray
    """(batch, tokens) int64: the conditional row, then the unconditional one when guided."""
    cross: dict[str, ort.OrtValue]
    seconds: float
    """Time it took (tokenizer, text encoder, cross keys/values)."""


class MusicGenModel:
    """A loaded MusicGen bundle: sessions, tokenizer, and the manifest's ``musicgen`` section."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        sessions: dict[str, OpenedSession],
        tokenizer: Tokenizer,
        *,
        cache: CacheMode = "auto",
    ) -> None:
        assert manifest.musicgen is not None  # open_bundle checked the kind
        self.folder = folder
        self.manifest = manifest
        self.section: MusicGenSection = manifest.musicgen
        self.sessions = sessions
        self.tokenizer = tokenizer
        s = self.section
        self.provider = sessions["decoder"].provider
        self.device = sessions["decoder"].device
        self.cross_names = kv_names("cross", s.num_layers)
        self.past_names = kv_names("past", s.num_layers)
        self.present_names = kv_names("present", s.num_layers)
        self.static = sessions.get("decoder_static")
        if cache == "static" and (self.static is None or not s.static_cache_length):
            raise BundleError(f"{folder} has no decoder_static graph (export it with a GPU target)")
        self.cache_mode: CacheMode = cache
        """``auto``: the fixed-length cache on GPU providers when the bundle has one, else the
        growing one; ``static`` / ``dynamic`` force one (tests compare the two)."""
        self._check()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        cache: CacheMode = "auto",
    ) -> MusicGenModel:
        folder = Path(path)
        t0 = time.perf_counter()
        manifest = open_bundle(folder, "musicgen")
        assert manifest.musicgen is not None
        missing = [g for g in GRAPHS if g not in manifest.graphs]
        if missing:
            raise BundleError(f"{folder / 'manifest.json'} lacks the graphs {missing}; re-export the bundle")
        sessions = {
            name: open_graph(folder, manifest, name, providers=providers, threads=threads)
            for name in (*GRAPHS, *(["decoder_static"] if "decoder_static" in manifest.graphs else []))
        }
        tokenizer_path = folder / manifest.musicgen.tokenizer_file
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{tokenizer_path} is not a valid tokenizer: {exc}") from None
        model = cls(folder, manifest, sessions, tokenizer, cache=cache)
        log.info("loaded %s (%s, %s) on %s in %.2f s", manifest.name, manifest.quantization, manifest.target,
                 model.provider, time.perf_counter() - t0)  # fmt: skip
        return model

    def _check(self) -> None:
        """The graphs' names must be what the section describes (a mismatched bundle is refused)."""
        s = self.section
        wants = {
            "text_encoder": (["input_ids", "attention_mask"], ["last_hidden_state"]),
            "cross_kv": (["encoder_hidden_states", "encoder_attention_mask"], self.cross_names),
            "decoder": (
                ["input_ids", "encoder_attention_mask", *self.past_names, *self.cross_names],
                ["logits", *self.present_names],
            ),
            "codec_decode": (["audio_codes"], ["audio_values"]),
            "codec_encode": (["input_values"], ["audio_codes"]),
        }
        if self.static is not None:
            wants["decoder_static"] = (
                ["input_ids", "position", "encoder_attention_mask", *kv_names("cache", s.num_layers),
                 *self.cross_names],
                ["logits", *kv_names("cache", s.num_layers, "_out")],
            )  # fmt: skip
        for name, (inputs, outputs) in wants.items():
            opened = self.sessions[name]
            have_in, have_out = set(opened.input_names), set(opened.output_names)
            lacking = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
            if lacking:
                raise BundleError(
                    f"{opened.model_file} lacks {lacking[:4]}{'...' if len(lacking) > 4 else ''}, which its "
                    f"manifest's musicgen section implies ({s.num_layers} layers): the bundle is mismatched; "
                    "re-export it"
                )

    # -- 1. conditioning ----------------------------------------------------------------------------

    def condition(self, description: str, *, guided: bool = True) -> Conditioning:
        t0 = time.perf_counter()
        ids = self.tokenizer.encode(description or " ").ids[:MAX_TEXT_TOKENS] or [0]
        input_ids = np.asarray([ids], dtype=np.int64)
        mask = np.ones_like(input_ids)
        (hidden,) = self.sessions["text_encoder"].session.run(
            ["last_hidden_state"], {"input_ids": input_ids, "attention_mask": mask}
        )
        if guided:  # the unconditional row: zero hidden states under a zero mask
            hidden = np.concatenate([hidden, np.zeros_like(hidden)])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        opened = self.sessions["cross_kv"]
        step = binding.Step(opened.session, self.device)
        dtype = binding.input_dtype(opened.session, "encoder_hidden_states")  # float16 in fp16 bundles
        step.host({"encoder_hidden_states": hidden.astype(dtype), "encoder_attention_mask": mask})
        cross = step.out_device(self.cross_names).run()
        return Conditioning(description, len(ids), mask, cross, time.perf_counter() - t0)

    # -- 2. decoding --------------------------------------------------------------------------------

    def frames(
        self,
        cond: Conditioning,
        frames: int,
        *,
        prompt: np.ndarray | None = None,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
    ) -> Iterator[np.ndarray]:
        """Yield ``frames`` new frames of codes, each (K,) int64, as soon as each is complete.

        ``prompt`` (K, P) are codes the music continues from; they are not yielded again.
        """
        s = self.section
        config = (sampling or SamplingConfig(**_sampling_fields(s))).check()
        batch = cond.mask.shape[0]
        if config.guided != (batch == 2):
            raise ValueError("the conditioning was made for another guidance setting")
        pattern = DelayPattern(s.num_codebooks, s.audio_channels, s.pad_token_id, prompt, frames)
        if pattern.length > s.max_positions:
            raise ValueError(
                f"{pattern.prompt_frames} prompt + {frames} new frames need {pattern.length} decoder steps; "
                f"this bundle takes at most {s.max_positions} "
                f"({s.max_positions / s.frame_rate:.0f} s of audio)"
            )
        rng = np.random.Generator(np.random.PCG64(seed))
        cache = self._cache(batch, pattern.length, cond)
        columns = np.full((s.num_codebooks, pattern.length), s.pad_token_id, dtype=np.int64)
        known = pattern.prefill()
        columns[:, : known.shape[1]] = known
        logits = cache.run(known)
        emitted = pattern.prompt_frames
        for column in range(known.shape[1], pattern.length):
            chosen = choose(guide(logits, config.guidance_scale), config, rng)
            columns[:, column] = pattern.apply(column, chosen)
            while emitted < pattern.complete_after(column):
                yield pattern.frame_of(columns, emitted)
                emitted += 1
            if column + 1 < pattern.length:
                logits = cache.run(columns[:, column : column + 1])

    def _cache(self, batch: int, length: int, cond: Conditioning) -> _DynamicCache | _StaticCache:
        mode = self.cache_mode
        if mode == "auto":
            mode = "static" if self.static is not None and self.provider != "cpu" else "dynamic"
        if mode == "static":
            limit = self.section.static_cache_length or 0
            if length <= limit:
                return _StaticCache(self, batch, cond)
            log.info("%d steps exceed the fixed cache (%d): using the growing one", length, limit)
        return _DynamicCache(self, batch, cond)

    # -- 3. EnCodec ---------------------------------------------------------------------------------

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (K, T) -> float32 waveform (T * hop, channels) at the codec's sample rate."""
        s = self.section
        codes = np.asarray(codes, dtype=np.int64)
        # Stereo: left and right interleave in the codebooks and decode as a batch of two.
        batch = np.stack([codes[0::2], codes[1::2]]) if s.audio_channels == 2 else codes[None]
        (audio,) = self.sessions["codec_decode"].session.run(["audio_values"], {"audio_codes": batch})
        return np.ascontiguousarray(audio[:, 0, :].T, dtype=np.float32)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 waveform (samples, channels) at the codec's rate -> codes (K, samples // hop).

        Only whole frames are encoded (the start is dropped to a multiple of the hop), so the codes
        end exactly where the audio ends."""
        s = self.section
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[:, None]
        frames = audio.shape[0] // s.codec_hop
        if frames < 1:
            raise ValueError(f"need at least {s.codec_hop} samples to encode, got {audio.shape[0]}")
        audio = audio[audio.shape[0] - frames * s.codec_hop :]
        if s.audio_channels == 2:
            stereo = audio if audio.shape[1] == 2 else np.repeat(audio[:, :1], 2, axis=1)
            batch = np.ascontiguousarray(stereo.T[:, None, :])
        else:
            batch = np.ascontiguousarray(audio.mean(axis=1)[None, None, :])
        (codes,) = self.sessions["codec_encode"].session.run(["audio_codes"], {"input_values": batch})
        codes = np.asarray(codes, dtype=np.int64)[..., :frames]
        if s.audio_channels == 2:
            out = np.empty((s.num_codebooks, frames), dtype=np.int64)
            out[0::2], out[1::2] = codes[0], codes[1]
            return out
        return codes[0]


def _sampling_fields(section: MusicGenSection) -> dict[str, Any]:
    d = section.defaults
    return {
        "do_sample": d.do_sample,
        "top_k": d.top_k,
        "top_p": d.top_p,
        "temperature": d.temperature,
        "guidance_scale": d.guidance_scale,
    }


class _DynamicCache:
    """The ``decoder`` graph: the cache grows by the new positions each run, and stays on the
    provider's device (present outputs bound back as the next run's past)."""

    def __init__(self, model: MusicGenModel, batch: int, cond: Conditioning) -> None:
        s = model.section
        self.model = model
        self.opened = model.sessions["decoder"]
        self.mask = cond.mask
        self.cross = cond.cross
        self.batch = batch
        empty = binding.empty([batch, s.num_heads, 0, s.head_dim], s.kv_dtype, model.device)
        self.past: list[ort.OrtValue] = [empty] * len(model.past_names)

    def run(self, columns: np.ndarray) -> np.ndarray:
        """Feed columns (K, n) for every batch row; the logits (batch, K, V) of the last one."""
        m = self.model
        ids = np.tile(columns, (self.batch, 1))
        step = binding.Step(self.opened.session, m.device)
        step.host({"input_ids": ids, "encoder_attention_mask": self.mask})
        step.values({**dict(zip(m.past_names, self.past, strict=True)), **self.cross})
        out = step.out_host(["logits"]).out_device(m.present_names).run()
        self.past = [out[n] for n in m.present_names]
        return np.asarray(out["logits"].numpy(), dtype=np.float32)


class _StaticCache:
    """The ``decoder_static`` graph (GPU bundles): one preallocated cache of the section's
    ``static_cache_length`` positions, written in place at ``position``. Every shape is fixed and
    two buffers alternate (in, out), so the steps bind the same two addresses: the precondition of
    CUDA graphs and of TensorRT's fixed profiles."""

    def __init__(self, model: MusicGenModel, batch: int, cond: Conditioning) -> None:
        s = model.section
        assert model.static is not None and s.static_cache_length
        self.model = model
        self.opened = model.static
        self.batch = batch
        self.mask = cond.mask
        self.cross = cond.cross
        shape = [batch, s.num_heads, s.static_cache_length, s.head_dim]
        names = kv_names("cache", s.num_layers)
        self.in_names, self.out_names = names, kv_names("cache", s.num_layers, "_out")
        self.buffers = [
            [binding.zeros(shape, s.kv_dtype, model.device) for _ in names],
            [binding.zeros(shape, s.kv_dtype, model.device) for _ in names],
        ]
        self.flip = 0
        self.position = 0
        engine = model.manifest.engine_for("decoder_static")
        self.max_columns = None
        """Columns one run takes: a TensorRT engine's profile allows one (the prefill then runs
        column by column); the ONNX graph takes any number."""
        if self.opened.provider == "tensorrt" and engine and engine.shape_profiles:
            self.max_columns = engine.shape_profiles[0].max.get("input_ids", [0, 1])[1] or 1

    def run(self, columns: np.ndarray) -> np.ndarray:
        if self.max_columns is not None and columns.shape[1] > self.max_columns:
            logits = None
            for c in range(0, columns.shape[1], self.max_columns):
                logits = self._run(columns[:, c : c + self.max_columns])
            assert logits is not None
            return logits
        return self._run(columns)

    def _run(self, columns: np.ndarray) -> np.ndarray:
        m = self.model
        ids = np.tile(columns, (self.batch, 1))
        src, dst = self.buffers[self.flip], self.buffers[1 - self.flip]
        step = binding.Step(self.opened.session, m.device)
        step.host({
            "input_ids": ids,
            "position": np.asarray([self.position], dtype=np.int64),
            "encoder_attention_mask": self.mask,
        })  # fmt: skip
        step.values({**dict(zip(self.in_names, src, strict=True)), **self.cross})
        out = step.out_host(["logits"]).out_values(dict(zip(self.out_names, dst, strict=True))).run()
        self.flip = 1 - self.flip
        self.position += columns.shape[1]
        return np.asarray(out["logits"].numpy(), dtype=np.float32)
