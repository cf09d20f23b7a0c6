"""Each player's music over a WebSocket: the wire format, the per-player hub, the sink, the server.

One connection carries one player's stream (``ws://HOST:PORT/PLAYER``):

1. a text frame ``{"type": "hello", ...}`` announcing the format (``opus``, ``flac`` or ``pcm16``),
   its sample rate and channels, the codec's header (``extradata``, base64) and the stream
   position the connection starts at;
2. binary frames, each one packet: 8 bytes, little-endian, the stream position (frames at 32 kHz
   since the player's session began) of its first sample, then the payload (an Opus packet, a
   FLAC frame, or interleaved little-endian int16);
3. text frames ``{"type": "segment", "frame": F, ...}``: segment F of the stream begins there (its
   scene, description, fallbacks), so the listener can say what plays when;
4. ``{"type": "end", "reason": ...}`` before the server closes a stream that ended.

The client picks the format with ``?format=`` (default ``opus``; ``pcm16`` needs no codec
library). Each player has its own token, ``base64url(HMAC-SHA256(secret, player))[:22]``, sent as
``Authorization: Bearer TOKEN`` or ``?token=``; a wrong one is refused at the handshake (HTTP 401),
an unknown player with 404, so a client can tell "wait for the player" from "wrong token".

A slow connection never holds the music back: each has a bounded queue (2 s), and when it is full
the oldest packets are dropped and counted (the client sees the jump in positions).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import http
import logging
import struct
import threading
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np

from metabgm_edge.audio.interface import CHANNELS, SAMPLE_RATE
from metabgm_edge.errors import MetabgmError
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.sinks import FileSink
from metabgm_edge.state import PLAYER_ID

log = logging.getLogger(__name__)

FORMATS: Final = ("opus", "flac", "pcm16")
BLOCK_FRAMES: Final = 640
"""20 ms at 32 kHz: what the stream sink pulls from the ring per tick (one Opus frame)."""
QUEUE_SECONDS: Final = 2.0
PREROLL_SECONDS: Final = 0.5
"""A new connection first gets this much of the music just played, so its buffer fills at once."""
OPUS_RATE: Final = 48000
HEADER = struct.Struct("<Q")


class StreamError(MetabgmError):
    """The audio stream cannot be set up (a codec missing, a bad address)."""


def player_token(secret: bytes, player: str) -> str:
    """The token that opens ``player``'s stream (22 characters, 132 bits)."""
    digest = hmac.new(secret, player.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:22]


# -- codecs -----------------------------------------------------------------------------------------


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise StreamError(
            f"Opus and FLAC need PyAV ({exc}): pip install 'metabgm-edge[listen]', or use pcm16"
        ) from None
    return av


def available_formats() -> list[str]:
    try:
        _av()
    except StreamError:
        return ["pcm16"]
    return list(FORMATS)


class Encoder:
    """float32 blocks (frames, channels) at 32 kHz in; (position, payload) packets out."""

    def __init__(self, fmt: str, start: int, *, bitrate: int = 128_000) -> None:
        if fmt not in FORMATS:
            raise StreamError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.format = fmt
        self.position = start
        """Stream position of the next sample a packet will start with."""
        self.rate = SAMPLE_RATE
        self._ctx: Any = None
        self._resampler: Any = None
        if fmt == "pcm16":
            return
        av = _av()
        ctx = av.CodecContext.create("libopus" if fmt == "opus" else "flac", "w")
        self.rate = OPUS_RATE if fmt == "opus" else SAMPLE_RATE
        ctx.sample_rate = self.rate
        ctx.layout = "stereo"
        ctx.format = "flt" if fmt == "opus" else "s16"
        if fmt == "opus":
            ctx.bit_rate = bitrate
        ctx.open()
        self._ctx = ctx
        self._resampler = av.AudioResampler(
            format=ctx.format.name, layout="stereo", rate=self.rate, frame_size=ctx.frame_size or None
        )

    def hello(self) -> dict[str, Any]:
        extradata = self._ctx.extradata if self._ctx is not None else None
        return {
            "type": "hello",
            "version": 1,
            "format": self.format,
            "sample_rate": self.rate,
            "stream_rate": SAMPLE_RATE,
            "channels": CHANNELS,
            "extradata": base64.b64encode(bytes(extradata)).decode() if extradata else None,
            "position": self.position,
        }

    def encode(self, block: np.ndarray) -> list[tuple[int, bytes]]:
        if self._ctx is None:
            pcm = np.clip(block, -1.0, 1.0)
            data = (pcm * 32767.0).astype("<i2").tobytes()
            out = [(self.position, data)]
            self.position += block.shape[0]
            return out
        av = _av()
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block, dtype=np.float32).reshape(1, -1), format="flt", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        packets: list[tuple[int, bytes]] = []
        for resampled in self._resampler.resample(frame):
            for packet in self._ctx.encode(resampled):
                packets.append((self.position, bytes(packet)))
                self.position += round((packet.duration or resampled.samples) * SAMPLE_RATE / self.rate)
        return packets


