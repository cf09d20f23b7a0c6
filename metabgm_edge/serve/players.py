"""Simulated players for ``bench serve`` and the tests: each one a seeded simulator of its own
scene (``sim:NAME``) sending its states, with its ``player`` id, to a server's live source over
UDP, five times a second, as a game mod would. A player can be scripted to be attacked at a known
moment (the scene-change latency is measured from it)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Final
from urllib.parse import urlsplit

import msgspec

from metabgm_edge.sources.sim import SimSource
from metabgm_edge.state import Attacked, Hostile, SceneState

log = logging.getLogger(__name__)

SCENES: Final = ("forest", "desert", "nether", "snow", "ocean", "cave", "storm", "nightfall")
"""Scenes without combat of their own (a scripted attack is then the only combat start)."""


def under_attack(state: SceneState) -> SceneState:
    """The same place, with a zombie at arm's length that just hit the player."""
    return msgspec.structs.replace(
        state,
        hostiles=[Hostile(name="zombie", distance=1.5)],
        attacked=Attacked(damage=3.0, attacker="zombie", seconds_ago=0.2),
    )


class SimPlayer:
    def __init__(self, player: str, scene: str, *, seed: int = 0) -> None:
        self.player = player
        self.scene = scene
        self.sim = SimSource(scene, seed=seed)
        self.attack_at: float | None = None
        """time.monotonic() from which the player is under attack (None: never)."""
        self.attacked_since: float | None = None
        """When the first attacked state was sent."""
        self.biomes: set[str] = set()
        self.sent = 0
        self.paused = False


class SimPlayers:
    """Sends every player's state to ``target`` (``udp://HOST:PORT``) every ``period`` seconds."""

    def __init__(self, target: str, players: list[SimPlayer], *, period: float = 0.2) -> None:
        parts = urlsplit(target)
        if parts.scheme != "udp" or parts.port is None:
            raise ValueError(f"simulated players send to udp://HOST:PORT, not {target!r}")
        self.address = (parts.hostname or "127.0.0.1", parts.port)
        self.players = players
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metabgm-sim-players", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._sock.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            for p in self.players:
                if p.paused:
                    continue
                state = p.sim.sample(now - self._t0)
                if state is None:
                    continue
                if p.attack_at is not None and now >= p.attack_at:
                    state = under_attack(state)
                    if p.attacked_since is None:
                        p.attacked_since = now
                p.biomes.add(state.scene.biome)
                body = msgspec.to_builtins(state)
                body["player"] = p.player
                try:
                    self._sock.sendto(json.dumps(body).encode(), self.address)
                    p.sent += 1
                except OSError as exc:
                    log.debug("sending %s's state failed: %s", p.player, exc)
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
