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


class _Channel:
    """One player's latest state and its recent messages (inside a :class:`LiveSource`)."""

    __slots__ = ("accepted", "first_at", "history", "latest", "latest_at")

    def __init__(self, history: int, now: float) -> None:
        import collections

        self.latest: SceneState | None = None
        self.latest_at = now
        self.first_at = now
        self.accepted = 0
        self.history: collections.deque[tuple[float, SceneState]] = collections.deque(maxlen=history)


class LiveSource(Source):
    """Base of sources fed by a receiving thread: keeps the latest valid state, per player.

    A receiving thread calls :meth:`_offer` with each raw message; valid ones become the latest
    state of the message's ``player`` (:data:`~metabgm_edge.state.DEFAULT_PLAYER` when it names
    none) and are also kept (at most ``history`` of them) for :meth:`drain`. Invalid ones are
    counted by reason and logged, rate-limited so a flood cannot fill the disk; they never replace
    the latest state. ``max_bytes`` bounds a message (subclasses may lower it).

    One session (``play``) follows one player: ``player`` names it, else the first one heard, and
    messages for others are ignored. A host of many sessions (``serve``) asks :meth:`players` and
    takes a :meth:`player_source` per player; a player not heard for ``forget_after`` seconds is
    forgotten, and at most ``max_players`` are kept at once (more are rejected, ``too_many_players``).
    """

    live = True

    def __init__(
        self,
        *,
        token: str | None = None,
        history: int = 4096,
        player: str | None = None,
        forget_after: float = 60.0,
        max_players: int = 64,
    ) -> None:
        super().__init__()
        import collections

        from metabgm_edge.sources.rejects import RejectLog
        from metabgm_edge.state import MAX_MESSAGE_BYTES, PLAYER_ID

        if player is not None and not PLAYER_ID.fullmatch(player):
            raise SourceError(f"player={player[:80]!r}: a player id is 1-64 of A-Z a-z 0-9 _ . -")
        if not 1.0 <= forget_after <= 86400.0:
            raise SourceError(f"forget={forget_after!r}: expected seconds from 1 to 86400")
        if not 1 <= max_players <= 4096:
            raise SourceError(f"max_players={max_players!r}: expected a count from 1 to 4096")
        self.token = token
        self.max_bytes = MAX_MESSAGE_BYTES
        self.forget_after = float(forget_after)
        self.max_players = int(max_players)
        self._history_size = history
        self._reject_log = RejectLog(logging.getLogger(type(self).__module__), lambda: self.uri)
        self._followed: str | None = player
        self._latest: SceneState | None = None
        self._latest_at: float | None = None
        self._history: collections.deque[tuple[float, SceneState]] = collections.deque(maxlen=history)
        self._channels: dict[str, _Channel] = {}
        self._forgotten = 0
        self._ignored_said = False
        self.serving_many = False
        """Set by a host of many sessions: every player is served, none is "followed"."""

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

    @property
    def followed(self) -> str | None:
        """The player a single session follows (None until one is heard, when none was named)."""
        with self._lock:
            return self._followed

    # -- many players -------------------------------------------------------------------------

    def players(self) -> list[str]:
        """The players heard within ``forget_after`` seconds, in the order they arrived. Players
        quiet for longer are forgotten here (their sessions should end)."""
        import time

        with self._lock:
            self._forget_locked(time.monotonic())
            return list(self._channels)

    def player_source(self, player: str) -> PlayerSource:
        """A source of one player's states (for one session among many); this source must be
        started (and closed) by whoever hosts the sessions."""
        return PlayerSource(self, player)

    def _forget_locked(self, now: float) -> None:
        gone = [p for p, ch in self._channels.items() if now - ch.latest_at > self.forget_after]
        for player in gone:
            del self._channels[player]
            self._forgotten += 1
            logging.getLogger(type(self).__module__).info(
                "%s: player %s not heard for %.0f s: forgotten", self.uri, player, self.forget_after
            )

    def _channel(self, player: str) -> _Channel | None:
        with self._lock:
            return self._channels.get(player)

    def _sample_of(self, state: SceneState, at: float) -> SceneState:
        """What :meth:`sample` makes of a kept state received at ``at`` (subclasses may age it)."""
        return state

    # -- receiving ----------------------------------------------------------------------------

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
            state, envelope = parse_message(raw, token=self.token)
        except MessageError as exc:
            return self._reject(exc.reason, exc.detail, peer)
        except Exception as exc:  # a validator bug must not stop the source; the reason says so
            return self._reject(
                "internal_error", f"validator failed: {type(exc).__name__}: {exc}", peer, True
            )
        if not self._accept(state, envelope.player):
            return self._reject(
                "too_many_players",
                f"{self.max_players} players are active already; raise ?max_players= if you need more",
                peer,
            )
        return state

    def _reject(self, reason: str, detail: str, peer: str = "", exc_info: bool = False) -> None:
        from metabgm_edge.sources.rejects import DETAIL_CHARS

        self._count(reason)
        message = f"rejected {reason} from {peer or '?'}: {detail[:DETAIL_CHARS]}"
        self._reject_log(reason, message, exc_info=exc_info)
        return None

    def _accept(self, state: SceneState, player: str | None = None) -> bool:
        """Keep a valid state as its player's latest; False (nothing kept) when it would be one
        player more than ``max_players``."""
        import time

        from metabgm_edge.state import DEFAULT_PLAYER

        now = time.monotonic()
        who = player or DEFAULT_PLAYER
        ignored = None
        with self._lock:
            channel = self._channels.get(who)
            if channel is None:
                self._forget_locked(now)
                if len(self._channels) >= self.max_players:
                    return False
                channel = self._channels[who] = _Channel(min(self._history_size, 512), now)
            self._received += 1
            self._accepted += 1
            channel.latest = state
            channel.latest_at = now
            channel.accepted += 1
            channel.history.append((now, state))
            if self._followed is None:
                self._followed = who
            if who == self._followed:
                self._latest = state
                self._latest_at = now
                self._history.append((now, state))
            elif not self._ignored_said and not self.serving_many:
                self._ignored_said = True
                ignored = self._followed
        if ignored is not None:
            logging.getLogger(type(self).__module__).info(
                "%s: this session follows player %s; states of other players (%s, ...) are kept apart "
                "and do not change its music (metabgm-edge serve plays for every player)",
                self.uri, ignored, who,
            )  # fmt: skip
        return True


class PlayerSource(LiveSource):
    """One player's states on a shared listener (:meth:`LiveSource.player_source`): what one
    session among many reads. It neither starts nor closes the listener."""

    def __init__(self, parent: LiveSource, player: str) -> None:
        super().__init__(player=player)
        self.parent = parent
        self.player = player
        self.uri = f"{parent.uri}#{player}"

    def sample(self, now: float) -> SceneState | None:
        channel = self.parent._channel(self.player)
        if channel is None or channel.latest is None:
            return None
        with self.parent._lock:
            state, at = channel.latest, channel.latest_at
        return self.parent._sample_of(state, at)

    def drain(self) -> list[tuple[float, SceneState]]:
        channel = self.parent._channel(self.player)
        if channel is None:
            return []
        with self.parent._lock:
            items = list(channel.history)
            channel.history.clear()
        return items

    @property
    def last_message_at(self) -> float | None:
        channel = self.parent._channel(self.player)
        return None if channel is None else channel.latest_at

    def stats(self) -> SourceStats:
        channel = self.parent._channel(self.player)
        n = 0 if channel is None else channel.accepted
        return SourceStats(received=n, accepted=n)

    def close(self) -> None:
        pass
