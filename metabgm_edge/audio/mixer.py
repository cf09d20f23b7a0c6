"""Joins rendered segments into one continuous stream for the ring buffer.

Every segment arrives with a *tail*: its last ``tail_frames`` frames are the music continuing past
the segment's end and overlap the next segment's head. The mixer plays a segment's body, holds
its tail back, and when the next segment comes it crossfades tail and head, so no join has a gap
or a step.

The crossfade is equal-power (cos/sin gains) for unrelated signals, the case of a scene change
or another backend. When the two sides are correlated (the synthesizer continuing the same
music, which re-renders the notes still sounding), plain equal power would swell by up to 3 dB in
the middle, so the gains are normalised by the measured correlation ``r`` of the overlap:
``a² + b² + 2·r·a·b = 1`` keeps the expected power constant for any ``r`` in [0, 1] (``r = 0``
is exactly equal power, ``r = 1`` equal gain).

Thread-safe: the scheduler appends from one thread while a feeder thread reads; one lock guards
the queue. Nothing here runs in the audio callback (that is the ring buffer's job).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np

__all__ = ["Mixer", "MixerStats", "crossfade"]

log = logging.getLogger(__name__)


class MixerStats:
    """Counters a session log or ``bench`` reports."""

    __slots__ = ("extended_seconds", "extensions", "joins", "starvations", "starved_frames", "transitions")

    def __init__(self) -> None:
        self.joins = 0
        self.transitions = 0
        self.extensions = 0
        self.extended_seconds = 0.0
        self.starvations = 0
        """Times the queue ran dry while reading (the mix faded out)."""
        self.starved_frames = 0
        """Frames read while the queue was dry (fade-out plus silence)."""

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__slots__}


def crossfade(out_audio: np.ndarray, in_audio: np.ndarray, *, correlation: float | None = None) -> np.ndarray:
    """Crossfade ``out_audio`` into ``in_audio`` (same shape); return a new float32 array.

    ``correlation`` None measures it on the overlap; it is clamped to [0, 1].
    """
    n = out_audio.shape[0]
    if n == 0:
        return in_audio.astype(np.float32, copy=True)
    if correlation is None:
        correlation = _correlation(out_audio, in_audio)
    r = min(1.0, max(0.0, float(correlation)))
    p = (np.arange(n, dtype=np.float64) + 0.5) / n
    u = np.cos(0.5 * np.pi * p)
    v = np.sin(0.5 * np.pi * p)
    s = 1.0 / np.sqrt(u * u + v * v + 2.0 * r * u * v)
    a = (u * s).astype(np.float32)[:, None]
    b = (v * s).astype(np.float32)[:, None]
    return out_audio * a + in_audio * b


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    xx = float(np.vdot(x, x))
    yy = float(np.vdot(y, y))
    if xx <= 1e-12 or yy <= 1e-12:
        return 0.0
    return float(np.vdot(x, y)) / np.sqrt(xx * yy)


def _fade(audio: np.ndarray, *, out: bool) -> np.ndarray:
    """Equal-power fade-in or fade-out over the whole of ``audio``."""
    n = audio.shape[0]
    p = (np.arange(n, dtype=np.float64) + 0.5) / n
    g = np.cos(0.5 * np.pi * p) if out else np.sin(0.5 * np.pi * p)
    return audio * g.astype(np.float32)[:, None]


class Mixer:
    """Queue of segments in, one continuous float32 stream (frames, channels) out."""

    def __init__(self, sample_rate: int, channels: int = 2, crossfade_s: float = 0.5) -> None:
        if crossfade_s <= 0:
            raise ValueError(f"crossfade_s must be positive, got {crossfade_s}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.crossfade_frames = max(1, round(crossfade_s * sample_rate))
        self.stats = MixerStats()
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()  # ready to play, in order
        self._pos = 0  # frames of _chunks[0] already read
        self._queued = 0  # frames in _chunks not yet read
        self._held = self._empty()  # tail of the last segment, waiting for the next head
        self._last: np.ndarray | None = None  # last appended segment (for extend_previous)
        self._last_tail = 0
        self._silent = True  # nothing audible is playing (start, or after a starvation fade-out)
        self._starving = False

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.channels), dtype=np.float32)

    def _check(self, audio: np.ndarray, tail_frames: int) -> np.ndarray:
        if audio.ndim != 2 or audio.shape[1] != self.channels:
            raise ValueError(f"expected audio of shape (frames, {self.channels}), got {audio.shape}")
        if not 0 <= tail_frames <= audio.shape[0]:
            raise ValueError(f"tail_frames must be within 0..{audio.shape[0]}, got {tail_frames}")
        audio = np.asarray(audio, dtype=np.float32)
        if not np.isfinite(audio).all():
            log.warning("segment has non-finite samples; replaced by 0")
            audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        return audio

    # -- producer side ------------------------------------------------------------------------
    @property
    def queued_seconds(self) -> float:
        """Seconds ready to play before the held tail (what the scheduler may count on)."""
        return self._queued / self.sample_rate

    @property
    def held_seconds(self) -> float:
        """Seconds of the last segment's tail held back for the next join."""
        return self._held.shape[0] / self.sample_rate

    @property
    def queued_frames(self) -> int:
        return self._queued

    def finish(self) -> None:
        """End of the stream: play the held tail out with a fade (at most one crossfade long)."""
        with self._lock:
            if self._held.shape[0] > 0:
                k = min(self.crossfade_frames, self._held.shape[0])
                self._push(_fade(self._held[:k], out=True))
                self._held = self._empty()
            self._silent = True

    def append(self, audio: np.ndarray, tail_frames: int) -> None:
        """Queue a segment; its head crossfades with the previous segment's held tail."""
        audio = self._check(audio, tail_frames)
        with self._lock:
            self._append_locked(audio, tail_frames)
            self._arrived()
            self._last = audio
            self._last_tail = tail_frames

    def _append_locked(self, audio: np.ndarray, tail_frames: int) -> None:
        body_end = audio.shape[0] - tail_frames
        held = self._held
        if held.shape[0] > 0:
            k = min(held.shape[0], body_end) if body_end > 0 else min(held.shape[0], audio.shape[0])
            self._push(crossfade(held[:k], audio[:k]))
            start = k
            self.stats.joins += 1
        elif self._silent:
            # Resuming from silence: fade in so a segment starting mid-note does not click.
            k = min(self.crossfade_frames, max(body_end, 0))
            if k > 0:
                self._push(_fade(audio[:k], out=False))
            start = k
        else:
            start = 0
        if body_end > start:
            self._push(audio[start:body_end])
        self._held = audio[max(body_end, start) :].copy()
        self._silent = False

    def _push(self, chunk: np.ndarray) -> None:
        if chunk.shape[0] == 0:
            return
        self._chunks.append(np.ascontiguousarray(chunk, dtype=np.float32))
        self._queued += chunk.shape[0]

    def _arrived(self) -> None:
        """New audio: a starvation episode (counted once) ends here."""
        self._starving = False

    def transition(self, audio: np.ndarray, tail_frames: int) -> None:
        """Switch to ``audio`` now: crossfade from the current read position into its start and drop
        the rest of what was queued. The new audio is fully in after one crossfade."""
        audio = self._check(audio, tail_frames)
        with self._lock:
            k = min(self.crossfade_frames, audio.shape[0] - tail_frames if tail_frames else audio.shape[0])
            k = max(k, 0)
            current = self._take_locked(k, consume=True)  # what would have played next
            if current.shape[0] < k and self._held.shape[0] > 0:  # then the held tail
                current = np.concatenate([current, self._held[: k - current.shape[0]]])
            self._chunks.clear()
            self._pos = 0
            self._queued = 0
            self._held = self._empty()
            if current.shape[0] < k:  # not enough queued: the old side fades to what it had
                pad = np.zeros((k - current.shape[0], self.channels), dtype=np.float32)
                current = np.concatenate([current, pad])
            if k > 0:
                self._push(crossfade(current, audio[:k], correlation=0.0))
            body_end = audio.shape[0] - tail_frames
            if body_end > k:
                self._push(audio[k:body_end])
            self._held = audio[max(body_end, k) :].copy()
            self._silent = False
            self._arrived()
            self._last = audio
            self._last_tail = tail_frames
            self.stats.transitions += 1

    def extend_previous(self, seconds: float) -> float:
        """Fallback when the audio backend failed: queue ``seconds`` more of the previous segment's
        audio, entered with a crossfade at the point that best matches what is playing.

        Returns the seconds queued (0 when there is no previous segment to repeat).
        """
        with self._lock:
            last, last_tail = self._last, self._last_tail
            if last is None or last.shape[0] - last_tail <= self.crossfade_frames:
                log.warning("extend_previous: no previous segment to repeat; nothing queued")
                return 0.0
            want = round(seconds * self.sample_rate)
            body = last.shape[0] - last_tail
            xf = self.crossfade_frames
            queued = 0
            while queued < want:
                start = self._loop_point(last, body)
                end = min(body, start + (want - queued)) + xf
                end = min(end, last.shape[0]) if last_tail >= xf else min(end, body)
                tail = min(xf, end - start - 1)
                chunk = last[start:end]
                if chunk.shape[0] - tail <= 0:
                    break
                self._append_locked(chunk, tail)
                queued += chunk.shape[0] - tail
            self._arrived()
            self.stats.extensions += 1
            self.stats.extended_seconds += queued / self.sample_rate
            log.info("extended the previous segment by %.2f s", queued / self.sample_rate)
            return queued / self.sample_rate

    def _loop_point(self, last: np.ndarray, body: int) -> int:
        """Offset into ``last`` whose start best continues the held tail (or what plays next)."""
        ref = self._held if self._held.shape[0] > 0 else self._peek_end_locked(self.crossfade_frames)
        limit = max(1, body // 2)
        if ref.shape[0] < 64:
            return 0
        # Normalised cross-correlation of mono envelopes-of-signal, decimated for speed.
        step = 8
        r = ref.mean(axis=1)[::step].astype(np.float64)
        x = last[: limit + ref.shape[0]].mean(axis=1)[::step].astype(np.float64)
        m = r.shape[0]
        if x.shape[0] <= m:
            return 0
        size = 1 << int(np.ceil(np.log2(x.shape[0] + m)))
        corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(r, size)), size)[: x.shape[0] - m + 1]
        energy = np.convolve(x * x, np.ones(m), mode="valid")[: corr.shape[0]]
        score = corr / np.sqrt(np.maximum(energy, 1e-9) * max(float(r @ r), 1e-9))
        return int(np.argmax(score)) * step

    def _peek_end_locked(self, frames: int) -> np.ndarray:
        if not self._chunks:
            return self._empty()
        last = self._chunks[-1]
        return last[-frames:]

    # -- consumer side ------------------------------------------------------------------------
    def read(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames of the mix (float32, (frames, channels)).

        When nothing is queued the held tail plays out with a fade of at most one crossfade, then
        silence; that counts as one starvation.
        """
        with self._lock:
            out = self._take_locked(frames, consume=True)
            if out.shape[0] == frames:
                return out
            missing = frames - out.shape[0]
            if not self._starving:
                self._starving = True
                self.stats.starvations += 1
                log.warning("mixer starved: no segment queued; fading out")
            self.stats.starved_frames += missing
            parts = [out]
            if self._held.shape[0] > 0:
                k = min(self.crossfade_frames, self._held.shape[0])
                fade = _fade(self._held[:k], out=True)
                self._held = self._empty()
                self._push(fade)
                parts.append(self._take_locked(missing, consume=True))
                missing -= parts[-1].shape[0]
            if missing > 0:
                parts.append(np.zeros((missing, self.channels), dtype=np.float32))
            self._silent = True  # the next segment fades in
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _take_locked(self, frames: int, *, consume: bool) -> np.ndarray:
        out = np.empty((frames, self.channels), dtype=np.float32)
        got = 0
        pos = self._pos
        idx = 0
        while got < frames and idx < len(self._chunks):
            chunk = self._chunks[idx]
            n = min(frames - got, chunk.shape[0] - pos)
            out[got : got + n] = chunk[pos : pos + n]
            got += n
            pos += n
            if pos >= chunk.shape[0]:
                idx += 1
                pos = 0
        if consume:
            for _ in range(idx):
                self._chunks.popleft()
            self._pos = pos
            self._queued -= got
        return out[:got]
