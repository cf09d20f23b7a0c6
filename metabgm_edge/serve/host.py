"""Many players' sessions in one process: one :class:`~metabgm_edge.scheduler.Session` per player.

A :class:`PlayerHost` owns the live source that every player's game sends to (``udp://``,
``ws://``, ``minecraft://``), the :class:`~metabgm_edge.serve.stream.AudioServer` the players
listen on, and one session per player the source has heard: the same session ``play`` runs
(acquisition, Algorithm 1, the two stages, the render, deadlines, fallbacks, the mixer), with the
player's states (:meth:`LiveSource.player_source`), the shared text and audio backends (in
``serve`` the Ray deployments, through :mod:`metabgm_edge.serve.remote`), and a sink that streams
the ring to the player's connections instead of a device. A player the source forgets (quiet for
``forget_after`` seconds) has its session stopped and its stream ended.

Nothing here imports Ray: ``serve`` wraps a host in a deployment; tests run one directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from metabgm_edge.audio import AudioBackend
from metabgm_edge.listener_profile import DEFAULT_PROFILE, Profile
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.serve.stream import AudioServer, PlayerStream, StreamSink
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import LiveSource
from metabgm_edge.text import TextBackend

log = logging.getLogger(__name__)

RESTART_AFTER_S: Final = 5.0
"""A failed session is replaced no sooner than this long after it started."""


class PlayerStatus(msgspec.Struct, kw_only=True):
    """What the operator sees of one player (one status line)."""

    player: str
    since: float
    """Seconds since the player's session started."""
    segments: int = 0
    deadline_misses: int = 0
    fallbacks: dict[str, int] = msgspec.field(default_factory=dict)
    scene: str = ""
    description: str = ""
    last_total_s: float = 0.0
    """The last segment's processing time (state to audio queued)."""
    processing_s: list[float] = msgspec.field(default_factory=list)
    """Every segment's processing time (for percentiles)."""
    listeners: int = 0
    stream_seconds: float = 0.0
    underruns: int = 0
    starvations: int = 0


class HostStatus(msgspec.Struct, kw_only=True):
    players: list[PlayerStatus]
    segments: int
    deadline_misses: int
    forgotten: int
    audio_connections: int
    refused: dict[str, int]
    source: dict[str, Any]
    pid: int


def scene_words(rec: SegmentRecord) -> str:
    state = rec.state
    words = f"{state.scene.biome}, {state.time.resolved_phase()}, {state.weather.state}"
    return words + (", combat" if rec.combat else "")


class _Player:
    def __init__(self, player: str, session: Session, stream: PlayerStream) -> None:
        self.player = player
        self.session = session
        self.stream = stream
        self.started = time.monotonic()
        self.status = PlayerStatus(player=player, since=0.0)
        self.index_base = 0
        """Segments of the sessions before this one on the same stream (the stream's numbering goes on)."""
        self.next_index = 0
        self.failure: str | None = None
        """Why the session ended by itself (None while it runs, or when it was stopped)."""
        self.thread = threading.Thread(target=self._run, name=f"metabgm-player-{player}", daemon=True)

    def _run(self) -> None:
        try:
            self.session.run()
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("player %s: the session failed", self.player)


