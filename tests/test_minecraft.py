"""The Minecraft source against a real server: flying-squid 1.12.0 (Minecraft 1.16.5) on loopback.

A mineflayer bot plays the player's own client and joins through the connector's proxy; the
test server is scripted from its side (test-server.js): night, rain, a zombie, damage, food,
teleports, the nether. Every test stops by itself within a bounded time.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from minecraft_harness import (
    SOURCE_LOGGER,
    Player,
    TestServer,
    free_port,
    skip_reason,
    source_log,
    wait_until,
)

from metabgm_edge.acquisition import Acquisition
from metabgm_edge.characterize import characterize, in_combat, scene_data
from metabgm_edge.errors import SourceError
from metabgm_edge.sources import open_source
from metabgm_edge.sources.minecraft import CONNECTOR_ENV, NODE_ENV, MinecraftSource
from metabgm_edge.stages import describe
from metabgm_edge.state import SceneState, Window
from metabgm_edge.text import open_text_backend

SKIP = skip_reason()
needs_minecraft = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

SAMPLE_PERIOD = 0.5
CONNECTOR_LATENCY = 0.5
"""Allowed seconds from a change on the server to the connector's message (it sends a change within
50 ms, and everything 5 times a second); the margin is for CPU-starved CI machines."""
LOGGER = SOURCE_LOGGER


# ---- set-up errors (no Minecraft needed) ----


def test_query_values_are_checked_before_anything_starts() -> None:
    with pytest.raises(SourceError, match="rate='fast' is not a number"):
        open_source("minecraft://127.0.0.1:25565?rate=fast")
    with pytest.raises(SourceError, match="unknown parameter"):
        open_source("minecraft://127.0.0.1:25565?colour=red")
    with pytest.raises(SourceError, match="listen='nowhere' must be HOST:PORT"):
        open_source("minecraft://127.0.0.1:25565?listen=nowhere")
    with pytest.raises(SourceError, match="version='latest'"):
        open_source("minecraft://127.0.0.1:25565?version=latest")


def test_missing_node_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NODE_ENV, "no-such-node-binary-here")
    with pytest.raises(SourceError, match=r"needs Node\.js 20 or newer.*not found"):
        open_source("minecraft://127.0.0.1:25565")


@needs_node
def test_missing_npm_packages_name_make_test_and_npm_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "connector.js").write_text("// no node_modules beside me\n")
    monkeypatch.setenv(CONNECTOR_ENV, str(tmp_path))
    with pytest.raises(SourceError, match=r"npm packages are not installed.*make test.*npm ci"):
        open_source("minecraft://127.0.0.1:25565")


# ---- against a real server ----


@dataclass
class Game:
    server: TestServer
    source: MinecraftSource
    port: int
    player: Player | None = None

    def restart_server(self) -> None:
        self.server = TestServer(self.port)


def start_source(port: int, **query: str) -> MinecraftSource:
    source = MinecraftSource("127.0.0.1", port, listen=f"127.0.0.1:{free_port()}", backoff_max="2", **query)
    source.start()
    return source


@pytest.fixture
def game() -> Iterator[Game]:
    """A server, the source (its connector) and a player in the world, state flowing."""
    port = free_port()
    g = Game(TestServer(port), start_source(port), port)
    try:
        _, listen_port = g.source.wait_listening(30)
        g.player = Player(listen_port)
        g.player.spawns()
        wait_until(lambda: g.source.sample(0.0), 10, "the first state from the connector")
        yield g
    finally:
        if g.player is not None:
            g.player.close()
        g.source.close()
        g.server.close()


def connector_pids() -> list[int]:
    psutil = pytest.importorskip("psutil")
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(part.endswith("connector.js") for part in child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.minecraft
@needs_minecraft
def test_connector_reads_the_player_state_from_the_packets(game: Game) -> None:
    src, server, player = game.source, game.server, game.player
    assert player is not None
    first = src.sample(0.0)
    assert first is not None
    assert first.scene.dimension == "overworld"
    assert first.scene.biome == "forest"
    assert first.health.value == 20
    assert first.temperature == pytest.approx(0.7)
    assert first.extra["connector"] == "minecraft"
    assert first.extra["username"] == "player"

    latencies: dict[str, float] = {}

    def follow(action: Callable[[], object], check: Callable[[SceneState], bool], what: str) -> SceneState:
        action()  # returns once the server (or the player's client) has done it
        t0 = time.monotonic()
        try:
            # (a wait, not a bound: a teleport into new chunks makes a loaded server generate them)
            state = wait_until(lambda: (s := src.sample(0.0)) is not None and check(s) and s, 15, what, 0.005)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last state: {src.sample(0.0)}") from None
        latencies[what] = time.monotonic() - t0
        return state

    follow(lambda: server.request("time", ticks=18000), lambda s: s.time.ticks == 18000, "night")
    follow(lambda: server.request("rain", on=True), lambda s: s.weather.state == "rain", "rain")
    follow(lambda: server.request("thunder", on=True), lambda s: s.weather.state == "thunder", "thunder")
    s = follow(
        lambda: server.request("spawn_mob", name="zombie", dx=3),
        lambda s: any(h.name == "zombie" for h in s.hostiles),
        "the zombie",
    )
    assert s.hostiles[0].distance == pytest.approx(3.0, abs=1.0)
    s = follow(lambda: server.request("damage", amount=4), lambda s: s.health.value == 16, "damage")
    assert s.attacked is not None and s.attacked.damage == 4 and s.attacked.attacker == "zombie"
    s = follow(lambda: server.request("food", food=6, saturation=0.5), lambda s: s.hunger.food == 6, "food")
    assert s.hunger.saturation == 0.5
    follow(lambda: server.request("fire", on=True), lambda s: s.flag("on_fire"), "on fire")
    s = follow(
        lambda: server.request("damage", amount=1, status=37), lambda s: s.health.value == 15, "burning"
    )
    assert s.attacked is not None and s.attacked.attacker == "fire" and s.attacked.damage == 5
    follow(lambda: server.request("fire", on=False), lambda s: not s.flag("on_fire"), "fire out")

    # What the player does, read from the client's packets: sprinting, then sneaking.
    s = follow(
        lambda: player.request("controls", forward=True, sprint=True),
        lambda s: s.flag("sprinting") and s.movement.state == "running" and s.movement.speed > 4.0,
        "sprinting at full speed",
    )
    player.request("stop")
    s = follow(lambda: player.request("controls", sneak=True), lambda s: s.flag("sneaking"), "sneaking")
    player.request("stop")

    s = follow(
        lambda: server.request("teleport", x=300.5, y=5, z=10.5),
        lambda s: s.scene.biome == "desert",
        "the desert",
    )
    # It rains on the world, but not in a desert: the player hears what they see.
    assert s.temperature == 2.0 and s.weather.state == "clear" and s.extra["world_weather"] == "thunder"
    server.request("thunder", on=False)  # a storm stays "thunder" in the cold; plain rain is snow there
    s = follow(
        lambda: server.request("teleport", x=-300.5, y=5, z=10.5),
        lambda s: s.scene.biome == "snowy_tundra",
        "the snowy tundra",
    )
    assert s.weather.state == "snow"
    follow(lambda: server.request("teleport", x=36.5, y=3, z=36.5), lambda s: s.flag("in_water"), "water")
    follow(lambda: server.request("teleport", x=52.5, y=3, z=36.5), lambda s: s.flag("in_lava"), "lava")
    s = follow(
        lambda: server.request("teleport", x=40.5, y=5, z=-40.5), lambda s: s.position.depth > 0, "the cave"
    )
    assert s.position.depth == 13
    follow(  # one block changes under the player: water poured at their feet
        lambda: server.request("set_block", x=40, y=5, z=-41, name="water"),
        lambda s: s.flag("in_water"),
        "water poured",
    )
    s = follow(
        lambda: server.request("world", name="nether"),
        lambda s: s.scene.dimension == "the_nether" and s.scene.biome == "nether_wastes",
        "the nether",
    )
    assert s.temperature == 2.0 and s.weather.state == "clear"
    assert src.stats().rejected == 0
    # Changes made on the server reach the runtime at once (the player's own moves take time).
    player_side = ("sprinting at full speed", "sneaking")
    server_side = {k: round(v, 3) for k, v in latencies.items() if k not in player_side}
    assert max(server_side.values()) <= CONNECTOR_LATENCY, server_side
    print(f"connector latencies (s): {server_side}")


@pytest.mark.minecraft
@needs_minecraft
def test_connector_reads_the_tall_world_chunk_format_of_1_18() -> None:
    """1.18 moved biomes into the chunk sections and the world below y=0: the other chunk code path."""
    port = free_port()
    server = TestServer(port, version="1.18.2")
    source = start_source(port)
    player: Player | None = None
    try:
        _, listen_port = source.wait_listening(30)
        player = Player(listen_port, version="1.18.2")
        player.spawns()
        first = wait_until(lambda: source.sample(0.0), 10, "the first state")
        assert (first.scene.biome, first.scene.dimension) == ("forest", "overworld")

        def shows(check: Callable[[SceneState], bool], what: str) -> SceneState:
            return wait_until(lambda: (s := source.sample(0.0)) is not None and check(s) and s, 5, what)

        server.request("time", ticks=18000)
        server.request("rain", on=True)
        server.request("damage", amount=3)
        shows(lambda s: s.time.ticks == 18000 and s.weather.state == "rain" and s.health.value == 17, "it")
        server.request("teleport", x=-300.5, y=5, z=10.5)
        s = shows(lambda s: s.scene.biome == "snowy_plains", "the snowy plains (snowy_tundra before 1.18)")
        assert s.weather.state == "snow"
        server.request("teleport", x=40.5, y=5, z=-40.5)
        s = shows(lambda s: s.position.depth > 0, "the cave")
        assert s.position.depth == 13
        server.request("teleport", x=36.5, y=3, z=36.5)
        shows(lambda s: s.flag("in_water"), "the water pool")
        assert source.stats().rejected == 0
    finally:
        if player is not None:
            player.close()
        source.close()
        server.close()


def warnings_from_source(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    return source_log(caplog.records, logging.WARNING, since)


class Segments:
    """Collects the acquisition's segments on a thread, as the music scheduler would consume them."""

    def __init__(self, acq: Acquisition) -> None:
        self.items: list[Window] = []
        self._acq = acq
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (seg := self._acq.next_segment()) is not None:
            self.items.append(seg)

    def join(self) -> None:
        self._thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.minecraft