class Decoder:
    """The client's side of :class:`Encoder`: payloads in, float32 (frames, 2) at 32 kHz out."""

    def __init__(self, hello: dict[str, Any]) -> None:
        self.format = str(hello.get("format"))
        if self.format not in FORMATS:
            raise StreamError(f"the server sends {self.format!r}, which this client cannot play")
        if int(hello.get("channels", 0)) != CHANNELS:
            raise StreamError(
                f"the server sends {hello.get('channels')} channels; this client plays {CHANNELS}"
            )
        self._ctx: Any = None
        self._resampler: Any = None
        if self.format == "pcm16":
            return
        av = _av()
        ctx = av.CodecContext.create("libopus" if self.format == "opus" else "flac", "r")
        ctx.sample_rate = int(hello["sample_rate"])
        ctx.layout = "stereo"
        if hello.get("extradata"):
            ctx.extradata = base64.b64decode(hello["extradata"])
        self._ctx = ctx
        self._resampler = av.AudioResampler(format="flt", layout="stereo", rate=SAMPLE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        if self._ctx is None:
            if len(payload) % (2 * CHANNELS):
                raise StreamError(f"a pcm16 packet of {len(payload)} bytes is not whole frames")
            pcm = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32767.0
            return pcm.reshape(-1, CHANNELS)
        av = _av()
        parts = [
            g.to_ndarray().reshape(-1, CHANNELS)
            for f in self._ctx.decode(av.Packet(payload))
            for g in self._resampler.resample(f)
        ]
        if not parts:
            return np.zeros((0, CHANNELS), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


# -- the per-player hub -------------------------------------------------------------------------------


class Subscriber:
    """One connection's view of a player's stream: a bounded queue of blocks and marks."""

    def __init__(self, capacity_frames: int) -> None:
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[str, int, Any]] = collections.deque()
        self._frames = 0
        self.capacity = capacity_frames
        self.dropped_frames = 0
        self.closed = False
        self.end_reason: str | None = None

    def offer(self, kind: str, position: int, payload: Any) -> None:
        with self._cond:
            if self.closed:
                return
            if kind == "audio":
                self._items.append((kind, position, payload))
                self._frames += payload.shape[0]
                while self._frames > self.capacity:  # the connection is too slow: drop the oldest
                    old = self._items.popleft()
                    if old[0] == "audio":
                        self._frames -= old[2].shape[0]
                        self.dropped_frames += old[2].shape[0]
            else:
                self._items.append((kind, position, payload))
            self._cond.notify()

    def take(self, timeout: float) -> list[tuple[str, int, Any]]:
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._frames = 0
            return items

    def close(self, reason: str) -> None:
        with self._cond:
            self.closed = True
            self.end_reason = reason
            self._cond.notify_all()


class PlayerStream:
    """A player's music as it leaves the session: blocks pushed by the sink, fanned out to every
    connection listening (usually one), with a short history for connections that join."""

    def __init__(self, player: str, *, preroll_s: float = PREROLL_SECONDS) -> None:
        self.player = player
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._history: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._history_frames = 0
        self._preroll = round(preroll_s * SAMPLE_RATE)
        self._marks: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=8)
        self.position = 0
        """Frames pushed since the session began (the stream position of the next block)."""
        self.connections_total = 0
        self.ended: str | None = None
        self.silence_frames = 0
        """Frames of silence the sink played because its ring ran dry: the session's output frame
        ``n`` is stream frame ``base + n + silence_frames``."""
        self.base = 0
        """Stream frames pushed before the current session's sink began (a session that replaced
        a failed one goes on from where it stopped)."""

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def push(self, block: np.ndarray) -> None:
        with self._lock:
            position = self.position
            self.position += block.shape[0]
            self._history.append((position, block))
            self._history_frames += block.shape[0]
            while self._history_frames - self._history[0][1].shape[0] >= self._preroll:
                self._history_frames -= self._history.popleft()[1].shape[0]
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.offer("audio", position, block)

    def mark(self, frame: int, info: dict[str, Any]) -> None:
        """Segment ``info`` begins at stream frame ``frame``."""
        with self._lock:
            self._marks.append((frame, info))
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.offer("mark", frame, info)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(round(QUEUE_SECONDS * SAMPLE_RATE))
        with self._lock:
            if self.ended is not None:
                sub.close(self.ended)
                return sub
            start = self._history[0][0] if self._history else self.position
            for position, block in self._history:
                sub.offer("audio", position, block)
            marks = list(self._marks)
            playing = [i for i, (frame, _) in enumerate(marks) if frame <= start]
            for frame, info in marks[playing[-1] if playing else 0 :]:  # the one playing now, those to come
                sub.offer("mark", frame, info)
            self._subscribers.add(sub)
            self.connections_total += 1
        log.debug("player %s: a listener joined at frame %d", self.player, start)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def end(self, reason: str) -> None:
        with self._lock:
            self.ended = reason
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for sub in subscribers:
            sub.close(reason)


