"""The audio interface every backend follows (see :mod:`metabgm_edge.audio`)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

import msgspec
import numpy as np
from msgspec import Struct

from metabgm_edge.errors import BackendError

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 32000
CHANNELS: Final = 2
SPEED_MARGIN: Final = 1.25
"""A backend keeps up with real time when it renders at least this many seconds of audio per
second of work (the margin leaves room for the text stages and a busy machine)."""
CONTEXT_SECONDS: Final = 4.0
"""Seconds of the playing music handed to a backend with each request (``AudioRequest.context``)."""


@runtime_checkable
class Anchor(Protocol):
    """A backend's melodic anchor: what its next segment needs to continue the music."""

    kind: ClassVar[str]
    """The backend family that made it: ``synth``, ``musicgen``."""

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Anchor:
        """Inverse of ``to_bytes``; ValueError naming the problem otherwise."""
        ...

    def summary(self) -> str:
        """A short line for logs and the ``render`` output."""
        ...


@runtime_checkable
class BarGrid(Protocol):
    """An optional :class:`Anchor` capability: the music has bars, so a join can wait for a bar
    line. The synthesizer's anchors have it; an anchor without it (MusicGen's) joins where it is."""

    def seconds_to_bar(self) -> float:
        """Seconds from the anchor's point to the next bar line of its music (0 on a bar line)."""
        ...

    def bar_seconds(self) -> float:
        """The length of one bar, in seconds."""
        ...

    def beats_per_bar(self) -> int: ...


MAX_JOIN_STEP_S: Final = 2.5
"""Longest wait for a natural join point: bars longer than this are split on their beats (a 4/4
bar at 80 BPM joins on its first or third beat)."""


def next_join_point(anchor: Any, after: float = 0.0, *, max_step: float = MAX_JOIN_STEP_S) -> float | None:
    """Seconds from ``anchor``'s point to the first natural point of its music (a bar line, or a
    beat that divides a long bar into parts of at most ``max_step``) at or after ``after`` seconds.
    None when the anchor has no :class:`BarGrid`."""
    if not isinstance(anchor, BarGrid):
        return None
    try:
        bar = float(anchor.bar_seconds())
        first = float(anchor.seconds_to_bar())
        beats = max(1, int(anchor.beats_per_bar()))
    except Exception as exc:  # a damaged anchor: join without the grid
        log.warning("the anchor's bar grid is unusable (%s); joining without it", exc)
        return None
    if not (bar > 0 and first >= 0) or bar != bar or first != first:
        return None
    parts = next((d for d in range(1, beats + 1) if beats % d == 0 and bar / d <= max_step), beats)
    step = bar / parts
    first = first % step
    if first > step - 1e-6:
        first = 0.0
    if after <= first:
        return first
    return first + step * -(-(after - first - 1e-9) // step)


class AudioRequest(Struct, kw_only=True, frozen=True):
    description: str
    seconds: float
    tail: float = 0.0
    """Seconds rendered past ``seconds``: the part that crossfades with the next segment's head."""
    seed: int = 0
    anchor: Any = None
    """The previous segment's :class:`Anchor` (any backend's), or None to start fresh."""
    context: Any = None
    """float32 (frames, channels) at :data:`SAMPLE_RATE`: the last seconds of the music before this
    segment, or None. A backend that cannot use ``anchor`` may continue from it."""
    first_chunk: float = 0.0
    """The caller wants the first chunk early, holding at most about this many seconds (a sharp
    scene change wants to be heard at once); 0: no preference. A backend may yield less."""


class AudioChunk(Struct, kw_only=True, frozen=True):
    audio: Any
    """float32 of shape (frames, channels)."""
    last: bool = False
    anchor: Any = None
    """On the last chunk: the :class:`Anchor` of the music at the request's ``seconds``."""


@runtime_checkable
class AudioBackend(Protocol):
    name: str
    kind: str
    """``synth`` or ``musicgen``: which anchors it reads as its own."""
    sample_rate: int
    channels: int

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        """Yield the segment in chunks; may raise (the scheduler then uses a named fallback)."""
        ...

    def anchor_from_bytes(self, data: bytes) -> Anchor:
        """This backend's anchor from ``Anchor.to_bytes`` output; ValueError otherwise."""
        ...

    def realtime_factor(self) -> float:
        """Seconds of audio this backend renders per second of work on this machine (measured once,
        then kept up to date from real segments). Below 1 it cannot keep up with real time."""
        ...

    batches: bool
    """True when :meth:`stream_batch` renders several segments faster than one after another
    (MusicGen: one decoder run per step for all of them); a server then batches across players."""

    def stream_batch(self, requests: Sequence[AudioRequest]) -> Iterator[list[AudioChunk | None]]:
        """Several segments at once. Each step yields one entry per request, in order: its next
        chunk, or None when it has none at this step. Every request's chunks are what
        :meth:`stream` yields for it alone; a request whose last chunk was yielded gets only None."""
        ...


def interleave(streams: Sequence[Iterator[AudioChunk]]) -> Iterator[list[AudioChunk | None]]:
    """:meth:`AudioBackend.stream_batch` for a backend that gains nothing from batching: the
    requests' streams advanced one chunk each in turn, so every request's first chunk comes early."""
    active = list(streams)
    done = [False] * len(active)
    while not all(done):
        for i, stream in enumerate(active):
            if done[i]:
                continue
            step: list[AudioChunk | None] = [None] * len(active)
            chunk = next(stream, None)
            if chunk is None or chunk.last:
                done[i] = True
            if chunk is not None:
                step[i] = chunk
                yield step


def single(batch: Iterator[list[AudioChunk | None]]) -> Iterator[AudioChunk]:
    """One request's chunks out of a :meth:`AudioBackend.stream_batch` of one."""
    for step in batch:
        if step[0] is not None:
            yield step[0]


# -- helpers every caller uses ---------------------------------------------------------------------


def render(backend: AudioBackend, request: AudioRequest) -> tuple[np.ndarray, Anchor | None]:
    """Run :meth:`AudioBackend.stream` to the end: the whole segment and its anchor."""
    parts: list[np.ndarray] = []
    anchor = None
    for chunk in backend.stream(request):
        parts.append(np.asarray(chunk.audio, dtype=np.float32))
        if chunk.last:
            anchor = chunk.anchor
    if not parts:
        raise BackendError(f"{backend.name} produced no audio")
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), anchor