@needs_minecraft
def test_runtime_follows_the_game_and_keeps_playing_when_the_server_dies(
    game: Game, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = game.server
    acq = Acquisition(game.source, interval=4.0, sample_period=SAMPLE_PERIOD)
    segments = Segments(acq)
    acq.start()
    backend = open_text_backend("composer")
    bound = SAMPLE_PERIOD + CONNECTOR_LATENCY
    latencies: dict[str, float] = {}

    def follow(
        what: str, action: Callable[[], object], check: Callable[[SceneState], bool]
    ) -> tuple[dict[str, Any], SceneState]:
        """Make a change on the server; return the runtime's characterized state once it shows it."""
        t0 = time.monotonic()
        action()
        try:
            state = wait_until(lambda: (s := acq.latest) is not None and check(s) and s, 10, what, 0.01)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last state: {acq.latest}") from None
        latencies[what] = time.monotonic() - t0
        return characterize(scene_data(state), in_combat(state)), state

    try:
        day, state = follow("day", lambda: server.request("time", ticks=6000), lambda s: s.time.ticks == 6000)
        assert day["Time"]["Phase"] == "day" and day["Scene"]["Biome"] == "forest"
        calm_day = describe(state, backend)

        night, state = follow(
            "night", lambda: server.request("time", ticks=18000), lambda s: s.time.ticks == 18000
        )
        assert night["Time"]["Phase"] == "night"
        calm_night = describe(state, backend)
        assert not calm_night.combat
        assert calm_night.description != calm_day.description

        rain, _ = follow("rain", lambda: server.request("rain", on=True), lambda s: s.weather.state == "rain")
        assert rain["Weather"]["State"] == "rain"

        fight, state = follow(
            "zombie",
            lambda: server.request("spawn_mob", name="zombie", dx=3),
            lambda s: any(h.name == "zombie" for h in s.hostiles),
        )
        assert "Zombie" in fight["Hostile Entity"] and "Time" not in fight  # Algorithm 1's combat keys
        combat = describe(state, backend)
        assert combat.combat
        assert combat.description != calm_night.description

        hit, _ = follow("damage", lambda: server.request("damage", amount=4), lambda s: s.health.value == 16)
        assert hit["Health"]["Health"] == 16
        assert hit["Being Attacked"]["Damage"] == 4 and hit["Being Attacked"]["Attacker"] == "zombie"

        hungry, _ = follow(
            "food", lambda: server.request("food", food=6, saturation=0), lambda s: s.hunger.food == 6
        )
        assert hungry["Satiety"]["Food"] == 6

        desert, _ = follow(
            "another biome",
            lambda: server.request("teleport", x=300.5, y=5, z=10.5),
            lambda s: s.scene.biome == "desert",
        )
        assert desert["Scene"]["Biome"] == "desert"

        nether, _ = follow(
            "the nether",
            lambda: server.request("world", name="nether"),
            lambda s: s.scene.dimension == "the_nether" and s.scene.biome == "nether_wastes",
        )
        assert nether["Scene"] == {"Biome": "nether_wastes", "Dimension": "the_nether"}

        slow = {what: round(t, 3) for what, t in latencies.items() if t > bound}
        assert not slow, f"the runtime took longer than {bound:g} s to follow: {slow} (all: {latencies})"

        # The aggregated state (segments) saw the whole fight and every place.
        wait_until(lambda: any(seg.latest.scene.dimension == "the_nether" for seg in segments.items), 10,
                   "a segment in the nether")  # fmt: skip
        assert any(seg.combat_seen for seg in segments.items)
        assert any("zombie" in seg.attackers for seg in segments.items)
        assert sum(seg.damage_taken for seg in segments.items) == 4
        assert min(seg.lowest_health for seg in segments.items) == 16
        visited = {biome for seg in segments.items for biome in seg.biomes}
        assert {"forest", "desert", "nether_wastes"} <= visited

        # The server dies mid-session: the music keeps its last state, the loss is reported once.
        logged = len(caplog.records)
        seen = len(segments.items)
        server.kill()
        wait_until(lambda: not game.source.in_session, 10, "the connector noticing the server is gone")
        time.sleep(4.5)  # longer than a segment
        assert len(segments.items) > seen, "acquisition stopped handing segments while the server was down"
        for seg in segments.items[seen:]:
            assert seg.latest.scene.dimension == "the_nether" and seg.latest.health.value == 16
        assert acq.latest is not None and acq.latest.scene.biome == "nether_wastes"
        assert len(warnings_from_source(caplog, logged)) == 1, warnings_from_source(caplog, logged)

        # It comes back: the player rejoins (the bot presses "Reconnect"), the state flows again.
        game.restart_server()
        wait_until(
            lambda: (s := acq.latest) is not None and s.scene.dimension == "overworld",
            30,
            "the state flowing again after the server restarted",
        )
        assert len(warnings_from_source(caplog, logged)) == 1
        assert any("flowing again" in r.getMessage() for r in caplog.records[logged:])
        assert game.source.stats().rejected == 0
    finally:
        acq.stop()
        segments.join()
    print(f"latencies (s): {latencies}")


@pytest.mark.slow
@pytest.mark.minecraft
@needs_minecraft
def test_a_dead_connector_is_restarted_and_close_leaves_no_node_process(
    game: Game, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = game.source
    pid = source.pid
    assert pid is not None and connector_pids() == [pid]
    before = source.sample(0.0)
    assert before is not None
    logged = len(caplog.records)

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: source.pid not in (None, pid), 10, "the connector restarted")
    kept = source.sample(0.0)  # the last state stays meanwhile (the player has not rejoined yet)
    assert kept is not None
    assert (kept.scene, kept.health, kept.position) == (before.scene, before.health, before.position)
    assert source.restarts >= 1
    t = time.monotonic()
    wait_until(
        lambda: source.in_session and (source.last_message_at or 0.0) > t, 30, "the player back through it"
    )
    losses = warnings_from_source(caplog, logged)
    assert len(losses) == 1 and "connector stopped" in losses[0], losses

    source.close()
    assert source.pid is None
    assert connector_pids() == []


@pytest.mark.minecraft
@needs_minecraft
def test_connector_waits_for_a_server_that_is_not_up_yet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()
    source = start_source(port)
    server: TestServer | None = None
    try:
        wait_until(lambda: warnings_from_source(caplog), 10, "a warning that the server does not answer")
        time.sleep(1.5)  # several tries (0.5 s, 1 s, ...), still one warning
        assert not source.listening.is_set()
        assert len(warnings_from_source(caplog)) == 1 and "does not answer" in warnings_from_source(caplog)[0]
        server = TestServer(port)
        source.wait_listening(20)
    finally:
        source.close()
        if server is not None:
            server.close()


@pytest.mark.minecraft
@needs_minecraft
def test_an_online_mode_server_is_refused_with_a_message_in_the_game(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = TestServer(port, online_mode=True)
    source = start_source(port)
    player: Player | None = None
    try:
        _, listen_port = source.wait_listening(30)
        player = Player(listen_port)
        kicked = player.wait_event(lambda e: e.get("event") == "kicked", 20, "the player being told")
        assert "online-mode" in kicked["reason"]
        assert source.sample(0.0) is None
        wait_until(
            lambda: any(
                "online-mode server" in r.getMessage()
                for r in caplog.records
                if r.name == LOGGER and r.levelno == logging.ERROR
            ),
            5,
            "an error naming the online-mode server",
        )
    finally:
        if player is not None:
            player.close()
        source.close()
        server.close()


FAKE_CONNECTOR = r"""
// A connector that misbehaves: bad lines between good ones, then it dies; later runs die at once.
const fs = require('fs')
const runs = __dirname + '/runs.txt'
fs.appendFileSync(runs, Date.now() / 1000 + '\n')
const first = fs.readFileSync(runs, 'utf8').trim().split('\n').length === 1
process.stderr.write(JSON.stringify({ event: 'listening', port: 25566, version: '1.16.5' }) + '\n')
if (first) {
  const good = (hp) => JSON.stringify({ v: 1, scene: { biome: 'forest' }, health: { value: hp, max: 20 } })
  process.stdout.write(good(20) + '\n{"v": 1, "health": \n' + '{"v":1,"health":{"value":NaN}}\n')
  process.stdout.write('{"v": 7}\n' + good(12) + '\n')
  setTimeout(() => process.exit(1), 300)
} else {
  process.stderr.write('plain text from node\n')
  process.exit(1)
}
"""


def use_fake_connector(monkeypatch: pytest.MonkeyPatch, folder: Path, script: str) -> None:
    """A connector folder holding ``script`` as connector.js (with the package the check looks for)."""
    (folder / "connector.js").write_text(script)
    (folder / "node_modules" / "minecraft-protocol").mkdir(parents=True)
    (folder / "node_modules" / "minecraft-protocol" / "package.json").write_text("{}")
    monkeypatch.setenv(CONNECTOR_ENV, str(folder))


@needs_node
def test_connector_lines_are_validated_and_a_dying_connector_is_restarted_with_backoff(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    use_fake_connector(monkeypatch, tmp_path, FAKE_CONNECTOR)
    source = open_source("minecraft://127.0.0.1:25565?backoff_max=2")
    assert isinstance(source, MinecraftSource)
    with source:
        wait_until(lambda: len(runs(tmp_path)) >= 5, 15, "five runs of the connector")
        state = source.sample(0.0)
    assert state is not None and state.health.value == 12  # the last good state stays
    stats = source.stats()
    assert (stats.accepted, stats.rejected) == (2, 3)
    assert set(stats.reasons) == {"malformed_json", "unknown_version"}
    starts = runs(tmp_path)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Waits of 0.5 s (the first run delivered states), then 1 s, 2 s, 2 s (backoff_max), each
    # plus the short life of a connector that dies at once.
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 2.0 and gaps[3] >= 2.0, gaps
    assert gaps[2] > gaps[1] + 0.6 and gaps[3] < 3.5, gaps
    losses = warnings_from_source(caplog)
    assert sum("connector stopped" in w for w in losses) == 1, losses
    assert source.pid is None


def runs(folder: Path) -> list[float]:
    path = folder / "runs.txt"
    return [float(x) for x in path.read_text().split()] if path.exists() else []


FAKE_MANY = r"""
// A connector with two players: bob leaves after a hit, alice plays on, a player with a name that
// is no player id joins, then the connector dies; later runs only listen.
const fs = require('fs')
const runs = __dirname + '/runs.txt'
fs.appendFileSync(runs, JSON.stringify(process.argv.slice(2)) + '\n')
const ev = (e) => process.stderr.write(JSON.stringify(e) + '\n')
ev({ event: 'listening', port: 25566, version: '1.16.5' })
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
if (fs.readFileSync(runs, 'utf8').trim().split('\n').length === 1) {
  const line = (player, extra = {}) => process.stdout.write(JSON.stringify({
    v: 1, player, scene: { biome: player === 'bob' ? 'desert' : 'forest' }, health: { value: 20, max: 20 },
    extra: { username: player }, ...extra
  }) + '\n')
  ev({ event: 'session_started', username: 'alice', player: 'alice' })
  ev({ event: 'session_started', username: 'bob', player: 'bob' })
  let tick = 0 // 10 a second
  setInterval(() => {
    tick += 1
    line('alice')
    if (tick <= 5) line('bob', { attacked: { damage: 4, seconds_ago: 0, attacker: 'zombie' } })
    if (tick === 7) ev({ event: 'session_ended', username: 'bob', player: 'bob', by: 'player' })
    if (tick === 10) ev({ event: 'player_joined', username: 'N\u00e9v \u00dc', player: 'N_v__-aea9b0' })
    if (tick === 30) process.exit(1)
  }, 100)
}
"""


@needs_node
def test_one_player_leaving_is_their_loss_only_and_each_ages_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    use_fake_connector(monkeypatch, tmp_path, FAKE_MANY)
    source = open_source("minecraft://127.0.0.1:25565?backoff_max=1&max_players=5&forget=30")
    assert isinstance(source, MinecraftSource)
    with source:
        wait_until(lambda: source.in_world == ["alice", "bob"], 10, "both players in the world")
        wait_until(lambda: source.in_world == ["alice"], 10, "bob's session ending")
        assert source.in_session
        bob_left = warnings_from_source(caplog)
        assert len(bob_left) == 1 and "bob left the game" in bob_left[0], bob_left
        assert "their last state" in bob_left[0]
        time.sleep(1.5)
        bob, alice = source.player_source("bob").sample(0.0), source.player_source("alice").sample(0.0)
        assert bob is not None and bob.scene.biome == "desert"  # kept until he is forgotten
        assert bob.attacked is not None and bob.attacked.seconds_ago >= 1.5  # his last hit gets older
        assert alice is not None and alice.attacked is None and alice.scene.biome == "forest"
        assert source.followed == "alice" and source.sample(0.0) == alice  # play follows the first one
        assert set(source.players()) == {"alice", "bob"}
        wait_until(lambda: len(runs_of(tmp_path)) >= 2, 10, "the connector restarted")
        assert not source.in_session
    lost = warnings_from_source(caplog)
    assert len(lost) == 3, lost
    assert "'Név Ü' is not a player id" in lost[1] and "N_v__-aea9b0" in lost[1], lost
    assert "connector stopped" in lost[2], lost
    argv = runs_of(tmp_path)[0]
    assert argv[argv.index("--max-players") + 1] == "5" and argv[argv.index("--forget") + 1] == "30"


def runs_of(folder: Path) -> list[list[str]]:
    path = folder / "runs.txt"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