class StreamSink(FileSink):
    """The sink of a session whose listener is remote: the ring pulled at the device's pace (like
    a file sink) into the player's :class:`PlayerStream`, 20 ms at a time."""

    def __init__(self, ring: RingBuffer, stream: PlayerStream, *, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(ring, sample_rate=sample_rate, wav_path=None, paced=True, block_frames=BLOCK_FRAMES)
        self.stream = stream
        stream.base = stream.position
        stream.silence_frames = 0
        self.kind = "stream"  # type: ignore[assignment]

    def _emit(self, frames: np.ndarray) -> None:
        super()._emit(frames)
        self.stream.silence_frames = self.ring.underrun_frames
        self.stream.push(frames.copy())


# -- the server ----------------------------------------------------------------------------------------


class AudioServer:
    """Serves each player's :class:`PlayerStream` at ``ws://HOST:PORT/PLAYER``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        secret: bytes,
        max_connections: int = 256,
        default_format: str = "opus",
    ) -> None:
        if len(secret) < 16:
            raise StreamError("the audio secret must be at least 16 bytes")
        if default_format not in FORMATS:
            raise StreamError(f"unknown format {default_format!r}: use one of {', '.join(FORMATS)}")
        self.host = host
        self.port = port
        self.secret = secret
        self.max_connections = max_connections
        self.default_format = default_format
        self._streams: dict[str, PlayerStream] = {}
        self._lock = threading.Lock()
        self._active = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.refused: collections.Counter[str] = collections.Counter()

    def token(self, player: str) -> str:
        return player_token(self.secret, player)

    def url(self, player: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/{player}"

    def add(self, player: str, stream: PlayerStream) -> None:
        with self._lock:
            self._streams[player] = stream

    def remove(self, player: str, reason: str = "the player left") -> None:
        with self._lock:
            stream = self._streams.pop(player, None)
        if stream is not None:
            stream.end(reason)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._active

    def start(self) -> None:
        import socket

        from websockets.sync.server import serve

        try:
            sock = socket.create_server((self.host, self.port), family=_family(self.host), backlog=128)
        except OSError as exc:
            raise StreamError(
                f"cannot listen for players' audio on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = sock.getsockname()[1]
        self._server = serve(
            self._handle,
            sock=sock,
            compression=None,
            max_size=4096,
            ping_interval=10.0,
            ping_timeout=20.0,
            process_request=self._process_request,
            server_header="metabgm-edge",
            logger=logging.getLogger(f"{__name__}.websockets"),
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metabgm-audio-server", daemon=True
        )
        self._thread.start()
        log.info("players' audio at ws://%s:%d/PLAYER", self.host, self.port)

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams.items())
            self._streams.clear()
        for _, stream in streams:
            stream.end("the server is shutting down")
        if self._server is not None:
            stopper = threading.Thread(target=self._server.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=5.0)
            self._server = None

    # -- one connection --

    def _parse(self, request: Any) -> tuple[str, str | None, str]:
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        player = parts.path.strip("/")
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else query.get("token")
        return player, token, query.get("format", self.default_format)

    def _process_request(self, conn: Any, request: Any) -> Any:
        player, token, fmt = self._parse(request)
        if not PLAYER_ID.fullmatch(player):
            return self._refuse(conn, http.HTTPStatus.NOT_FOUND, "bad_path", "the path must be /PLAYER\n")
        if token is None or not hmac.compare_digest(token.encode(), self.token(player).encode()):
            return self._refuse(conn, http.HTTPStatus.UNAUTHORIZED, "bad_token", "missing or wrong token\n")
        with self._lock:
            known = player in self._streams
            full = self._active >= self.max_connections
        if not known:
            return self._refuse(conn, http.HTTPStatus.NOT_FOUND, "unknown_player", "no such player (yet)\n")
        if full:
            return self._refuse(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, "too_many_connections", "busy\n")
        if fmt not in available_formats():
            return self._refuse(conn, http.HTTPStatus.BAD_REQUEST, "bad_format",
                                f"format must be one of {', '.join(available_formats())}\n")  # fmt: skip
        return None

    def _refuse(self, conn: Any, status: http.HTTPStatus, reason: str, body: str) -> Any:
        self.refused[reason] += 1
        log.debug("audio: refused %s (%s)", conn.remote_address, reason)
        return conn.respond(status, body)

    def _handle(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        player, _, fmt = self._parse(conn.request)
        with self._lock:
            stream = self._streams.get(player)
            self._active += 1
        try:
            if stream is None:  # left between the handshake and now
                conn.send(msgspec.json.encode({"type": "end", "reason": "the player left"}).decode())
                return
            sub = stream.subscribe()
            try:
                self._pump(conn, sub, fmt)
            finally:
                stream.unsubscribe(sub)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._active -= 1

    def _pump(self, conn: Any, sub: Subscriber, fmt: str) -> None:
        encoder: Encoder | None = None
        while True:
            items = sub.take(timeout=0.5)
            for kind, position, payload in items:
                if kind == "mark":
                    conn.send(msgspec.json.encode({"type": "segment", "frame": position, **payload}).decode())
                    continue
                if encoder is None:
                    encoder = Encoder(fmt, position)
                    conn.send(msgspec.json.encode(encoder.hello()).decode())
                elif position != encoder.position and fmt == "pcm16":
                    encoder.position = position  # packets were dropped: the client sees the jump
                for at, data in encoder.encode(payload):
                    conn.send(HEADER.pack(at) + data)
            if sub.closed and not items:
                conn.send(msgspec.json.encode({"type": "end", "reason": sub.end_reason}).decode())
                conn.close(1001, (sub.end_reason or "ended")[:100])
                return


def _family(host: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def read_packets(message: bytes) -> tuple[int, bytes]:
    """(stream position, payload) of one binary frame."""
    if len(message) < HEADER.size:
        raise StreamError(f"a binary frame of {len(message)} bytes has no header")
    return HEADER.unpack_from(message)[0], message[HEADER.size :]