class _Stored(Struct):
    kind: str
    data: str
    """base64 of ``Anchor.to_bytes()``."""


def anchor_to_metadata(anchor: Anchor) -> bytes:
    """An anchor as the bytes of a WAV metadata chunk (any backend's anchor)."""
    return msgspec.json.encode(_Stored(anchor.kind, base64.b64encode(anchor.to_bytes()).decode("ascii")))


def anchor_from_metadata(backend: AudioBackend, metadata: bytes) -> Anchor | None:
    """The anchor stored by :func:`anchor_to_metadata`, if it is ``backend``'s kind; else None.

    ValueError when the metadata is there but damaged."""
    try:
        stored = msgspec.json.decode(metadata, type=_Stored)
        data = base64.b64decode(stored.data, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"the stored melodic anchor is damaged: {exc}") from None
    if stored.kind != backend.kind:
        log.info("the stored anchor is a %s anchor; %s continues from the audio instead", stored.kind,
                 backend.name)  # fmt: skip
        return None
    return backend.anchor_from_bytes(data)


def continue_from(
    backend: AudioBackend, metadata: bytes | None, audio: np.ndarray, sample_rate: int
) -> tuple[Anchor | None, np.ndarray | None]:
    """What continuing a recording hands ``backend`` (``render --continue-from F.wav``): the anchor
    stored in the recording's metadata when it is of ``backend``'s kind, and the recording's last
    :data:`CONTEXT_SECONDS` as context (stereo, :data:`SAMPLE_RATE`). ValueError when the audio
    cannot be used."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the recording is {sample_rate} Hz; continuing needs {SAMPLE_RATE} Hz audio")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.shape[1] != CHANNELS:
        audio = np.repeat(audio[:, :1], CHANNELS, axis=1)
    audio = audio[-round(CONTEXT_SECONDS * SAMPLE_RATE) :]
    anchor = None
    if metadata is not None:
        try:
            anchor = anchor_from_metadata(backend, metadata)
        except ValueError as exc:
            log.warning("%s; continuing from the recording's audio", exc)
    else:
        log.info("the recording holds no melodic anchor; continuing from its audio")
    return anchor, (audio if audio.shape[0] else None)
