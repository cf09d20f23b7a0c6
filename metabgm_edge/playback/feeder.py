"""The thread between the mixer and the ring buffer.

It keeps the ring filled to ``target_seconds`` (small, so a scene-change transition is heard after
about ``target_seconds`` plus one crossfade) by reading the mixer in blocks.

- ``realtime=True`` (a device or a paced file sink): it always tops the ring up. When no segment
  is queued the mixer fades out and returns silence (a starvation, counted by the mixer), so the
  device itself never underruns.
- ``realtime=False`` (``--fast``): it moves only audio the mixer has queued, waiting otherwise; at
  :meth:`Feeder.finish` it plays out the last tail and stops once everything is in the ring.
"""

from __future__ import annotations

import logging
import threading

from metabgm_edge.playback.mixer import Mixer
from metabgm_edge.playback.ringbuffer import RingBuffer

__all__ = ["Feeder"]

log = logging.getLogger(__name__)


class Feeder:
    def __init__(
        self,
        mixer: Mixer,
        ring: RingBuffer,
        *,
        target_seconds: float = 0.25,
        block_frames: int = 512,
        realtime: bool = True,
    ) -> None:
        self.mixer = mixer
        self.ring = ring
        self.target_frames = min(ring.capacity, max(block_frames, round(target_seconds * mixer.sample_rate)))
        self.block_frames = block_frames
        self.realtime = realtime
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.frames = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metabgm-feeder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        sleep = self.block_frames / self.mixer.sample_rate / 2
        try:
            while not self._stop.is_set():
                room = self.target_frames - self.ring.available_frames
                if room < self.block_frames // 2:
                    self._stop.wait(sleep)
                    continue
                n = min(room, self.block_frames)
                finishing = self._finish.is_set()
                if finishing or not self.realtime:  # move only real audio, never starve the mixer
                    n = min(n, self.mixer.queued_frames)
                    if n == 0:
                        if finishing:
                            self.mixer.finish()  # the last tail, faded out
                            if self.mixer.queued_frames == 0:
                                break
                            continue
                        self._stop.wait(0.002)
                        continue
                chunk = self.mixer.read(n)
                self.ring.write(chunk)  # n <= free: the ring takes it all
                self.frames += chunk.shape[0]
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
