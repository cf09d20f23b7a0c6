"""IEEE float32 WAV files of any length, written incrementally and readable after an interrupted run.

:class:`WavWriter` writes the header first with provisional sizes, appends frames as they come
and patches the sizes every ``sync_seconds`` of audio and on :meth:`WavWriter.close`, so a file
cut short by Ctrl-C (or a crash) is still a valid WAV holding everything up to the last patch.
A recording has no size limit: the header reserves room (a ``JUNK`` chunk) for the 64-bit sizes of
RF64 (EBU Tech 3306); a file stays a plain RIFF WAV up to 4 GiB (about 4.6 hours of 32 kHz stereo
float32, 0.92 GB an hour) and becomes RF64 past that, which libsndfile, sox, ffmpeg and most
editors read. An optional ``mbgm`` chunk after the data carries metadata (the synthesizer stores
its anchor there so ``render --continue-from`` can continue the music).

A destination that is not a regular file (``/dev/null``, a pipe) cannot be patched: the header is
then written once with the "unknown size" values of a streamed WAV and never touched again.

:func:`read_wav` reads what this module writes plus the usual PCM 16/24/32-bit and
WAVE_FORMAT_EXTENSIBLE files (parec, sox, other tools), always returning float32 frames.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from metabgm_edge.errors import MetabgmError

__all__ = ["WavInfo", "WavWriter", "open_wav_writer", "read_wav", "write_wav"]

log = logging.getLogger(__name__)

_FORMAT_PCM = 1
_FORMAT_FLOAT = 3
_FORMAT_EXTENSIBLE = 0xFFFE
_META_CHUNK = b"mbgm"
_UNKNOWN = 0xFFFFFFFF
# RIFF(12) + JUNK/ds64 (8 + 28) + fmt (8 + 18) + fact (8 + 4) + data header (8)
_DS64_BYTES = 28
_HEADER_BYTES = 12 + 8 + _DS64_BYTES + 26 + 12 + 8
_RIFF_LIMIT = 0xFFFFFFFF


class WavInfo:
    """What :func:`read_wav` found: ``sample_rate``, ``channels``, ``format`` and ``metadata``."""

    def __init__(self, sample_rate: int, channels: int, fmt: str, metadata: bytes | None) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.format = fmt
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"WavInfo(sample_rate={self.sample_rate}, channels={self.channels}, format={self.format!r})"


class WavWriter:
    """Append float32 frames (shape (n, channels)) to a WAV file; :meth:`close` finalises it."""

    def __init__(
        self, path: str | os.PathLike[str], sample_rate: int, channels: int = 2, *, sync_seconds: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.frames = 0
        self._metadata: bytes | None = None
        self._sync_every = max(1, int(sync_seconds * sample_rate))
        self._since_sync = 0
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        try:
            mode = os.fstat(self._f.fileno()).st_mode
            self.streamed = not stat.S_ISREG(mode)
            """Not a regular file (a pipe, /dev/null): sizes cannot be patched."""
            self._f.write(self._header(None if self.streamed else 0))
            self._f.flush()
        except BaseException:
            self._f.close()
            self._f = None
            raise

    def _header(self, frames: int | None, extra: int = 0) -> bytes:
        """The header for ``frames`` frames followed by ``extra`` bytes of chunks (None: unknown)."""
        block_align = 4 * self.channels
        fmt = struct.pack(
            "<HHIIHHH", _FORMAT_FLOAT, self.channels, self.sample_rate, self.sample_rate * block_align,
            block_align, 32, 0,
        )  # fmt: skip
        if frames is None:
            riff = b"RIFF" + struct.pack("<I", _UNKNOWN)
            reserved = b"JUNK" + struct.pack("<I", _DS64_BYTES) + bytes(_DS64_BYTES)
            fact, data_size = _UNKNOWN, _UNKNOWN
        else:
            data_bytes = frames * block_align
            riff_size = _HEADER_BYTES - 8 + data_bytes + extra
            if riff_size <= _RIFF_LIMIT:
                riff = b"RIFF" + struct.pack("<I", riff_size)
                reserved = b"JUNK" + struct.pack("<I", _DS64_BYTES) + bytes(_DS64_BYTES)
                fact, data_size = frames, data_bytes
            else:  # RF64: the 32-bit sizes say "see ds64"
                riff = b"RF64" + struct.pack("<I", _UNKNOWN)
                reserved = b"ds64" + struct.pack("<IQQQI", _DS64_BYTES, riff_size, data_bytes, frames, 0)
                fact, data_size = min(frames, _UNKNOWN), _UNKNOWN
        return (
            riff + b"WAVE" + reserved + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<II", 4, fact) + b"data" + struct.pack("<I", data_size)
        )  # fmt: skip

    @property
    def closed(self) -> bool:
        return self._f is None

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def write(self, frames: np.ndarray) -> None:
        """Append frames; float32 is written as is, other float types are converted."""
        if self._f is None:
            raise ValueError(f"{self.path}: the WAV writer is closed")
        if frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"expected frames of shape (n, {self.channels}), got {frames.shape}")
        data = np.ascontiguousarray(frames, dtype="<f4")
        self._f.write(data.tobytes())
        self.frames += frames.shape[0]
        self._since_sync += frames.shape[0]
        if self._since_sync >= self._sync_every:
            self.sync()

    def sync(self) -> None:
        """Patch the header to the frames written so far and flush (the file is valid now)."""
        if self._f is None:
            return
        self._f.flush()
        self._since_sync = 0
        if self.streamed:
            return
        end = _HEADER_BYTES + self.frames * 4 * self.channels
        self._f.seek(0)
        self._f.write(self._header(self.frames))
        self._f.seek(end)
        self._f.flush()

    def set_metadata(self, data: bytes) -> None:
        """Store ``data`` in an ``mbgm`` chunk written after the audio on :meth:`close`."""
        self._metadata = bytes(data)

    def close(self) -> None:
        if self._f is None:
            return
        f = self._f
        try:
            extra = b""
            if self._metadata is not None and not self.streamed:
                pad = b"\0" if len(self._metadata) % 2 else b""
                extra = _META_CHUNK + struct.pack("<I", len(self._metadata)) + self._metadata + pad
                f.write(extra)
            f.flush()
            if not self.streamed:
                f.seek(0)
                f.write(self._header(self.frames, len(extra)))
                f.flush()
        finally:
            f.close()
            self._f = None

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_wav_writer(path: str | os.PathLike[str], sample_rate: int, channels: int = 2) -> WavWriter:
    """A :class:`WavWriter`, or a :class:`MetabgmError` saying in one line why ``path`` cannot be
    written (a missing or unwritable folder, a folder given as the file, a full disk)."""
    try:
        return WavWriter(path, sample_rate, channels)
    except OSError as exc:
        raise MetabgmError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_wav(
    path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int, *, metadata: bytes | None = None
) -> None:
    """Write ``audio`` (shape (frames, channels) or (frames,)) as a float32 WAV file."""
    if audio.ndim == 1:
        audio = audio[:, None]
    with WavWriter(path, sample_rate, audio.shape[1], sync_seconds=1e9) as w:
        w.write(audio)
        if metadata is not None:
            w.set_metadata(metadata)


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, WavInfo]:
    """Read a WAV file as float32 frames (shape (frames, channels)) and its :class:`WavInfo`.

    Sizes in the header that disagree with the file (an unfinished recording) are clamped to what
    the file holds. Raises ValueError naming the file when it is not a WAV this reader knows.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) < 12 or raw[:4] not in (b"RIFF", b"RF64") or raw[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    big_data: int | None = None
    pos = 12
    fmt_tag = channels = rate = bits = None
    data: bytes | None = None
    metadata = None
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        size = struct.unpack_from("<I", raw, pos + 4)[0]
        body_at = pos + 8
        body_end = min(len(raw), body_at + size)
        if cid == b"ds64" and size >= 16 and body_at + 16 <= len(raw):
            big_data = struct.unpack_from("<Q", raw, body_at + 8)[0]
        elif cid == b"fmt ":
            if size < 16 or body_at + 16 > len(raw):
                raise ValueError(f"{path}: the fmt chunk is cut short; the file is not a complete WAV")
            fmt_tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, body_at)
            if fmt_tag == _FORMAT_EXTENSIBLE and size >= 40:
                fmt_tag = struct.unpack_from("<H", raw, body_at + 24)[0]
        elif cid == b"data":
            if size == _UNKNOWN and big_data is not None:
                size = big_data
                body_end = min(len(raw), body_at + size)
            if size in (0, _UNKNOWN) or body_at + size > len(raw):
                body_end = len(raw)  # unfinished or streamed recording: take what is there
            data = raw[body_at:body_end]
        elif cid == _META_CHUNK:
            metadata = raw[body_at:body_end]
        pos = body_at + size + (size & 1)
        if cid == b"data" and body_end == len(raw):
            break
    if fmt_tag is None or channels is None or rate is None or bits is None:
        raise ValueError(f"{path}: no fmt chunk; the file is not a complete WAV")
    if channels < 1 or rate < 1:
        raise ValueError(f"{path}: the fmt chunk says {channels} channels at {rate} Hz")
    if data is None:
        raise ValueError(f"{path}: no data chunk")
    if fmt_tag == _FORMAT_FLOAT and bits == 32:
        dtype, scale, fmt_name = np.dtype("<f4"), 1.0, "float32"
    elif fmt_tag == _FORMAT_FLOAT and bits == 64:
        dtype, scale, fmt_name = np.dtype("<f8"), 1.0, "float64"
    elif fmt_tag == _FORMAT_PCM and bits == 16:
        dtype, scale, fmt_name = np.dtype("<i2"), 1 / 32768, "pcm16"
    elif fmt_tag == _FORMAT_PCM and bits == 32:
        dtype, scale, fmt_name = np.dtype("<i4"), 1 / 2147483648, "pcm32"
    elif fmt_tag == _FORMAT_PCM and bits == 24:
        b = np.frombuffer(data[: len(data) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8
        samples = ints.astype(np.float32) / 8388608
        n = samples.size // channels
        return samples[: n * channels].reshape(n, channels), WavInfo(rate, channels, "pcm24", metadata)
    else:
        raise ValueError(f"{path}: unsupported WAV encoding (format tag {fmt_tag}, {bits} bits)")
    usable = len(data) // (dtype.itemsize * channels) * dtype.itemsize * channels
    samples = np.frombuffer(data[:usable], dtype=dtype)
    audio = samples.astype(np.float32) * np.float32(scale) if scale != 1.0 else samples.astype(np.float32)
    return audio.reshape(-1, channels), WavInfo(rate, channels, fmt_name, metadata)
