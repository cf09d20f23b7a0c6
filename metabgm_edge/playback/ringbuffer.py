"""A single-producer / single-consumer lock-free ring buffer of float32 audio frames.

The producer (the thread that mixes rendered segments) calls :meth:`RingBuffer.write`; the
consumer (the audio callback) calls :meth:`RingBuffer.read_into`. Neither takes a lock and the
consumer allocates no sample memory: it copies from the preallocated storage into the array it is
given and zero-fills whatever it could not serve (an underrun, counted).

Memory-ordering argument. Each side owns one counter and only reads the other's:
``_written`` (frames ever written, stored only by the producer) and ``_read`` (frames ever read,
stored only by the consumer). Both only grow (but see Retraction below), so ``_written - _read``
is the fill level and the storage index is ``counter % capacity``; they never wrap (Python ints
are unbounded).

- The producer first copies the frames into the free region, *then* publishes them by storing
  ``_written``. The consumer loads ``_written`` once, so it only ever copies frames whose copy
  finished before that store.
- The consumer first copies the frames out, *then* frees them by storing ``_read``. The producer
  loads ``_read`` once, so it never overwrites frames the consumer is still copying.

Retraction. The producer may take back frames it wrote that the consumer has not read
(:meth:`RingBuffer.retract`: a scene change replaces the music queued ahead of the listener).
It lowers ``_written``, never below ``_read`` plus a guard of frames the consumer may be reading
right now: the guard is several times the largest block the consumer ever asked for, so a
consumer that loaded the old ``_written`` copies only frames below the new one, which the producer
does not overwrite. A consumer that finds ``_written`` below ``_read`` (it cannot, given the
guard) treats the buffer as empty.

In CPython a store or load of an attribute bound to an int is a single bytecode, atomic under the
GIL, and the GIL hand-off between threads orders everything one thread did before the store
before everything the other does after its load (a release/acquire pair). Each counter has
exactly one writer, so no read-modify-write race exists. On a free-threaded build (no GIL)
attribute stores and loads of one object are still atomic and sequentially consistent in
CPython's implementation, which is the property this relies on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RingBuffer"]


class RingBuffer:
    """Preallocated wrap-around buffer of ``capacity`` frames of ``channels`` float32 samples."""

    def __init__(self, capacity: int, channels: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be at least 1 frame, got {capacity}")
        if channels < 1:
            raise ValueError(f"ring buffer needs at least 1 channel, got {channels}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._written = 0  # stored by the producer only
        self._read = 0  # stored by the consumer only
        # Consumer-side counters (stored by the consumer only).
        self.underruns = 0
        """Calls of :meth:`read_into` that could not be served in full."""
        self.underrun_frames = 0
        """Frames zero-filled because the buffer ran dry."""
        self.max_block = 0
        """The largest block the consumer asked for (how far it may read at once)."""
        # Producer-side counters.
        self.overflow_frames = 0
        """Frames :meth:`write` could not take because the buffer was full."""
        self.retracted_frames = 0
        """Frames taken back by :meth:`retract` before the consumer read them."""

    # -- both sides ---------------------------------------------------------------------------
    @property
    def available_frames(self) -> int:
        """Frames written and not yet read (what the consumer can take now)."""
        return self._written - self._read

    @property
    def free_frames(self) -> int:
        """Frames the producer can write now without overwriting unread ones."""
        return self.capacity - (self._written - self._read)

    @property
    def frames_written(self) -> int:
        return self._written

    @property
    def frames_read(self) -> int:
        return self._read

    # -- producer -----------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> int:
        """Copy as many of ``frames`` (shape (n, channels)) as fit; return how many were taken.

        Frames that do not fit are not taken (the caller keeps them and retries); they are counted
        in :attr:`overflow_frames`.
        """
        if frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"write expects an array of shape (frames, {self.channels}), got {frames.shape}")
        written = self._written
        free = self.capacity - (written - self._read)
        n = min(frames.shape[0], free)
        if n < frames.shape[0]:
            self.overflow_frames += frames.shape[0] - n
        if n <= 0:
            return 0
        start = written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = frames[:first]
        if n > first:
            self._buf[: n - first] = frames[first:n]
        self._written = written + n  # publish only after the copy
        return n

    def guard_frames(self, minimum: int = 0) -> int:
        """Frames past the consumer's position that :meth:`retract` never takes back."""
        return max(minimum, 3 * self.max_block, 256)

    def retract(self, frames: int, *, guard: int = 0) -> int:
        """Take back up to ``frames`` of the newest unread frames (producer side). Frames within
        :meth:`guard_frames` of the consumer's position are kept. Returns how many were taken."""
        written = self._written
        keep = self._read + self.guard_frames(guard)
        n = max(0, min(int(frames), written - keep))
        if n:
            self._written = written - n
            self.retracted_frames += n
        return n

    # -- consumer (audio callback) ------------------------------------------------------------
    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (shape (frames, channels)) with the oldest unread frames.

        Returns the frames served; the rest of ``out`` is zero-filled and counted as an underrun.
        Takes no lock, allocates no sample memory and never raises for a well-formed ``out``.
        """
        want = out.shape[0]
        if want > self.max_block:
            self.max_block = want
        read = self._read
        n = min(want, self._written - read)
        if n > 0:
            start = read % self.capacity
            first = min(n, self.capacity - start)
            out[:first] = self._buf[start : start + first]
            if n > first:
                out[first:n] = self._buf[: n - first]
            self._read = read + n  # free only after the copy
        else:
            n = 0
        if n < want:
            out[n:] = 0.0
            self.underruns += 1
            self.underrun_frames += want - n
        return n

    def read_available_into(self, out: np.ndarray) -> int:
        """Like :meth:`read_into` but takes at most what is available, without zero-filling or
        counting an underrun (for consumers that can wait, such as an unpaced file writer)."""
        if out.shape[0] > self.max_block:
            self.max_block = out.shape[0]
        read = self._read
        n = min(out.shape[0], self._written - read)
        if n <= 0:
            return 0
        start = read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        if n > first:
            out[first:n] = self._buf[: n - first]
        self._read = read + n
        return n
