"""Joins rendered segments into one continuous stream for the ring buffer.

The stream is a timeline of frames: frame ``f`` is the ``f``-th frame :meth:`Mixer.read` hands
out. Every segment arrives with a *tail*: its last ``tail_frames`` frames are the music continuing
past the segment's end. The frame where a segment's body ends is the *join frame*; the next
appended segment's head is crossfaded with the tail there (:func:`metabgm_edge.audio.dsp.crossfade`),
so no join has a gap or a step. The tail beyond one crossfade is the music going on: it may be
read ahead (a deep ring buffer keeps filling through a join) and is replaced when the next head
comes.

Segments may arrive whole (:meth:`Mixer.append`, :meth:`Mixer.transition`) or streamed, chunk by
chunk as a backend yields them (:meth:`Mixer.begin` returns a :class:`StreamedSegment`): the
join happens as soon as the first crossfade's worth of the head is in, so the music can start
before the segment is finished.

Joins and what was read ahead. A reader (the feeder) may have taken frames past the point where
a new segment should join: the tail read ahead, or simply the deep ring buffer's worth of what
was playing. A *retractor* (:meth:`Mixer.set_retractor`, the feeder's) gives back frames that are
read but not yet heard; the mixer keeps a history of what it handed out, puts those frames back in
its queue and joins where it should: an appended segment at its join frame, a transition as soon
as the listener can hear it. Without a retractor (``--fast``), a join that comes late enters at
the read position.

The last crossfade's worth of queued audio is the *fade reserve*: it is only read when nothing
else is queued (a starvation, counted once per episode), and then faded out before silence.

Thread-safe: the scheduler appends from one thread while a feeder thread reads; one lock guards
the queue. Nothing here runs in the audio callback (that is the ring buffer's job).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

import numpy as np

from metabgm_edge.audio.dsp import crossfade, fade

__all__ = ["Join", "Mixer", "MixerStats", "StreamedSegment"]

Join = Literal["append", "transition"]

log = logging.getLogger(__name__)

Retractor = Callable[[int], int]
"""``retract(frame)``: un-read the frames from ``frame`` on if the sink has not played them yet;
returns the frame the reader is back at (``>= frame``; the mixer's read frame when nothing could
be given back). Called with the mixer's lock held."""


class MixerStats:
    """Counters a session log or ``bench`` reports."""

    __slots__ = (
        "extended_seconds",
        "extensions",
        "joins",
        "late_joins",
        "retracted_frames",
        "starvations",
        "starved_frames",
        "transitions",
    )

    def __init__(self) -> None:
        self.joins = 0
        self.transitions = 0
        self.extensions = 0
        self.extended_seconds = 0.0
        self.starvations = 0
        """Times the queue ran dry while reading (the mix faded out)."""
        self.starved_frames = 0
        """Frames read while the queue was dry (fade-out plus silence)."""
        self.late_joins = 0
        """Appended segments that came after their join frame had been heard (joined later)."""
        self.retracted_frames = 0
        """Frames read ahead, given back by the reader and replaced by a new segment."""

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__slots__}


