"""Where the player's state comes from.

Every source answers one question, :meth:`Source.sample`: what is the state at clock time
``now`` (seconds since the session started)? The sampler thread in
:mod:`metabgm_edge.acquisition` asks it once per sample period. Simulated and replayed sources
compute the answer from ``now`` and so run as fast as the clock goes; live sources return the
latest valid message they received and keep it when the sender goes quiet.

URIs:
    sim:NAME                a seeded simulated session (``metabgm-edge describe --help`` lists names)
    replay:FILE.jsonl       a recorded session (one message per line, each with "t" in seconds)
    udp://HOST:PORT         live messages, one JSON object per datagram
    ws://HOST:PORT          live messages, one JSON object per WebSocket text frame
    minecraft://HOST:PORT   a Minecraft server, through the bundled connector
Listeners bind to loopback unless another address is named, and accept ``?token=SECRET``
(messages must then carry "token") and ``?max_bytes=N``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

import msgspec

from metabgm_edge.errors import SourceError
from metabgm_edge.state import SceneState


class SourceStats(msgspec.Struct, kw_only=True):
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = msgspec.field(default_factory=dict)


class Source(ABC):
    """A stream of snapshots, asked for the state at a clock time."""

    uri: str = ""
    live: bool = False
    """True for sources that run in real time only (listeners, Minecraft)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._accepted = 0
        self._reasons: Counter[str] = Counter()

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open sockets, threads or processes. Called once before the first sample."""

    @abstractmethod
    def sample(self, now: float) -> SceneState | None:
        """The state at ``now`` seconds since start, or None when nothing is known yet."""

    @property
    def finished(self) -> bool:
        """True when a finite source (a replay) has nothing more to give."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything :meth:`start` opened. Safe to call twice."""

    def stats(self) -> SourceStats:
        with self._lock:
            return SourceStats(
                received=self._received,
                accepted=self._accepted,
                rejected=sum(self._reasons.values()),
                reasons=dict(self._reasons),
            )

    def _count(self, reason: str | None) -> None:
        """Count one received message: accepted when ``reason`` is None, else rejected for it."""
        with self._lock:
            self._received += 1
            if reason is None:
                self._accepted += 1
            else:
                self._reasons[reason] += 1

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(uri: str, *, seed: int = 0) -> Source:
    """Build (not start) the source named by ``uri``."""
    if uri.startswith("sim:"):
        from metabgm_edge.sources.sim import SimSource

        return SimSource(uri[4:], seed=seed)
    if uri.startswith("replay:"):
        from metabgm_edge.sources.replay import ReplaySource

        return ReplaySource(uri[7:])
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - urllib validates the port when it is read
    except ValueError:
        raise SourceError(f"{uri!r}: the port must be a number from 0 to 65535") from None
    if parts.scheme in ("udp", "ws"):
        from metabgm_edge.sources.net import UdpSource, WebSocketSource

        host, port, query = _endpoint(parts.hostname, parts.port, parts.query, uri)
        cls = UdpSource if parts.scheme == "udp" else WebSocketSource
        return cls(host, port, **query)
    if parts.scheme == "minecraft":
        from metabgm_edge.sources.minecraft import MinecraftSource

        host, port, query = _endpoint(parts.hostname, parts.port or 25565, parts.query, uri)
        return MinecraftSource(host, port, **query)
    raise SourceError(
        f"unknown source {uri!r}: use sim:NAME, replay:FILE.jsonl, udp://HOST:PORT, ws://HOST:PORT "
        "or minecraft://HOST:PORT"
    )


def _endpoint(host: str | None, port: int | None, query: str, uri: str) -> tuple[str, int, dict[str, str]]:
    if port is None:
        raise SourceError(f"{uri!r} needs a port, for example udp://127.0.0.1:7717")
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        params = {k: v[-1] for k, v in parsed.items()}
    except ValueError:
        raise SourceError(f"{uri!r}: cannot read the query string {query!r}") from None
    return host or "127.0.0.1", port, params


class LiveSource(Source):
    """Base of sources fed by a receiving thread: keeps the latest valid state.

    A receiving thread calls :meth:`_offer` with each raw message; valid ones become the latest
    state and are also kept (at most ``history`` of them) for :meth:`drain`. Invalid ones are
    counted by reason and logged, rate-limited so a flood cannot fill the disk; they never replace
    the latest state. ``max_bytes`` bounds a message (subclasses may lower it).
    """

    live = True

    def __init__(self, *, token: str | None = None, history: int = 4096) -> None:
        super().__init__()
        import collections

        from metabgm_edge.sources.rejects import RejectLog
        from metabgm_edge.state import MAX_MESSAGE_BYTES

        self.token = token
        self.max_bytes = MAX_MESSAGE_BYTES
        self._reject_log = RejectLog(logging.getLogger(type(self).__module__), lambda: self.uri)
        self._latest: SceneState | None = None
        self._latest_at: float | None = None
        self._history: collections.deque[tuple[float, SceneState]] = collections.deque(maxlen=history)

    def sample(self, now: float) -> SceneState | None:
        with self._lock:
            return self._latest

    def drain(self) -> list[tuple[float, SceneState]]:
        """Every valid message since the last call, as (monotonic time, state), oldest first."""
        with self._lock:
            items = list(self._history)
            self._history.clear()
        return items

    def close(self) -> None:
        """Log the summary of rejections not yet reported. Subclasses call this from their close."""
        self._reject_log.flush()

    @property
    def last_message_at(self) -> float | None:
        """time.monotonic() of the latest valid message, or None."""
        with self._lock:
            return self._latest_at

    def _offer(self, data: bytes | str, peer: str = "") -> SceneState | None:
        """Validate one message; returns the state, or None when rejected (counted, logged)."""
        from metabgm_edge.errors import MessageError
        from metabgm_edge.state import parse_message

        raw = data.encode() if isinstance(data, str) else bytes(data)
        if len(raw) > self.max_bytes:
            return self._reject("oversized", f"{len(raw)} bytes > max_bytes={self.max_bytes}", peer)
        if not isinstance(data, str):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return self._reject("invalid_utf8", f"not UTF-8 text: {exc.reason} at byte {exc.start}", peer)
        try:
            state, _ = parse_message(raw, token=self.token)
        except MessageError as exc:
            return self._reject(exc.reason, exc.detail, peer)
        except Exception as exc:  # a validator bug must not stop the source; the reason says so
            return self._reject(
                "internal_error", f"validator failed: {type(exc).__name__}: {exc}", peer, True
            )
        self._accept(state)
        return state

    def _reject(self, reason: str, detail: str, peer: str = "", exc_info: bool = False) -> None:
        from metabgm_edge.sources.rejects import DETAIL_CHARS

        self._count(reason)
        message = f"rejected {reason} from {peer or '?'}: {detail[:DETAIL_CHARS]}"
        self._reject_log(reason, message, exc_info=exc_info)
        return None

    def _accept(self, state: SceneState) -> None:
        import time

        now = time.monotonic()
        with self._lock:
            self._received += 1
            self._accepted += 1
            self._latest = state
            self._latest_at = now
            self._history.append((now, state))
