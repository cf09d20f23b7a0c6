"""The lock-free SPSC ring buffer: order, wrap-around, underrun and overflow accounting, two real
threads with sequence-numbered frames, and no sample allocation on the consumer side."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

from metabgm_edge.playback.ringbuffer import RingBuffer


def _frames(start: int, n: int) -> np.ndarray:
    seq = np.arange(start, start + n, dtype=np.float32)
    return np.stack([seq, -seq], axis=1)


def test_wraps_around_and_keeps_order() -> None:
    ring = RingBuffer(8, 2)
    assert ring.write(_frames(0, 5)) == 5
    out = np.empty((3, 2), dtype=np.float32)
    assert ring.read_into(out) == 3
    np.testing.assert_array_equal(out, _frames(0, 3))
    assert ring.write(_frames(5, 6)) == 6  # crosses the end of the storage
    assert (ring.available_frames, ring.free_frames) == (8, 0)
    out = np.empty((8, 2), dtype=np.float32)
    assert ring.read_into(out) == 8
    np.testing.assert_array_equal(out, _frames(3, 8))
    assert ring.underruns == 0


def test_underrun_zero_fills_and_counts() -> None:
    ring = RingBuffer(16, 2)
    ring.write(_frames(1, 4))
    out = np.full((10, 2), 7.0, dtype=np.float32)
    assert ring.read_into(out) == 4
    np.testing.assert_array_equal(out[:4], _frames(1, 4))
    assert not out[4:].any()
    assert (ring.underruns, ring.underrun_frames) == (1, 6)
    assert ring.read_into(out) == 0 and not out.any()
    assert (ring.underruns, ring.underrun_frames) == (2, 16)


def test_overflow_takes_what_fits() -> None:
    ring = RingBuffer(10, 2)
    assert ring.write(_frames(0, 7)) == 7
    assert ring.write(_frames(7, 7)) == 3
    assert ring.overflow_frames == 4
    out = np.empty((10, 2), dtype=np.float32)
    ring.read_into(out)
    np.testing.assert_array_equal(out, _frames(0, 10))


def test_rejects_bad_shapes_and_sizes() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0, 2)
    ring = RingBuffer(8, 2)
    with pytest.raises(ValueError, match=r"\(frames, 2\)"):
        ring.write(np.zeros((4, 3), dtype=np.float32))


def test_two_threads_sequence_numbers_survive_many_wraps() -> None:
    """Producer and consumer on real threads, random block sizes, a prime capacity: every frame
    arrives exactly once and in order across thousands of wrap-arounds."""
    total = 1_000_003
    ring = RingBuffer(1031, 2)
    received = np.empty((total, 2), dtype=np.float32)
    got = 0
    underrun_garbage = False
    errors: list[BaseException] = []

    def producer() -> None:
        rng = np.random.default_rng(1)
        pos = 0
        try:
            while pos < total:
                n = min(int(rng.integers(1, 700)), total - pos)
                block = _frames(pos, n)
                done = 0
                while done < n:
                    k = ring.write(block[done:])
                    done += k
                    if k == 0:
                        time.sleep(0)
                pos += n
        except BaseException as exc:
            errors.append(exc)

    def consumer() -> None:
        nonlocal got, underrun_garbage
        rng = np.random.default_rng(2)
        out = np.empty((700, 2), dtype=np.float32)
        deadline = time.monotonic() + 60
        try:
            while got < total and time.monotonic() < deadline:
                want = int(rng.integers(1, 700))
                view = out[:want]
                n = ring.read_into(view)
                if n < want and view[n:].any():
                    underrun_garbage = True
                received[got : got + n] = view[:n]
                got += n
                if n == 0:
                    time.sleep(0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert got == total
    assert not underrun_garbage
    np.testing.assert_array_equal(received, _frames(0, total))  # nothing lost, duplicated or reordered
    assert ring.frames_written // ring.capacity > 900  # many wrap-arounds
    assert ring.available_frames == 0


def test_read_into_allocates_no_sample_memory() -> None:
    ring = RingBuffer(48000, 2)
    block = _frames(0, 1024)
    out = np.empty((1024, 2), dtype=np.float32)  # 8 KiB: a copy per read would show
    ring.write(block)
    ring.read_into(out)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            ring.write(block)
            ring.read_into(out)
            ring.read_into(out)  # an underrun as well
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - base < 4096, f"read_into allocated {peak - base} bytes"


def test_retract_takes_back_only_unread_frames_beyond_the_guard() -> None:
    ring = RingBuffer(1000, 2)
    ring.write(_frames(0, 600))
    out = np.empty((100, 2), dtype=np.float32)
    ring.read_into(out)  # the consumer read 100 (its largest block: 100)
    assert ring.guard_frames() == 300  # three of the consumer's largest blocks
    assert ring.retract(1000) == 200  # 500 unread, 300 of them kept
    assert ring.available_frames == 300 and ring.retracted_frames == 200
    ring.write(_frames(10_000, 50))  # new audio goes where the taken-back frames were
    rest = np.empty((350, 2), dtype=np.float32)
    assert ring.read_into(rest) == 350
    np.testing.assert_array_equal(rest, np.concatenate([_frames(100, 300), _frames(10_000, 50)]))
    assert ring.retract(10) == 0  # nothing unread is left beyond the guard


def test_retractions_never_tear_what_the_consumer_reads() -> None:
    """A producer that keeps taking back and rewriting the frames the consumer has not read, and a
    consumer reading on another thread: the consumer gets exactly the producer's final stream, in
    order, never a frame that was taken back and never a mix of old and new."""
    ring = RingBuffer(4099, 2)
    total = 400_000
    committed: list[np.ndarray] = []  # the producer's stream after its retractions
    received: list[np.ndarray] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def producer() -> None:
        rng = np.random.default_rng(3)
        value = 0
        length = 0
        try:
            while length < total:
                if rng.random() < 0.05:
                    n = ring.retract(int(rng.integers(1, 3000)))
                    while n > 0:  # drop them from the committed stream
                        last = committed.pop()
                        if last.shape[0] > n:
                            committed.append(last[: last.shape[0] - n])
                            length -= n
                            n = 0
                        else:
                            n -= last.shape[0]
                            length -= last.shape[0]
                    continue
                k = int(rng.integers(1, 500))
                block = _frames(value, k)
                value += k
                got = ring.write(block)
                if got:
                    committed.append(block[:got])
                    length += got
                else:
                    time.sleep(0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def consumer() -> None:
        rng = np.random.default_rng(4)
        out = np.empty((256, 2), dtype=np.float32)
        try:
            while not done.is_set() or ring.available_frames:
                n = ring.read_available_into(out[: int(rng.integers(1, 256))])
                if n:
                    received.append(out[:n].copy())
                else:
                    time.sleep(0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    got = np.concatenate(received)
    want = np.concatenate(committed)
    assert ring.retracted_frames > 10_000  # it really took back a lot
    np.testing.assert_array_equal(got, want[: got.shape[0]])
    assert got.shape[0] == want.shape[0]
