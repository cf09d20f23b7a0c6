"""``metabgm-edge listen ws://HOST:PORT/PLAYER``: the player's side of ``serve``.

The stream (see :mod:`metabgm_edge.serve.stream`) is decoded into the same lock-free ring buffer
and device sink ``play`` uses (or a paced file sink with ``--out`` and no device). The ring is the
jitter buffer: playback starts once ``buffer`` seconds are in, it holds at most ``max_buffer``
seconds (what does not fit is dropped and counted), and when the network stalls long enough for it
to run dry, playback waits until it has ``buffer`` seconds again instead of stuttering. When the
connection drops the client reconnects with backoff (0.5 s doubling to 5 s) and the music goes on
from where the server is; a server that does not know the player yet (HTTP 404) is asked again, a
wrong token (HTTP 401) ends the client with one clear line.

This module needs websockets and numpy (PyAV for Opus and FLAC, else it asks for pcm16); it
never imports Ray.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
import numpy as np

from metabgm_edge.audio.interface import CHANNELS, SAMPLE_RATE
from metabgm_edge.errors import MetabgmError
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.sinks import Sink, open_sink
from metabgm_edge.serve.stream import Decoder, StreamError, available_formats, read_packets
from metabgm_edge.state import PLAYER_ID

log = logging.getLogger(__name__)

BACKOFF_MAX: Final = 5.0
LOSS_THRESHOLD: Final = 1000


class ListenError(MetabgmError):
    """The stream cannot be listened to (wrong token, bad address)."""


class Heard(msgspec.Struct, kw_only=True):
    """One segment as the listener heard it."""

    index: int
    at: float
    """Seconds of playback (the WAV's time) at which its music began."""
    heard_monotonic: float
    """time.monotonic() when its first frame reached the sink (plus the device's latency)."""
    info: dict[str, Any]


class ListenStats(msgspec.Struct, kw_only=True):
    seconds: float = 0.0
    """Playback time, silence included."""
    received_seconds: float = 0.0
    packets: int = 0
    bytes: int = 0
    format: str = ""
    connections: int = 0
    reconnects: int = 0
    lost_frames: int = 0
    """Frames the stream skipped (the server dropped them for a slow connection, or a reconnect)."""
    overflow_frames: int = 0
    """Frames that did not fit the buffer (dropped here)."""
    underruns: int = 0
    underrun_seconds: float = 0.0
    rebuffers: int = 0
    sink: str = ""
    segments: list[Heard] = msgspec.field(default_factory=list)


class ListenClient:
    """Plays one player's stream until ``duration`` seconds of playback, :meth:`stop` or Ctrl-C."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        out: str | None = None,
        duration: float | None = None,
        device: int | str | None = None,
        use_device: bool = True,
        fmt: str | None = None,
        buffer: float = 0.4,
        max_buffer: float = 2.0,
    ) -> None:
        parts = urlsplit(url)
        player = parts.path.strip("/")
        if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.port is None:
            raise ListenError(f"{url!r}: expected ws://HOST:PORT/PLAYER")
        if not PLAYER_ID.fullmatch(player):
            raise ListenError(f"{url!r}: the path must be the player's id (1-64 of A-Z a-z 0-9 _ . -)")
        if not 0.05 <= buffer < max_buffer <= 30.0:
            raise ListenError(f"need 0.05 <= buffer < max_buffer <= 30 s, got {buffer} and {max_buffer}")
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        self.token = token or query.pop("token", None)
        self.format = fmt or query.pop("format", None) or available_formats()[0]
        if self.format not in available_formats():
            raise ListenError(
                f"format {self.format!r} is not available here: use {', '.join(available_formats())}"
            )
        query["format"] = self.format
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        self.player = player
        self.out = out
        self.duration = duration
        self.device = device
        self.use_device = use_device
        self.buffer_frames = round(buffer * SAMPLE_RATE)
        self.ring = RingBuffer(round(max_buffer * SAMPLE_RATE), CHANNELS)
        self.stats = ListenStats(format=self.format)
        self.on_segment: Callable[[Heard], None] | None = None
        self._stop = threading.Event()
        self._conn: Any = None
        self._lock = threading.Lock()
        self._marks: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=64)
        """Segments announced: (stream frame, info), waiting for their audio."""
        self._placed: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        """Segments whose first frame is in the ring: (ring frame, info), waiting to be heard."""
        self._staged: collections.deque[np.ndarray] = collections.deque()
        self._staged_frames = 0
        self._rebuffering = True
        self._expected: int | None = None
        self._sink: Sink | None = None
        self._heard_index = 0
        self._last_index = -1
        """The session's index of the last segment announced (a reconnect repeats the current one)."""
        self.fatal: str | None = None

    # -- running --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the connection failed", exc_info=True)

    def run(self) -> ListenStats:
        self._sink = sink = open_sink(self.ring, sample_rate=SAMPLE_RATE, wav_path=self.out,
                                      use_device=self.use_device, device=self.device, paced=True)  # fmt: skip
        self.stats.sink = getattr(sink, "kind", type(sink).__name__)
        receiver = threading.Thread(target=self._receive_loop, name="metabgm-listen", daemon=True)
        receiver.start()
        started = False
        try:
            while not self._stop.is_set():
                if not started and self.ring.available_frames >= min(
                    self.buffer_frames, self.ring.capacity // 2
                ):
                    sink.start()
                    started = True
                if started:
                    self._account(sink)
                    if self.duration is not None and sink.stats().frames >= self.duration * SAMPLE_RATE:
                        break
                if self.fatal is not None:
                    break
                time.sleep(0.01)
        except KeyboardInterrupt:
            log.info("stopped by Ctrl-C")
        finally:
            self.stop()
            receiver.join(timeout=3.0)
            sink.stop(drain=False)
            st = sink.stats()
            self.stats.seconds = st.frames / SAMPLE_RATE
            self.stats.underruns = st.ring_underruns
            self.stats.underrun_seconds = st.ring_underrun_frames / SAMPLE_RATE
            self.stats.overflow_frames = self.ring.overflow_frames
        if self.fatal is not None:
            raise ListenError(self.fatal)
        return self.stats

    def _account(self, sink: Sink) -> None:
        """Say which segments have started playing (by the ring's read position)."""
        played = self.ring.frames_read
        latency = getattr(sink.stats(), "latency_s", 0.0)
        while True:
            with self._lock:
                if not self._placed or self._placed[0][0] > played:
                    return
                ring_frame, info = self._placed.popleft()
            st = sink.stats()
            # The sink's frame count includes silence; this segment began (played - ring_frame) ago.
            at = max(0.0, (st.frames - (played - ring_frame)) / SAMPLE_RATE)
            heard = Heard(
                index=self._heard_index, at=at, heard_monotonic=time.monotonic() + latency, info=info
            )
            self._heard_index += 1
            self.stats.segments.append(heard)
            if self.on_segment is not None:
                self.on_segment(heard)

    # -- the network side -----------------------------------------------------------------------

    def _receive_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        backoff = 0.5
        outage_said = False
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while not self._stop.is_set():
            try:
                with connect(self.url, additional_headers=headers, open_timeout=5.0, close_timeout=1.0,
                             max_size=1 << 20, compression=None) as conn:  # fmt: skip
                    self._conn = conn
                    if self.stats.connections:
                        self.stats.reconnects += 1
                        log.info("reconnected to %s", self.url)
                    self.stats.connections += 1
                    backoff, outage_said = 0.5, False
                    self._session(conn)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401:
                    self.fatal = (
                        f"{self.url}: the server refused the token for player {self.player} (HTTP 401)"
                    )
                    return
                why = (
                    f"the server has no player {self.player} (yet): waiting for its game to send a state"
                    if status == 404
                    else f"the server answered HTTP {status}"
                )
                if not outage_said:
                    log.warning("%s: %s", self.url, why)
                    outage_said = True
            except (ConnectionClosed, OSError, TimeoutError, StreamError) as exc:
                if self._stop.is_set():
                    return
                if not outage_said:
                    log.warning("%s: connection lost (%s); reconnecting", self.url, exc or type(exc).__name__)
                    outage_said = True
            finally:
                self._conn = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _session(self, conn: Any) -> None:
        decoder: Decoder | None = None
        for message in conn:
            if self._stop.is_set():
                return
            if isinstance(message, str):
                info = msgspec.json.decode(message)
                kind = info.get("type") if isinstance(info, dict) else None
                if kind == "hello":
                    decoder = Decoder(info)
                    self._expected = None
                    log.info(
                        "listening to %s (%s, %d Hz)",
                        self.player,
                        info.get("format"),
                        info.get("sample_rate"),
                    )
                elif kind == "segment":
                    index = info.get("index")
                    if isinstance(index, int) and index <= self._last_index:
                        continue  # announced before a reconnect: said once
                    self._last_index = index if isinstance(index, int) else self._last_index
                    with self._lock:
                        self._marks.append((int(info.get("frame", 0)), info))
                elif kind == "end":
                    log.info("%s: the stream ended: %s", self.url, info.get("reason"))
                    return
                continue
            if decoder is None:
                raise StreamError("audio before the hello frame")
            position, payload = read_packets(message)
            audio = decoder.decode(payload)
            self.stats.packets += 1
            self.stats.bytes += len(message)
            if audio.shape[0]:
                self._arrive(position, audio)

    def _arrive(self, position: int, audio: np.ndarray) -> None:
        # A codec's resampler may hold back a few hundred frames at the start: only a real jump counts.
        if self._expected is not None and position > self._expected + LOSS_THRESHOLD:
            self.stats.lost_frames += position - self._expected
        self._expected = position + audio.shape[0]
        self.stats.received_seconds += audio.shape[0] / SAMPLE_RATE
        ring = self.ring
        # The jitter buffer: after the ring ran dry, hold back until `buffer` seconds are here.
        if not self._rebuffering and ring.available_frames == 0 and self._sink is not None and ring.underruns:
            self._rebuffering = True
            self.stats.rebuffers += 1
        self._staged.append(audio)
        self._staged_frames += audio.shape[0]
        if self._rebuffering and self._staged_frames + ring.available_frames < self.buffer_frames:
            self._place(position, audio)
            return
        self._rebuffering = False
        while self._staged:
            block = self._staged.popleft()
            self._staged_frames -= block.shape[0]
            ring.write(block)
        self._place(position, audio)

    def _place(self, position: int, audio: np.ndarray) -> None:
        """Marks whose frame falls in this block get the ring frame where it will be written."""
        ring_end = self.ring.frames_written + self._staged_frames  # where the staged audio will go
        block_start = ring_end - audio.shape[0]
        with self._lock:
            while self._marks and self._marks[0][0] < position + audio.shape[0]:
                frame, info = self._marks.popleft()
                self._placed.append((block_start + max(0, frame - position), info))
