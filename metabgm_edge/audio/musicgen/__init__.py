"""MusicGen behind the audio interface: a bundle made by ``metabgm-edge export musicgen``.

    from metabgm_edge.audio import AudioRequest, open_audio_backend
    backend = open_audio_backend("engines/musicgen-small-int8")
    for chunk in backend.stream(AudioRequest(description="calm piano, 80 BPM", seconds=10, tail=0.5)):
        ...  # chunk.audio: float32 (frames, 2) at 32 kHz, as soon as it is decoded

Continuation (the paper's melodic anchor) is the codes of the previous segment's last
``prompt_seconds``: the next segment is generated as their continuation and its own audio starts
where they end (the prompt's audio is not emitted again). Between two MusicGen segments the codes
come from generation (:class:`MusicGenAnchor`); after another backend's segment, or for
``render --continue-from`` a recording, the EnCodec encoder makes them from the audio the request
carries as ``context``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Final

import msgspec
import numpy as np
from msgspec import Struct

from metabgm_edge.audio.interface import CHANNELS, SAMPLE_RATE, AudioChunk, AudioRequest, interleave
from metabgm_edge.audio.musicgen.codec import StreamingDecoder
from metabgm_edge.audio.musicgen.model import CacheMode, MusicGenModel
from metabgm_edge.audio.musicgen.sampling import SamplingConfig
from metabgm_edge.errors import BackendError

__all__ = ["MusicGen", "MusicGenAnchor", "StreamStats"]

log = logging.getLogger(__name__)

MAX_SECONDS: Final = 60.0
FIRST_CHUNK_S: Final = 0.4
"""Audio in the first chunk of a segment: small, so the music can start early."""
CHUNK_S: Final = 1.0


class MusicGenAnchor(Struct, frozen=True, kw_only=True):
    """The codes of the last seconds before a segment boundary, and what they fit."""

    kind: ClassVar[str] = "musicgen"
    model: str
    """The bundle's name (for the log; compatibility is checked on the shape below)."""
    num_codebooks: int
    codebook_size: int
    frame_rate: float
    codes: list[list[int]]
    """(codebooks, frames)."""
    description: str = ""

    def to_bytes(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> MusicGenAnchor:
        try:
            anchor = msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"not a valid MusicGen anchor: {exc}") from None
        rows = {len(r) for r in anchor.codes}
        if len(anchor.codes) != anchor.num_codebooks or len(rows) > 1:
            raise ValueError("not a valid MusicGen anchor: the codes are not codebooks x frames")
        if any(not 0 <= c < anchor.codebook_size for r in anchor.codes for c in r):
            raise ValueError("not a valid MusicGen anchor: a code is outside the codebook")
        return anchor

    def array(self) -> np.ndarray:
        return np.asarray(self.codes, dtype=np.int64).reshape(self.num_codebooks, -1)

    @property
    def seconds(self) -> float:
        return (len(self.codes[0]) if self.codes else 0) / self.frame_rate

    def summary(self) -> str:
        return f"{self.model}: {self.seconds:.2f} s of codes ({self.num_codebooks} codebooks) to continue"


class StreamStats(Struct, kw_only=True):
    """What the last :meth:`MusicGen.stream` did (read by bench and the scheduler's logs)."""

    frames: int = 0
    prompt_frames: int = 0
    prompt_from: str = "none"
    """``anchor`` (codes kept from generation), ``audio`` (encoded from the context), ``none``."""
    condition_s: float = 0.0
    first_audio_s: float = 0.0
    total_s: float = 0.0
    ms_per_step: float = 0.0
    realtime_factor: float = 0.0
    """Seconds of audio per second of work (above 1: faster than real time)."""


