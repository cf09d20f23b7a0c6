"""Where the mixed stream goes: a PortAudio device, a WAV file, or both at once.

All sinks consume the same :class:`~metabgm_edge.playback.ringbuffer.RingBuffer`:

- :class:`DeviceSink`: a sounddevice ``OutputStream`` whose callback reads the ring (no lock, no
  sample allocation, never raises, counts PortAudio's underflow flags). With a WAV path it tees:
  the callback copies exactly what it handed to the device into a second ring, and a writer
  thread drains that into the file (file I/O never runs in the callback).
- :class:`FileSink`: no device. A thread pulls from the ring either paced by the clock, like a
  device would (``paced=True``; underruns zero-fill and count), or as fast as audio arrives
  (``paced=False``, for ``--fast``: it waits for audio instead of underrunning). Without a path it
  is a null sink that still keeps time.

:func:`open_sink` tries the device and, when the machine has none, says so once (one warning)
and falls back to the file: the named fallback ``play`` uses on a headless machine.
sounddevice is imported inside the functions that need it so a headless install without
PortAudio still imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from msgspec import Struct

from metabgm_edge.audio.interface import CHANNELS, SAMPLE_RATE
from metabgm_edge.errors import MetabgmError
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.wav import WavWriter, open_wav_writer

__all__ = [
    "DeviceInfo",
    "DeviceSink",
    "FileSink",
    "NoOutputDevice",
    "PlaybackCallback",
    "Sink",
    "SinkStats",
    "list_devices",
    "open_sink",
    "probe_output",
]

log = logging.getLogger(__name__)


class NoOutputDevice(MetabgmError, RuntimeError):
    """The machine has no usable audio output device (the message says why and what to do)."""


class DeviceInfo(Struct, frozen=True):
    index: int
    name: str
    hostapi: str
    max_output_channels: int
    default_samplerate: float
    default_output: bool


class SinkStats(Struct):
    kind: Literal["device", "file", "null"]
    device: str | None = None
    wav_path: str | None = None
    frames: int = 0
    """Frames handed to the device (or pulled by the file sink), silence included."""
    callbacks: int = 0
    underflows: int = 0
    """Device callbacks whose status reported output_underflow (PortAudio's own flag)."""
    other_flags: int = 0
    """Device callbacks with any other status flag set (priming output, ...)."""
    ring_underruns: int = 0
    """Times the ring buffer ran dry while the sink was playing (silence was played)."""
    ring_underrun_frames: int = 0
    wav_frames: int = 0
    tap_dropped_frames: int = 0
    """Frames played but missing from the WAV because its writer fell behind (should be 0)."""
    callback_errors: int = 0
    latency_s: float = 0.0


class Sink:
    """What ``play`` drives: start, stop (optionally after the ring drains), close, stats."""

    kind: Literal["device", "file", "null"]
    wav_path: Path | None
    _metadata: bytes | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        raise NotImplementedError

    def stats(self) -> SinkStats:
        raise NotImplementedError

    def set_metadata(self, data: bytes) -> None:
        """Store ``data`` in the WAV's metadata chunk when the sink closes (no WAV: ignored)."""
        self._metadata = bytes(data)

    def close(self) -> None:
        self.stop(drain=False)

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# device discovery


def _sounddevice() -> Any:
    """Import sounddevice or raise NoOutputDevice saying what to install."""
    try:
        import sounddevice
    except OSError as exc:  # PortAudio shared library missing
        raise NoOutputDevice(
            f"PortAudio is not installed ({exc}); install libportaudio2 (Debian/Ubuntu) or portaudio"
        ) from exc
    except ImportError as exc:
        raise NoOutputDevice(f"sounddevice is not installed ({exc}); pip install sounddevice") from exc
    return sounddevice


def list_devices() -> list[DeviceInfo]:
    """Output-capable devices PortAudio sees now; empty when none (or PortAudio is missing)."""
    try:
        sd = _sounddevice()
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_out = sd.default.device[1]
    except Exception as exc:
        log.debug("listing audio devices failed: %s", exc)
        return []
    out = []
    for d in devices:
        if d["max_output_channels"] <= 0:
            continue
        out.append(
            DeviceInfo(
                index=int(d["index"]),
                name=str(d["name"]),
                hostapi=str(hostapis[d["hostapi"]]["name"]),
                max_output_channels=int(d["max_output_channels"]),
                default_samplerate=float(d["default_samplerate"]),
                default_output=int(d["index"]) == default_out,
            )
        )
    return out


def probe_output(
    device: int | str | None = None, *, sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS
) -> str | None:
    """Why ``device`` (None: the default output) cannot play float32 at this rate, or None if it can."""
    try:
        sd = _sounddevice()
        if device is None and not any(d["max_output_channels"] > 0 for d in sd.query_devices()):
            return (
                "PortAudio lists no output device (no sound card or sound server; on a headless "
                "machine start PulseAudio with a null sink, see scripts/setup-audio.sh)"
            )
        sd.check_output_settings(device=device, channels=channels, dtype="float32", samplerate=sample_rate)
    except NoOutputDevice as exc:
        return str(exc)
    except Exception as exc:
        return f"output device {device if device is not None else '(default)'} unusable: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# the WAV writer thread shared by both sinks


class _TapWriter:
    """Drains a ring into a WavWriter on its own thread (so file I/O never blocks the callback)."""

    def __init__(self, ring: RingBuffer, writer: WavWriter, block_frames: int = 4096) -> None:
        self.ring = ring
        self.writer = writer
        self._block = np.zeros((block_frames, ring.channels), dtype=np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metabgm-wav-writer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        while True:
            n = self.ring.read_available_into(self._block)
            if n == 0:
                return
            self.writer.write(self._block[:n])

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.05):
                self._drain()
        except BaseException as exc:  # keep playing; report on close
            self.error = exc
            log.error("WAV writer failed, the recording stops here: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            if self.error is None:
                self._drain()
        finally:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# device sink


class PlaybackCallback:
    """The device callback: reads the ring into PortAudio's buffer and copies what it played into
    the tap ring (for the WAV). No lock, no sample allocation, no I/O, never raises."""

    def __init__(self, ring: RingBuffer, tap: RingBuffer | None = None) -> None:
        self.ring = ring
        self.tap = tap
        self.draining = False
        """Set when stopping: play what is left, then silence that is neither counted nor recorded."""
        self.frames = 0
        self.callbacks = 0
        self.underflows = 0
        self.other_flags = 0
        self.errors = 0

    def __call__(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        try:
            if status:
                if status.output_underflow:
                    self.underflows += 1
                else:
                    self.other_flags += 1
            if self.draining:
                n = self.ring.read_available_into(outdata)
                if n < frames:
                    outdata[n:] = 0.0
            else:
                self.ring.read_into(outdata)
                n = frames
            if self.tap is not None and n > 0:
                self.tap.write(outdata[:n] if n < frames else outdata)
            self.frames += frames
            self.callbacks += 1
        except BaseException:
            self.errors += 1
            with contextlib.suppress(BaseException):
                outdata.fill(0)


class DeviceSink(Sink):
    """Plays the ring on a PortAudio output device; with ``wav_path`` also records what it plays."""

    kind: Literal["device"] = "device"

    def __init__(
        self,
        ring: RingBuffer,
        *,
        sample_rate: int = SAMPLE_RATE,
        device: int | str | None = None,
        wav_path: str | os.PathLike[str] | None = None,
        blocksize: int = 0,
        latency: float | str = "high",
        tap_seconds: float = 4.0,
    ) -> None:
        reason = probe_output(device, sample_rate=sample_rate, channels=ring.channels)
        if reason is not None:
            raise NoOutputDevice(reason)
        self._sd = _sounddevice()
        self.ring = ring
        self.sample_rate = sample_rate
        self.device = device
        self.wav_path = Path(wav_path) if wav_path is not None else None
        self.blocksize = blocksize
        self.latency = latency
        self._tap = RingBuffer(max(1, int(tap_seconds * sample_rate)), ring.channels) if wav_path else None
        self._tap_writer: _TapWriter | None = None
        self._stream: Any = None
        self.callback = PlaybackCallback(ring, self._tap)
        self._underruns_at_start = 0
        self._underrun_frames_at_start = 0
        self._device_name: str | None = None
        self._started = False
        self._latency_s = 0.0
        self._open_stream()

    def _open_stream(self) -> None:
        sd = self._sd
        try:
            self._stream = sd.OutputStream(
                samplerate=self.sample_rate,
                blocksize=self.blocksize,
                device=self.device,
                channels=self.ring.channels,
                dtype="float32",
                latency=self.latency,
                callback=self.callback,
            )
            self._device_name = str(sd.query_devices(self._stream.device)["name"])
        except Exception as exc:
            self._stream = None
            raise NoOutputDevice(f"could not open the output device: {exc}") from exc

    def start(self) -> None:
        if self._started:
            return
        if self._stream is None:
            self._open_stream()
        if self.wav_path is not None and self._tap is not None:
            self._tap_writer = _TapWriter(
                self._tap, open_wav_writer(self.wav_path, self.sample_rate, self.ring.channels)
            )
            self._tap_writer.start()
        self._underruns_at_start = self.ring.underruns
        self._underrun_frames_at_start = self.ring.underrun_frames
        self._stream.start()
        self._started = True
        self._latency_s = float(self._stream.latency)
        log.info(
            "playing on %r at %d Hz, latency %.0f ms",
            self._device_name,
            self.sample_rate,
            1000 * self._latency_s,
        )

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop playback. ``drain`` first plays what the ring holds (up to ``timeout`` seconds)."""
        stream = self._stream
        if stream is not None:
            if drain and self._started:
                self.callback.draining = True
                deadline = None if timeout is None else time.monotonic() + timeout
                while self.ring.available_frames > 0 and stream.active:
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                time.sleep(float(stream.latency) + 0.05)  # let the last block leave the device
            try:
                stream.stop()
                stream.close()
            except Exception as exc:
                log.warning("closing the output stream: %s", exc)
            self._stream = None
            self._started = False
            self.callback.draining = False
            cb = self.callback
            flags = f"{cb.underflows} output underflows, {cb.other_flags} other status flags"
            (log.warning if cb.underflows else log.info)(
                "device stopped after %d callbacks: %s", cb.callbacks, flags
            )
        if self._tap_writer is not None:
            if self._metadata is not None:
                self._tap_writer.writer.set_metadata(self._metadata)
            self._tap_writer.close()
            self._tap_writer = None
            if self._tap is not None and self._tap.overflow_frames:
                log.warning(
                    "the WAV writer fell behind: %d played frames are missing from %s",
                    self._tap.overflow_frames,
                    self.wav_path,
                )

    def stats(self) -> SinkStats:
        return SinkStats(
            kind="device",
            device=self._device_name,
            wav_path=str(self.wav_path) if self.wav_path else None,
            frames=self.callback.frames,
            callbacks=self.callback.callbacks,
            underflows=self.callback.underflows,
            other_flags=self.callback.other_flags,
            ring_underruns=self.ring.underruns - self._underruns_at_start,
            ring_underrun_frames=self.ring.underrun_frames - self._underrun_frames_at_start,
            wav_frames=self._tap.frames_written if self._tap else 0,
            tap_dropped_frames=self._tap.overflow_frames if self._tap else 0,
            callback_errors=self.callback.errors,
            latency_s=self._latency_s,
        )


# --------------------------------------------------------------------------------------------
# file / null sink


class FileSink(Sink):
    """Pulls the ring on a thread into a WAV file (or nowhere), paced by the clock or unpaced."""

    def __init__(
        self,
        ring: RingBuffer,
        *,
        sample_rate: int = SAMPLE_RATE,
        wav_path: str | os.PathLike[str] | None = None,
        paced: bool = True,
        block_frames: int = 1024,
    ) -> None:
        self.ring = ring
        self.sample_rate = sample_rate
        self.wav_path = Path(wav_path) if wav_path is not None else None
        self.kind = "file" if wav_path is not None else "null"
        self.paced = paced
        self._block = np.zeros((block_frames, ring.channels), dtype=np.float32)
        self._writer: WavWriter | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._frames = 0
        self._underruns_at_start = 0
        self._underrun_frames_at_start = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.wav_path is not None:
            self._writer = open_wav_writer(self.wav_path, self.sample_rate, self.ring.channels)
        self._underruns_at_start = self.ring.underruns
        self._underrun_frames_at_start = self.ring.underrun_frames
        self._thread = threading.Thread(target=self._run, name="metabgm-file-sink", daemon=True)
        self._thread.start()

    def _emit(self, frames: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(frames)
        self._frames += frames.shape[0]

    def _run(self) -> None:
        try:
            if self.paced:
                self._run_paced()
            else:
                self._run_unpaced()
        except BaseException as exc:
            self.error = exc
            log.error("file sink failed: %s", exc)

    def _run_paced(self) -> None:
        period = self._block.shape[0] / self.sample_rate
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self._finish.is_set() and self.ring.available_frames == 0:
                return
            if self._finish.is_set():
                n = self.ring.read_available_into(self._block)
                self._emit(self._block[:n])
            else:
                self.ring.read_into(self._block)
                self._emit(self._block)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:  # fell far behind (suspended machine): do not try to catch up
                next_t = time.monotonic()

    def _run_unpaced(self) -> None:
        while not self._stop.is_set():
            n = self.ring.read_available_into(self._block)
            if n:
                self._emit(self._block[:n])
            elif self._finish.is_set():
                return
            else:
                self._stop.wait(0.002)

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop; ``drain`` first writes what the ring holds (the producer must have finished)."""
        if self._thread is not None:
            if drain:
                self._finish.set()
                self._thread.join(timeout)
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._writer is not None:
            if self._metadata is not None:
                self._writer.set_metadata(self._metadata)
            self._writer.close()
            self._writer = None

    def stats(self) -> SinkStats:
        return SinkStats(
            kind=self.kind,  # type: ignore[arg-type]
            wav_path=str(self.wav_path) if self.wav_path else None,
            frames=self._frames,
            ring_underruns=self.ring.underruns - self._underruns_at_start,
            ring_underrun_frames=self.ring.underrun_frames - self._underrun_frames_at_start,
            wav_frames=self._frames if self.wav_path else 0,
        )


def open_sink(
    ring: RingBuffer,
    *,
    sample_rate: int = SAMPLE_RATE,
    wav_path: str | os.PathLike[str] | None = None,
    use_device: bool = True,
    device: int | str | None = None,
    paced: bool = True,
    latency: float | str = "high",
    strict_device: bool = False,
) -> Sink:
    """A device sink (teeing into ``wav_path`` when given) or, when there is no usable device, the
    named fallback: a file sink (paced like a device) with one warning saying why.

    ``use_device=False`` (``--fast``) skips the device and builds a file sink (``paced`` chooses).
    ``strict_device``: the user named ``device``, so a device that cannot be used is an error
    (:class:`NoOutputDevice`) instead of the fallback.
    """
    if use_device:
        try:
            return DeviceSink(
                ring, sample_rate=sample_rate, device=device, wav_path=wav_path, latency=latency
            )
        except NoOutputDevice as exc:
            if strict_device:
                raise
            where = f"writing {wav_path} only" if wav_path is not None else "playing into a null sink"
            log.warning("no audio output device: %s; %s", exc, where)
    return FileSink(ring, sample_rate=sample_rate, wav_path=wav_path, paced=paced)