class PlayerHost:
    """One session per player heard on ``source``; their audio on ``server``."""

    def __init__(
        self,
        source: LiveSource,
        text: TextBackend,
        audio: AudioBackend,
        server: AudioServer,
        *,
        options: PlayOptions | None = None,
        profile: Profile = DEFAULT_PROFILE,
        fallback_audio: Callable[[], AudioBackend] | None = None,
        poll: float = 0.25,
    ) -> None:
        self.source = source
        source.serving_many = True
        self.text = text
        self.audio = audio
        self.server = server
        self.options = options or PlayOptions()
        self.profile = profile
        self.fallback_audio = fallback_audio
        self.poll = poll
        self.on_segment: Callable[[str, SegmentRecord], None] | None = None
        self.on_join: Callable[[str], None] | None = None
        self._players: dict[str, _Player] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._forgotten = 0

    def start(self) -> None:
        self.source.start()
        self.server.start()
        self._thread = threading.Thread(target=self._watch, name="metabgm-players", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            players = list(self._players.values())
            self._players.clear()
        for p in players:
            p.session.stop()
        for p in players:
            p.thread.join(timeout=5.0)
        self.server.close()
        self.source.close()

    # -- players come and go ----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                heard = self.source.players()
                with self._lock:
                    known = set(self._players)
                for player in heard:
                    if player not in known:
                        self._join(player)
                    else:
                        self._restart_if_failed(player)
                for player in known - set(heard):
                    self._leave(player)
            except Exception:
                log.exception("the players' watcher failed; it goes on")

    def _restart_if_failed(self, player: str) -> None:
        """A session that ended by itself (a defect) is replaced by a new one on the same stream, so
        the player's connections stay and the music goes on (fallback ``session.restarted``)."""
        with self._lock:
            entry = self._players.get(player)
        if entry is None or entry.thread.is_alive() or self._stop.is_set():
            return
        if time.monotonic() - entry.started < RESTART_AFTER_S:  # one that fails at once: not in a loop
            return
        log.warning("player %s: the session ended by itself (%s); a new one starts", player,
                    entry.failure or "no error")  # fmt: skip
        status = entry.status
        status.fallbacks["session.restarted"] = status.fallbacks.get("session.restarted", 0) + 1
        self._join(player, stream=entry.stream, status=status, index_base=entry.next_index)

    def _join(self, player: str, *, stream: PlayerStream | None = None, status: PlayerStatus | None = None,
              index_base: int = 0) -> None:  # fmt: skip
        again = stream is not None
        stream = stream if stream is not None else PlayerStream(player)

        def sink(ring: RingBuffer, sample_rate: int) -> StreamSink:
            return StreamSink(ring, stream, sample_rate=sample_rate)

        session = Session(
            self.source.player_source(player),
            self.text,
            self.audio,
            options=self.options,
            profile=self.profile,
            use_device=False,
            fallback_audio=self.fallback_audio() if self.fallback_audio is not None else None,
            sink_factory=sink,
        )
        entry = _Player(player, session, stream)
        if status is not None:
            entry.status = status
        entry.index_base = entry.next_index = index_base
        session.on_segment = lambda rec, e=entry: self._segment(e, rec)
        if not again:
            self.server.add(player, stream)
        with self._lock:
            self._players[player] = entry
        entry.thread.start()
        if again:
            return
        log.info(
            "player %s joined: %s (token %s)", player, self.server.url(player), self.server.token(player)
        )
        if self.on_join is not None:
            self.on_join(player)

    def _leave(self, player: str) -> None:
        with self._lock:
            entry = self._players.pop(player, None)
        if entry is None:
            return
        self._forgotten += 1
        entry.session.stop()
        self.server.remove(player, "the player left the game")
        entry.thread.join(timeout=5.0)
        st = entry.status
        log.info(
            "player %s left after %d segments (%d deadline misses)", player, st.segments, st.deadline_misses
        )

    def _segment(self, entry: _Player, rec: SegmentRecord) -> None:
        session = entry.session
        stream = entry.stream
        start = session.last_start_frame
        frame = stream.position if start is None else stream.base + start + stream.silence_frames
        st = entry.status
        st.segments += 1
        st.deadline_misses += int(rec.missed_deadline)
        for reason in rec.fallbacks:
            st.fallbacks[reason] = st.fallbacks.get(reason, 0) + 1
        st.scene = scene_words(rec)
        st.description = rec.description
        st.last_total_s = rec.timings.get("total", 0.0)
        st.processing_s.append(round(st.last_total_s, 4))
        index = entry.index_base + rec.index
        entry.next_index = index + 1
        entry.stream.mark(
            frame,
            {
                "index": index,
                "trigger": rec.trigger,
                "scene": st.scene,
                "biome": rec.state.scene.biome,
                "combat": rec.combat,
                "description": rec.description,
                "join": rec.join,
                "fallbacks": rec.fallbacks,
                "missed_deadline": rec.missed_deadline,
                "processing_s": round(st.last_total_s, 3),
            },
        )
        if self.on_segment is not None:
            self.on_segment(entry.player, rec)

    # -- what the operator sees ---------------------------------------------------------------------

    def players(self) -> list[str]:
        with self._lock:
            return list(self._players)

    def status(self) -> HostStatus:
        import os

        with self._lock:
            entries = list(self._players.values())
        out = []
        for e in entries:
            st = msgspec.structs.replace(e.status)
            st.since = round(time.monotonic() - e.started, 2)
            st.listeners = e.stream.listeners
            st.stream_seconds = round(e.stream.position / e.session.audio.sample_rate, 2)
            st.starvations = e.session.mixer.stats.starvations
            st.fallbacks = dict(st.fallbacks)
            st.processing_s = list(st.processing_s)
            out.append(st)
        return HostStatus(
            players=out,
            segments=sum(p.segments for p in out),
            deadline_misses=sum(p.deadline_misses for p in out),
            forgotten=self._forgotten,
            audio_connections=self.server.connections,
            refused=dict(self.server.refused),
            source=msgspec.to_builtins(self.source.stats()),
            pid=os.getpid(),
        )


def status_line(p: PlayerStatus) -> str:
    """One line per player, as ``serve`` prints them."""
    fb = ",".join(f"{k}:{v}" for k, v in sorted(p.fallbacks.items())) or "-"
    return (
        f"{p.player:<16} {p.segments:4d} seg {p.deadline_misses:3d} late  last {p.last_total_s:5.2f} s  "
        f"{p.listeners} listening  fallbacks {fb:<24} {p.scene:<32} | {p.description[:60]}"
    )