class MusicGen:
    """The MusicGen audio backend (``kind = "musicgen"``)."""

    kind = "musicgen"
    sample_rate = SAMPLE_RATE
    channels = CHANNELS
    batches = False

    def __init__(self, model: MusicGenModel, *, sampling: SamplingConfig | None = None) -> None:
        s = model.section
        if s.sample_rate != SAMPLE_RATE:
            raise BackendError(
                f"{model.folder}: the codec runs at {s.sample_rate} Hz; metabgm-edge plays {SAMPLE_RATE} Hz"
            )
        self.model = model
        d = s.defaults
        self.sampling = sampling or SamplingConfig(
            do_sample=d.do_sample, top_k=d.top_k, top_p=d.top_p, temperature=d.temperature,
            guidance_scale=d.guidance_scale,
        )  # fmt: skip
        self.prompt_seconds = d.prompt_seconds
        m = model.manifest
        self.name = f"musicgen:{m.name} ({m.quantization}, {model.provider})"
        self.last = StreamStats()
        self._speed: float | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        sampling: SamplingConfig | None = None,
        cache: CacheMode = "auto",
    ) -> MusicGen:
        model = MusicGenModel.load(path, providers=providers, threads=threads, cache=cache)
        return cls(model, sampling=sampling)

    # -- the audio interface ----------------------------------------------------------------------

    def anchor_from_bytes(self, data: bytes) -> MusicGenAnchor:
        return MusicGenAnchor.from_bytes(data)

    def realtime_factor(self) -> float:
        """Measured on a 2 s render (after a short warm-up) the first time; then the last segment's."""
        if self._speed is None:
            for seconds in (0.2, 2.0):
                for _ in self.stream(AudioRequest(description="calm piano", seconds=seconds, seed=0)):
                    pass
            self._speed = self.last.realtime_factor
        return self._speed

    def stream_batch(self, requests: Sequence[AudioRequest]) -> Iterator[list[AudioChunk | None]]:
        return interleave([self.stream(r) for r in requests])

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        s = self.model.section
        seconds, tail = float(request.seconds), float(request.tail)
        if not math.isfinite(seconds) or not 0.0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
        if not math.isfinite(tail) or not 0.0 <= tail <= 10.0:
            raise ValueError(f"tail must be in [0, 10] seconds, got {tail}")
        t0 = time.perf_counter()
        want = round((seconds + tail) * SAMPLE_RATE)
        frames = math.ceil(want / s.codec_hop)
        boundary = round(seconds * s.frame_rate)
        prompt, prompt_from = self._prompt(request)
        stats = StreamStats(frames=frames, prompt_frames=0 if prompt is None else prompt.shape[1],
                            prompt_from=prompt_from)  # fmt: skip
        cond = self.model.condition(str(request.description or "")[:2000], guided=self.sampling.guided)
        stats.condition_s = cond.seconds
        first = min(request.first_chunk, FIRST_CHUNK_S) if request.first_chunk > 0 else FIRST_CHUNK_S
        decoder = StreamingDecoder(
            self.model.decode, s.codec_hop, start=prompt, num_codebooks=s.num_codebooks,
            first=max(1, round(first * s.frame_rate)), chunk=max(1, round(CHUNK_S * s.frame_rate)),
        )  # fmt: skip
        new: list[np.ndarray] = []
        sent = 0
        steps_t0 = time.perf_counter()
        for frame in self.model.frames(
            cond, frames, prompt=prompt, sampling=self.sampling, seed=request.seed
        ):
            new.append(frame)
            audio = decoder.push(frame)
            if audio is not None and audio.shape[0] and sent < want:
                piece = self._stereo(audio[: want - sent])
                sent += piece.shape[0]
                if not stats.first_audio_s:
                    stats.first_audio_s = time.perf_counter() - t0
                yield AudioChunk(audio=piece)
        steps_s = time.perf_counter() - steps_t0
        rest = self._stereo(decoder.finish()[: max(0, want - sent)])
        if rest.shape[0] < want - sent:  # cannot happen: frames * hop >= want
            raise BackendError(f"{self.name} decoded {sent + rest.shape[0]} samples, {want} were asked")
        codes = np.stack(new, axis=1) if new else np.zeros((s.num_codebooks, 0), dtype=np.int64)
        if prompt is not None:
            codes = np.concatenate([prompt, codes], axis=1)
        end = stats.prompt_frames + boundary
        keep = max(1, round(self.prompt_seconds * s.frame_rate))
        anchor = MusicGenAnchor(
            model=self.model.manifest.name,
            num_codebooks=s.num_codebooks,
            codebook_size=s.codebook_size,
            frame_rate=s.frame_rate,
            codes=codes[:, max(0, end - keep) : end].tolist(),
            description=str(request.description or "")[:200],
        )
        stats.total_s = time.perf_counter() - t0
        stats.ms_per_step = 1000 * steps_s / max(1, frames + s.num_codebooks // s.audio_channels)
        stats.realtime_factor = (seconds + tail) / stats.total_s if stats.total_s > 0 else 0.0
        if not stats.first_audio_s:
            stats.first_audio_s = stats.total_s
        self.last = stats
        if seconds + tail >= 1.0:  # short renders are dominated by the conditioning
            self._speed = stats.realtime_factor
        log.debug("%s: %d frames (+%d prompt from %s) in %.2f s, first audio %.2f s, %.1f ms/step",
                  self.name, frames, stats.prompt_frames, prompt_from, stats.total_s, stats.first_audio_s,
                  stats.ms_per_step)  # fmt: skip
        yield AudioChunk(audio=rest, last=True, anchor=anchor)

    # -- helpers ------------------------------------------------------------------------------------

    def _prompt(self, request: AudioRequest) -> tuple[np.ndarray | None, str]:
        """The codes to continue from: the anchor's when it fits this model, else the context's."""
        s = self.model.section
        anchor = request.anchor
        if isinstance(anchor, MusicGenAnchor):
            if (anchor.num_codebooks, anchor.codebook_size) == (
                s.num_codebooks,
                s.codebook_size,
            ) and anchor.codes:
                codes = anchor.array()
                return (codes if codes.shape[1] else None), "anchor"
            log.info("the anchor is from a MusicGen with another codebook layout; continuing from the audio")
        context = request.context
        if context is None or self.prompt_seconds <= 0:
            return None, "none"
        context = np.asarray(context, dtype=np.float32)
        tail = context[-round(self.prompt_seconds * SAMPLE_RATE) :]
        if tail.shape[0] < s.codec_hop:
            return None, "none"
        return self.model.encode(tail), "audio"

    @staticmethod
    def _stereo(audio: np.ndarray) -> np.ndarray:
        if audio.shape[1] == CHANNELS:
            return np.ascontiguousarray(audio, dtype=np.float32)
        return np.ascontiguousarray(np.repeat(audio[:, :1], CHANNELS, axis=1), dtype=np.float32)
