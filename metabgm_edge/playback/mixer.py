"""Joins rendered segments into one continuous stream for the ring buffer.

Every segment arrives with a *tail*: its last ``tail_frames`` frames are the music continuing past
the segment's end and overlap the next segment's head. The mixer plays a segment's body, holds
its tail back, and when the next segment comes it crossfades tail and head
(:func:`metabgm_edge.audio.dsp.crossfade`), so no join has a gap or a step.

Segments may arrive whole (:meth:`Mixer.append`, :meth:`Mixer.transition`) or streamed, chunk by
chunk as a backend yields them (:meth:`Mixer.begin` returns a :class:`StreamedSegment`): the
join happens as soon as the first chunk is in, so the music can start before the segment is
finished. A streamed segment keeps its last ``tail_frames`` back until the next chunk shows they
were not the tail.

Thread-safe: the scheduler appends from one thread while a feeder thread reads; one lock guards
the queue. Nothing here runs in the audio callback (that is the ring buffer's job).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Literal

import numpy as np

from metabgm_edge.audio.dsp import crossfade, fade

__all__ = ["Join", "Mixer", "MixerStats", "StreamedSegment"]

Join = Literal["append", "transition"]

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
        self._open: StreamedSegment | None = None  # a streamed segment still arriving
        self._closed = False
        self.frames_read = 0
        """Frames handed out by :meth:`read` since the start (the output's clock)."""
        self.last_join_frame = 0
        """The output frame (counted like :attr:`frames_read`) at which the last join's head begins."""

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
    def context(self, seconds: float) -> np.ndarray | None:
        """The last ``seconds`` of the music a new segment follows: the end of the last segment's
        body (before its tail), or None before the first segment. What a backend continues from
        when it cannot use the anchor it was given."""
        with self._lock:
            last, tail = self._last, self._last_tail
            if last is None:
                return None
            body = last[: last.shape[0] - tail] if tail else last
            return body[-round(seconds * self.sample_rate) :].copy()

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
                self._push(fade(self._held[:k], out=True))
                self._held = self._empty()
            self._silent = True

    def begin(self, join: Join, tail_frames: int) -> StreamedSegment:
        """Start a segment whose audio arrives in chunks. ``join`` is ``append`` (its head
        crossfades with the held tail of the segment before) or ``transition`` (it cuts in now,
        crossfaded over what is playing). Its last ``tail_frames`` frames are held as its tail."""
        if join not in ("append", "transition"):
            raise ValueError(f"join must be 'append' or 'transition', got {join!r}")
        if tail_frames < 0:
            raise ValueError(f"tail_frames must be >= 0, got {tail_frames}")
        with self._lock:
            seg = StreamedSegment(self, join, tail_frames)
            if self._closed:  # the stream has ended: what comes now is dropped
                seg._done = True
                return seg
            if self._open is not None:
                raise RuntimeError("a streamed segment is still open: end() it first")
            self._open = seg
            return seg

    def close(self) -> None:
        """The end of the session: segments that arrive from now on are dropped; what is queued plays."""
        with self._lock:
            self._closed = True
            if self._open is not None:
                self._open._done = True
                self._open = None

    def append(self, audio: np.ndarray, tail_frames: int) -> None:
        """Queue a whole segment; its head crossfades with the previous segment's held tail."""
        self._whole("append", audio, tail_frames)

    def transition(self, audio: np.ndarray, tail_frames: int) -> None:
        """Switch to ``audio`` now: crossfade from the current read position into its start and drop
        the rest of what was queued. The new audio is fully in after one crossfade."""
        self._whole("transition", audio, tail_frames)

    def _whole(self, join: Join, audio: np.ndarray, tail_frames: int) -> None:
        audio = self._check(audio, tail_frames)
        seg = self.begin(join, tail_frames)
        seg.add(audio)
        seg.end()

    # -- the joins (called with the lock held) --------------------------------------------------
    def _push(self, chunk: np.ndarray) -> None:
        if chunk.shape[0] == 0:
            return
        self._chunks.append(np.ascontiguousarray(chunk, dtype=np.float32))
        self._queued += chunk.shape[0]

    def _arrived(self) -> None:
        """New audio: a starvation episode (counted once) ends here."""
        self._starving = False

    def _append_whole_locked(self, audio: np.ndarray, tail_frames: int) -> None:
        body_end = audio.shape[0] - tail_frames
        k = self._head_frames("append", body_end if body_end > 0 else audio.shape[0])
        self._join_locked("append", audio[:k])
        if body_end > k:
            self._push(audio[k:body_end])
        self._held = audio[max(body_end, k) :].copy()

    def _head_frames(self, join: Join, available: int) -> int:
        """Frames of a new segment's head its join needs."""
        if join == "transition":
            return min(self.crossfade_frames, available)
        if self._held.shape[0] > 0:
            return min(self._held.shape[0], available)
        if self._silent:
            return min(self.crossfade_frames, available)
        return 0

    def _join_locked(self, join: Join, head: np.ndarray) -> None:
        """Queue ``head`` (the first frames of a new segment) joined to what plays."""
        k = head.shape[0]
        # A transition starts where the output is now; any other join after what is queued.
        self.last_join_frame = self.frames_read + (0 if join == "transition" else self._queued)
        if join == "transition":
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
                self._push(crossfade(current, head, correlation=0.0))
            self.stats.transitions += 1
        elif self._held.shape[0] > 0:
            held = self._held
            self._push(crossfade(held[:k], head))
            self._held = self._empty()
            self.stats.joins += 1
        elif self._silent and k > 0:
            # Resuming from silence: fade in so a segment starting mid-note does not click.
            self._push(fade(head, out=False))
        else:
            self._push(head)
        self._silent = False
        self._arrived()

    def extend_previous(self, seconds: float) -> float:
        """Fallback when the audio backend failed: queue ``seconds`` more of the previous segment's
        audio, entered with a crossfade at the point that best matches what is playing.

        Returns the seconds queued (0 when there is no previous segment to repeat).
        """
        with self._lock:
            if self._open is not None:
                log.info("extend_previous: a segment is still arriving; nothing queued")
                return 0.0
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
                self._append_whole_locked(chunk, tail)
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
            self.frames_read += frames
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
            seg = self._open
            if self._held.shape[0] == 0 and seg is not None and seg._pending.shape[0] > 0:
                # Mid-stream: what has arrived of the open segment fades out; the rest fades in.
                k = min(self.crossfade_frames, seg._pending.shape[0])
                self._push(fade(seg._pending[:k], out=True))
                seg._pending = seg._pending[k:]
                parts.append(self._take_locked(missing, consume=True))
                missing -= parts[-1].shape[0]
            if self._held.shape[0] > 0:
                k = min(self.crossfade_frames, self._held.shape[0])
                faded = fade(self._held[:k], out=True)
                self._held = self._empty()
                self._push(faded)
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


class StreamedSegment:
    """A segment arriving in chunks (from :meth:`Mixer.begin`). :meth:`add` each chunk in order,
    then :meth:`end`. The join is made as soon as enough of the head is in."""

    def __init__(self, mixer: Mixer, join: Join, tail_frames: int) -> None:
        self._m = mixer
        self.join: Join = join
        self.tail_frames = tail_frames
        self.frames = 0
        """Frames added so far."""
        self.started = False
        """True once the head is queued (the new music is entering the output)."""
        self.start_frame: int | None = None
        """The output frame (:attr:`Mixer.frames_read`'s clock) at which its head begins, once started."""
        self._pending = mixer._empty()
        self._parts: list[np.ndarray] = []
        self._done = False

    def add(self, audio: np.ndarray) -> None:
        m = self._m
        audio = m._check(audio, 0)
        with m._lock:
            if self._done:
                if m._closed:
                    return
                raise RuntimeError("the segment has ended")
            self._parts.append(audio)
            self.frames += audio.shape[0]
            self._pending = np.concatenate([self._pending, audio]) if self._pending.shape[0] else audio
            self._flush_locked(final=False)

    def end(self) -> None:
        """No more chunks: the last ``tail_frames`` become the held tail."""
        m = self._m
        with m._lock:
            if self._done:
                return
            self._done = True
            self._flush_locked(final=True)
            m._held = self._pending.copy()
            self._pending = m._empty()
            if self._parts:
                m._last = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
                m._last_tail = min(self.tail_frames, m._last.shape[0])
            m._open = None

    def _flush_locked(self, *, final: bool) -> None:
        m = self._m
        pending = self._pending
        tail = min(self.tail_frames, pending.shape[0]) if final else self.tail_frames
        if not self.started:
            if final:
                body_end = pending.shape[0] - tail
                k = m._head_frames(self.join, body_end if body_end > 0 else pending.shape[0])
            else:
                want = m._head_frames(self.join, 1 << 62)
                if pending.shape[0] < want + tail:
                    return  # not enough of the head yet
                k = want
            m._join_locked(self.join, pending[:k])
            pending = pending[k:]
            self.started = True
            self.start_frame = m.last_join_frame
        body = pending.shape[0] - tail
        if body > 0:
            chunk = pending[:body]
            if m._silent:  # the music starved mid-segment: come back with a fade-in
                k = min(m.crossfade_frames, chunk.shape[0])
                m._push(fade(chunk[:k], out=False))
                chunk = chunk[k:]
                m._silent = False
            m._push(chunk)
            m._arrived()
            pending = pending[body:]
        self._pending = pending
