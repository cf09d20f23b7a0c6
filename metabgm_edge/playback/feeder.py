"""The thread between the mixer and the ring buffer.

It keeps the ring filled to ``target_seconds`` by reading the mixer in blocks. The ring is deep
(a second by default) so that a busy machine (the game running on the same cores) never leaves the
audio callback without samples; that depth is not added to the latency of a change, because a
join takes back what is in the ring and not yet heard (:meth:`Feeder.retract`, the mixer's
retractor) and the new music enters right behind the frames the device is about to play.

- ``realtime=True`` (a device or a paced file sink): it moves what the mixer has queued; when the
  mixer has nothing more and the ring is nearly empty it reads on anyway, so the mixer fades out
  and returns silence (a starvation, counted by the mixer) and the device itself never underruns.
- ``realtime=False``: it moves only audio the mixer has queued, waiting otherwise; at
  :meth:`Feeder.finish` it plays out the last tail and stops once everything is in the ring.
"""

from __future__ import annotations

import logging
import threading

from metabgm_edge.playback.mixer import Mixer
from metabgm_edge.playback.ringbuffer import RingBuffer

__all__ = ["Feeder"]

log = logging.getLogger(__name__)

GUARD_SECONDS = 0.1
"""At least this much of what is in the ring is never taken back (the device may be reading it)."""


class Feeder:
    def __init__(
        self,
        mixer: Mixer,
        ring: RingBuffer,
        *,
        target_seconds: float = 1.0,
        block_frames: int = 512,
        realtime: bool = True,
        low_water_seconds: float = 0.08,
        guard_seconds: float = GUARD_SECONDS,
    ) -> None:
        self.mixer = mixer
        self.ring = ring
        self.target_frames = min(ring.capacity, max(block_frames, round(target_seconds * mixer.sample_rate)))
        self.block_frames = block_frames
        self.realtime = realtime
        self.low_water_frames = max(block_frames, round(low_water_seconds * mixer.sample_rate))
        self.guard_frames = round(guard_seconds * mixer.sample_rate)
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.frames = 0
        mixer.set_retractor(self.retract, history_frames=ring.capacity + block_frames, refill=self._refill)

    @property
    def heard_frame(self) -> int:
        """Stream frame (the mixer's) the device reads next: what is being heard about now."""
        return self.mixer.read_frame - self.ring.available_frames

    def guard(self) -> int:
        """Frames past the device's position that a join leaves alone."""
        return self.ring.guard_frames(self.guard_frames)

    def retract(self, frame: int) -> int:
        """The mixer's retractor: take back from the ring what was read from stream frame ``frame``
        on and is not heard yet (called by the mixer with its lock held, so no write is under way).
        Returns the stream frame the mixer's reading is back at."""
        read = self.mixer.read_frame
        want = read - max(frame, 0)
        if want <= 0:
            return read
        got = self.ring.retract(want, guard=self.guard_frames)
        return read - got

    def _refill(self) -> None:
        """Top the ring up from the mixer now (called by the mixer, its lock held, after a join
        took audio back): the new music is in the ring before this call returns."""
        room = self.target_frames - self.ring.available_frames
        n = min(room, self.mixer._readable_locked())
        if n > 0:
            chunk = self.mixer._read_locked(n, starve=False)
            self.ring.write(chunk)
            self.frames += chunk.shape[0]

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metabgm-feeder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        sleep = self.block_frames / self.mixer.sample_rate / 2
        try:
            while not self._stop.is_set():
                fill = self.ring.available_frames
                room = self.target_frames - fill
                if room < self.block_frames // 2:
                    self._stop.wait(sleep)
                    continue
                n = min(room, self.block_frames)
                finishing = self._finish.is_set()
                starve = self.realtime and not finishing and fill < self.low_water_frames
                got = self.mixer.pull(n, self.ring.write, starve=starve)
                if got == 0:
                    if finishing:
                        self.mixer.finish()  # the last tail, faded out
                        if self.mixer.queued_frames == 0:
                            break
                        continue
                    self._stop.wait(0.002)
                    continue
                self.frames += got
        except BaseException as exc:
            self.error = exc
            log.error("feeder stopped: %s", exc)
        finally:
            self._done.set()

    def finish(self, timeout: float | None = None) -> bool:
        """Move the rest of the mix (with the last tail faded out) into the ring, then stop.
        Returns False if that did not happen within ``timeout``."""
        self._finish.set()
        return self._done.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