class Mixer:
    """Queue of segments in, one continuous float32 stream (frames, channels) out."""

    def __init__(
        self, sample_rate: int, channels: int = 2, crossfade_s: float = 0.5, *, history_s: float = 8.0
    ) -> None:
        if crossfade_s <= 0:
            raise ValueError(f"crossfade_s must be positive, got {crossfade_s}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.crossfade_frames = max(1, round(crossfade_s * sample_rate))
        self.stats = MixerStats()
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)
        """Notified when the open segment ends."""
        self._chunks: deque[np.ndarray] = deque()  # queued, in order, from _read on
        self._pos = 0  # frames of _chunks[0] already read
        self._queued = 0  # frames in _chunks not yet read
        self._read = 0  # stream frame of the next frame read() returns
        self._join = 0  # stream frame where the last segment's body ends (its tail starts)
        self._history: deque[np.ndarray] = deque()  # what read() handed out, newest last
        self._history_frames = 0
        self._history_limit = max(1, round(history_s * sample_rate))
        self._retract: Retractor | None = None
        self._refill: Callable[[], None] | None = None
        self._took_back = False
        self._last: np.ndarray | None = None  # last segment (for extend_previous and context)
        self._last_tail = 0
        self._silent = True  # nothing audible is playing (start, or after a starvation fade-out)
        self._starving = False
        self._final = False  # finish(): the whole queue may be read, no fade reserve
        self._fading = False  # starving: the queued rest is the reserve fading out
        self._open: StreamedSegment | None = None  # a streamed segment still arriving
        self._closed = False

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

    def set_retractor(
        self,
        retract: Retractor | None,
        history_frames: int | None = None,
        refill: Callable[[], None] | None = None,
    ) -> None:
        """Let joins take back frames read ahead but not heard yet (see the module docstring).
        ``refill`` (called with the lock held, after a join that took frames back) puts the new
        music where they were at once, so the reader's buffer is never left at its guard waiting
        for the reader's thread to be scheduled on a busy machine."""
        with self._lock:
            self._retract = retract
            self._refill = refill
            if history_frames is not None:
                self._history_limit = max(self._history_limit, int(history_frames))

    # -- where things are ---------------------------------------------------------------------
    @property
    def read_frame(self) -> int:
        """Stream frame of the next frame :meth:`read` returns (frames handed out so far)."""
        return self._read

    @property
    def join_frame(self) -> int:
        """Stream frame where the next appended segment's head goes (the last body's end)."""
        with self._lock:
            return max(self._join, self._read)

    @property
    def end_frame(self) -> int:
        """Stream frame just past everything queued (tail included)."""
        return self._read + self._queued

    @property
    def queued_seconds(self) -> float:
        """Seconds queued before the join frame (the music the scheduler may count on)."""
        return max(0, self._join - self._read) / self.sample_rate

    @property
    def held_seconds(self) -> float:
        """Seconds of the last segment's tail queued past the join frame."""
        return max(0, self._read + self._queued - max(self._join, self._read)) / self.sample_rate

    @property
    def queued_frames(self) -> int:
        """Frames :meth:`read` can hand out now without starving (all but the fade reserve)."""
        with self._lock:
            return self._readable_locked()

    @property
    def ahead_seconds(self) -> float:
        """Seconds of music queued and readable without starving (tail included)."""
        return self.queued_frames / self.sample_rate

    @property
    def streaming(self) -> bool:
        """True while a streamed segment is still arriving."""
        return self._open is not None

    def _readable_locked(self) -> int:
        if self._final or self._fading or self._closed:  # (closed: what is queued is the end)
            return self._queued
        return self._queued - min(self.crossfade_frames, self._queued)

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

    def finish(self) -> None:
        """End of the stream: the body plays to its end, then one crossfade of the tail fades out."""
        with self._lock:
            at = max(self._join, self._read)
            rest = self._cut_locked(at)
            if rest.shape[0] > 0:
                k = min(self.crossfade_frames, rest.shape[0])
                self._push(fade(rest[:k], out=True))
            self._join = self._read + self._queued
            self._final = True

    def begin(self, join: Join, tail_frames: int, *, aligned: bool = True) -> StreamedSegment:
        """Start a segment whose audio arrives in chunks. ``join`` is ``append`` (its head
        crossfades with the tail of the segment before, at the join frame) or ``transition`` (it
        cuts in now, crossfaded over what is playing). Its last ``tail_frames`` frames are its tail.

        ``aligned``: the segment continues the music from the join frame (rendered from the
        previous segment's anchor), so when it comes late its first frames are skipped to keep it
        on the beat; False (a loop of older audio) joins late from its first frame."""
        if join not in ("append", "transition"):
            raise ValueError(f"join must be 'append' or 'transition', got {join!r}")
        if tail_frames < 0:
            raise ValueError(f"tail_frames must be >= 0, got {tail_frames}")
        with self._lock:
            # An extension (the watchdog's loop of the previous segment, on its own thread) holds
            # the mixer for the moment it takes to queue one chunk: wait for it, never fail.
            self._free.wait_for(lambda: self._open is None or not self._open.extension, timeout=2.0)
            seg = StreamedSegment(self, join, tail_frames, aligned)
            if self._closed:  # the stream has ended: what comes now is dropped
                seg._done = True
                return seg
            if self._open is not None:
                raise RuntimeError("a streamed segment is still open: end() it first")
            self._open = seg
            return seg

    def _begin_extension(self, tail_frames: int) -> StreamedSegment | None:
        """A chunk of extension, or None when a segment is arriving (it takes over from here)."""
        with self._lock:
            if self._open is not None or self._closed:
                return None
            seg = StreamedSegment(self, "append", tail_frames, aligned=False)
            seg.extension = True
            self._open = seg
            return seg

    def close(self, fade_frames: int = 0) -> None:
        """The end of the session: the segment still arriving ends where it is, what is playing
        fades into silence over ``fade_frames`` (0: the body plays out, as :meth:`finish`), and
        segments that arrive from now on are dropped. From here on everything queued is readable
        (the end needs no fade reserve) and reading past it gives silence, not a starvation."""
        with self._lock:
            self._closed = True
            seg = self._open
        if seg is not None:
            seg.end()
        if fade_frames <= 0:
            self.finish()
            return
        out = StreamedSegment(self, "transition", 0)
        with self._lock:
            self._open = out
        out.add(np.zeros((fade_frames, self.channels), dtype=np.float32))
        out.end()

    def append(self, audio: np.ndarray, tail_frames: int) -> None:
        """Queue a whole segment; its head crossfades with the previous segment's tail."""
        self._whole("append", audio, tail_frames)

    def transition(self, audio: np.ndarray, tail_frames: int) -> None:
        """Switch to ``audio`` now: crossfade from what would play next into its start and drop
        the rest of what was queued. The new audio is fully in after one crossfade."""
        self._whole("transition", audio, tail_frames)

    def _whole(self, join: Join, audio: np.ndarray, tail_frames: int) -> None:
        audio = self._check(audio, tail_frames)
        seg = self.begin(join, tail_frames)
        seg.add(audio)
        seg.end()

    # -- the queue (called with the lock held) --------------------------------------------------
    def _push(self, chunk: np.ndarray) -> None:
        if chunk.shape[0] == 0:
            return
        self._chunks.append(np.ascontiguousarray(chunk, dtype=np.float32))
        self._queued += chunk.shape[0]
        if not self._fading:
            self._final = False
            self._starving = False

    def _peek_locked(self, start: int, frames: int) -> np.ndarray:
        """Up to ``frames`` queued frames from stream frame ``start`` (>= the read frame)."""
        skip = start - self._read + self._pos
        parts: list[np.ndarray] = []
        need = frames
        for chunk in self._chunks:
            if need <= 0:
                break
            if skip >= chunk.shape[0]:
                skip -= chunk.shape[0]
                continue
            piece = chunk[skip : skip + need]
            skip = 0
            parts.append(piece)
            need -= piece.shape[0]
        if not parts:
            return self._empty()
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def _cut_locked(self, at: int) -> np.ndarray:
        """Drop everything queued from stream frame ``at`` on; return what was dropped."""
        keep = at - self._read
        if keep >= self._queued:
            return self._empty()
        dropped = self._peek_locked(at, self._queued - keep)
        # Rebuild the queue with the first ``keep`` frames.
        kept: deque[np.ndarray] = deque()
        need = keep
        first = True
        for chunk in self._chunks:
            if need <= 0:
                break
            piece = chunk[self._pos :] if first else chunk
            first = False
            piece = piece[:need]
            kept.append(piece)
            need -= piece.shape[0]
        self._chunks = kept
        self._pos = 0
        self._queued = keep
        self._join = min(self._join, at)
        return dropped

    def _rewind_locked(self, frame: int) -> None:
        """Put the frames handed out from ``frame`` on back at the front of the queue."""
        n = self._read - frame
        if n <= 0:
            return
        n = min(n, self._history_frames)
        if self._pos:
            self._chunks[0] = self._chunks[0][self._pos :]
            self._pos = 0
        back: list[np.ndarray] = []
        need = n
        while need > 0 and self._history:
            chunk = self._history.pop()
            self._history_frames -= chunk.shape[0]
            if chunk.shape[0] > need:
                self._history.append(chunk[: chunk.shape[0] - need])
                self._history_frames += chunk.shape[0] - need
                chunk = chunk[chunk.shape[0] - need :]
            back.append(chunk)
            need -= chunk.shape[0]
        for chunk in back:  # newest first, so each goes in front of the one after it
            self._chunks.appendleft(chunk)
        self._queued += n
        self._read -= n
        self.stats.retracted_frames += n

    def _take_back_locked(self, want: int) -> None:
        """Ask the reader to give back what it read from stream frame ``want`` on (if unheard)."""
        if self._retract is None or want >= self._read:
            return
        try:
            back_at = int(self._retract(want))
        except Exception as exc:  # never let a reader problem stop a join
            log.warning("could not take back audio read ahead: %s", exc)
            return
        if back_at < self._read:
            self._rewind_locked(max(back_at, want))
            self._took_back = True

    def _join_locked(self, seg: StreamedSegment, pending: np.ndarray, final: bool) -> int:
        """Join ``seg``'s head (the first frames of ``pending``) to what plays. Returns the frames
        of ``pending`` it used, or -1 when more of the head is needed first."""
        k = self.crossfade_frames
        if seg.join == "append":
            want = self._join
            self._take_back_locked(want)
        else:
            self._take_back_locked(0)  # as early as the listener can still be spared the old audio
            want = self._read
        fading = self._fading
        at = self._read + self._queued if fading else max(want, self._read)
        silent = self._silent or fading
        skip = at - want if (seg.join == "append" and seg.aligned and not silent) else 0
        if not final and pending.shape[0] < skip + k:
            return -1  # not enough of the head yet
        if skip >= pending.shape[0]:
            skip = 0
        head = pending[skip : skip + k]
        old = self._cut_locked(at)
        self._fading = False
        seg.start_frame = at
        seg.skipped = skip
        seg.late = seg.join == "append" and at > want and not fading
        if seg.late:
            self.stats.late_joins += 1
        n = head.shape[0]
        if seg.join == "transition":
            self.stats.transitions += 1
        if silent:
            # Resuming from silence: fade in so a segment starting mid-note does not click.
            self._push(fade(head, out=False))
        elif seg.join == "transition":
            current = old[:n]
            if current.shape[0] < n:  # not enough queued: the old side fades to what it had
                pad = np.zeros((n - current.shape[0], self.channels), dtype=np.float32)
                current = np.concatenate([current, pad])
            self._push(crossfade(current, head, correlation=0.0))
        elif old.shape[0] > 0:
            m = min(n, old.shape[0])
            self._push(crossfade(old[:m], head[:m]))
            self._push(head[m:])
            self.stats.joins += 1
        else:
            self._push(head)  # the segment before had no tail: it continues sample for sample
        self._silent = False
        return skip + n

    def extend_previous(self, seconds: float) -> float:
        """Fallback when the audio backend failed or is late: queue ``seconds`` more of the previous
        segment's audio, entered with a crossfade at the point that best matches what is playing.

        Returns the seconds queued (0 when there is no previous segment to repeat).
        """
        with self._lock:
            if self._open is not None:
                log.info("extend_previous: a segment is still arriving; nothing queued")
                return 0.0
            last, last_tail = self._last, self._last_tail
            if last is None or last.shape[0] - last_tail <= self.crossfade_frames:
                log.info("extend_previous: no previous segment to repeat; nothing queued")
                return 0.0
        want = round(seconds * self.sample_rate)
        body = last.shape[0] - last_tail
        xf = self.crossfade_frames
        queued = 0
        while queued < want:
            with self._lock:
                start = self._loop_point(last, body)
            end = min(body, start + (want - queued)) + xf
            end = min(end, last.shape[0]) if last_tail >= xf else min(end, body)
            tail = min(xf, end - start - 1)
            chunk = last[start:end]
            if chunk.shape[0] - tail <= 0:
                break
            seg = self._begin_extension(tail)
            if seg is None:  # the next segment began arriving meanwhile: it takes over
                break
            seg.add(chunk)
            seg.end(keep_last=False)
            queued += chunk.shape[0] - tail
        with self._lock:
            self.stats.extensions += 1
            self.stats.extended_seconds += queued / self.sample_rate
        log.info("extended the previous segment by %.2f s", queued / self.sample_rate)
        return queued / self.sample_rate

    def _loop_point(self, last: np.ndarray, body: int) -> int:
        """Offset into ``last`` whose start best continues the tail (or what plays next)."""
        at = max(self._join, self._read)
        ref = self._peek_locked(at, self.crossfade_frames)
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

    # -- consumer side ------------------------------------------------------------------------
    def read(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames of the mix (float32, (frames, channels)).

        When nothing but the fade reserve is queued, the reserve plays out with a fade, then
        silence; that counts as one starvation. After :meth:`close` everything queued is read and
        the silence past it is the end, not a starvation.
        """
        with self._lock:
            return self._read_locked(frames, starve=True)

    def pull(self, frames: int, write: Callable[[np.ndarray], int], *, starve: bool) -> int:
        """Read up to ``frames`` and hand them to ``write`` under the lock, so that a join cannot
        retract audio between the two. Without ``starve`` only what is readable is taken."""
        with self._lock:
            n = frames if starve else min(frames, self._readable_locked())
            if n <= 0:
                return 0
            chunk = self._read_locked(n, starve=starve)
            write(chunk)
            return chunk.shape[0]

    def _read_locked(self, frames: int, *, starve: bool) -> np.ndarray:
        out = self._take_locked(min(frames, self._readable_locked()))
        missing = frames - out.shape[0]
        if missing <= 0 or not starve:
            return out
        if self._closed:  # the stream has ended with its fade: silence now is the end, not a starvation
            return np.concatenate([out, self._silence_locked(missing)])
        parts = [out]
        if not self._starving:
            self._starving = True
            self.stats.starvations += 1
            log.warning("mixer starved: no segment queued; fading out")
        self.stats.starved_frames += missing
        if self._queued > 0 and not self._fading and not self._final:
            # The fade reserve (at most one crossfade) fades out, then silence.
            rest = self._cut_locked(self._read)
            self._push(rest if self._silent else fade(rest, out=True))
            self._fading = True
            self._starving = True
        got = self._take_locked(min(missing, self._queued))
        parts.append(got)
        missing -= got.shape[0]
        if missing > 0:
            parts.append(self._silence_locked(missing))
        if self._queued == 0:
            self._fading = False
        self._silent = True  # the next audio fades in
        self._join = max(self._join, self._read)
        return np.concatenate(parts)

    def _silence_locked(self, frames: int) -> np.ndarray:
        """``frames`` of silence played where no audio is queued (the read position moves on)."""
        silence = np.zeros((frames, self.channels), dtype=np.float32)
        self._read += frames
        self._remember(silence)
        return silence

    def _remember(self, chunk: np.ndarray) -> None:
        if chunk.shape[0] == 0:
            return
        self._history.append(chunk)
        self._history_frames += chunk.shape[0]
        while self._history and self._history_frames - self._history[0].shape[0] >= self._history_limit:
            self._history_frames -= self._history.popleft().shape[0]

    def _take_locked(self, frames: int) -> np.ndarray:
        out = np.empty((frames, self.channels), dtype=np.float32)
        got = 0
        while got < frames and self._chunks:
            chunk = self._chunks[0]
            n = min(frames - got, chunk.shape[0] - self._pos)
            out[got : got + n] = chunk[self._pos : self._pos + n]
            got += n
            self._pos += n
            if self._pos >= chunk.shape[0]:
                self._chunks.popleft()
                self._pos = 0
        self._queued -= got
        self._read += got
        out = out[:got]
        self._remember(out)
        return out


class StreamedSegment:
    """A segment arriving in chunks (from :meth:`Mixer.begin`). :meth:`add` each chunk in order,
    then :meth:`end`. The join is made as soon as enough of the head is in."""

    def __init__(self, mixer: Mixer, join: Join, tail_frames: int, aligned: bool = True) -> None:
        self._m = mixer
        self.join: Join = join
        self.tail_frames = tail_frames
        self.aligned = aligned
        self.frames = 0
        """Frames added so far."""
        self.started = False
        """True once the head is queued (the new music is entering the output)."""
        self.start_frame: int | None = None
        """Stream frame where the head's crossfade begins (once started)."""
        self.skipped = 0
        """Frames of the head dropped because the segment joined after its join frame."""
        self.late = False
        """An appended segment that joined after its join frame (see ``skipped``)."""
        self._pending = mixer._empty()
        self._parts: list[np.ndarray] = []
        self._done = False
        self.extension = False
        """A chunk of :meth:`Mixer.extend_previous` (the mixer's own, held only while it is queued)."""

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

    def end(self, *, keep_last: bool | Literal["extend"] = True) -> None:
        """No more chunks: the last ``tail_frames`` are this segment's tail. What the next
        :meth:`Mixer.extend_previous` repeats (and :meth:`Mixer.context` returns) is this segment
        (``keep_last`` True), the previous one carried on by it (``"extend"``: a continuation of the
        same music), or still the previous one (False: a loop of it, by extend_previous)."""
        m = self._m
        with m._lock:
            if self._done:
                return
            self._done = True
            self._flush_locked(final=True)
            if self.started:
                frames = self.frames - self.skipped
                m._join = max(m._read, m._read + m._queued - min(self.tail_frames, frames))
            if self._parts and keep_last:
                audio = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
                if keep_last == "extend" and m._last is not None:
                    body = m._last[: m._last.shape[0] - m._last_tail]
                    audio = np.concatenate([body[-round(60 * m.sample_rate) :], audio])
                m._last = audio
                m._last_tail = min(self.tail_frames, m._last.shape[0])
            m._open = None
            m._free.notify_all()

    def _flush_locked(self, *, final: bool) -> None:
        m = self._m
        pending = self._pending
        if not self.started:
            if pending.shape[0] == 0:
                return
            used = m._join_locked(self, pending, final)
            if used < 0:
                return
            pending = pending[used:]
            self.started = True
        if pending.shape[0] > 0:
            if m._silent or m._fading:  # the music starved mid-segment: come back with a fade-in
                if m._fading:
                    m._fading = False
                k = min(m.crossfade_frames, pending.shape[0])
                m._push(fade(pending[:k], out=False))
                pending = pending[k:]
                m._silent = False
            m._push(pending)
        self._pending = m._empty()
        if m._took_back and m._refill is not None and self.started:
            m._took_back = False
            try:
                m._refill()
            except Exception as exc:  # the reader's own thread refills soon anyway
                log.warning("refilling after a join failed: %s", exc)
