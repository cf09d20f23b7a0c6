"""Many players through one Minecraft connector, against a real server on loopback.

flying-squid 1.12.0 (Minecraft 1.16.5) runs the game; two to four mineflayer bots play the players'
own clients, all joining through ONE connector (MinecraftSource). Each player's state must arrive
under their own name and follow only their own game; a player who leaves ends only their session;
one player too many is refused in the game; the same name joining twice replaces the old connection;
a name that is no player id plays under a mapped one.
The last test runs the serve host (what the Players deployment runs) on such a source: every player
hears music that follows their own scene.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from minecraft_harness import (
    CONNECTOR,
    SOURCE_LOGGER,
    Player,
    TestServer,
    free_port,
    skip_reason,
    source_log,
    wait_until,
)

from metabgm_edge.sources.minecraft import MinecraftSource
from metabgm_edge.state import PLAYER_ID, SceneState

SKIP = skip_reason()
pytestmark = [pytest.mark.minecraft, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]
LOGGER = SOURCE_LOGGER
CHANGE_S = 15.0
"""How long a change on the server may take to show (a teleport into new chunks on a loaded CI
machine took over 5 s)."""


def start_source(port: int, **query: str) -> MinecraftSource:
    source = MinecraftSource("127.0.0.1", port, listen=f"127.0.0.1:{free_port()}", backoff_max="2", **query)
    source.start()
    return source


def state_of(source: MinecraftSource, player: str) -> SceneState | None:
    return source.player_source(player).sample(0.0)


def shows(source: MinecraftSource, player: str, check: Callable[[SceneState], bool], what: str) -> SceneState:
    """Wait until ``player``'s own state passes ``check``."""
    try:
        return wait_until(
            lambda: (s := state_of(source, player)) is not None and check(s) and s,
            CHANGE_S,
            f"{player}: {what}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {player}'s last state: {state_of(source, player)}") from None


def flowing(source: MinecraftSource, player: str, seconds: float = 1.0) -> bool:
    """True when new states of ``player`` keep arriving (several within ``seconds``)."""
    channel = source._channel(player)
    before = 0 if channel is None else channel.accepted
    time.sleep(seconds)
    channel = source._channel(player)
    return channel is not None and channel.accepted >= before + 2


def warnings(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    return source_log(caplog.records, logging.WARNING, since)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return source_log(caplog.records, logging.ERROR)


def close_all(*things: object) -> None:
    for thing in things:
        if thing is not None:
            thing.close()  # type: ignore[attr-defined]


def test_player_ids_from_minecraft_names() -> None:
    """A valid username is its own id; any other string (offline mode lets any in) maps to an id
    that fits the protocol, the same every time, and two names never share one."""
    names = ["alice", "Steve_99", "a.b-c", "Név Ü", "a b", "a_b", "a  b", "", "§cRed", "x" * 70, "名前"]
    script = (
        "const { playerId } = require('./player-state');"
        "process.stdout.write(JSON.stringify(JSON.parse(process.argv[1]).map(playerId)))"
    )
    run = subprocess.run(
        ["node", "-e", script, json.dumps(names)], cwd=CONNECTOR, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    ids = dict(zip(names, json.loads(run.stdout), strict=True))
    for name in ("alice", "Steve_99", "a.b-c", "a_b"):
        assert ids[name] == name
    assert all(PLAYER_ID.fullmatch(i) for i in ids.values()), ids
    assert len(set(ids.values())) == len(names), ids  # "a b", "a_b" and "a  b" stay apart
    assert ids["Név Ü"] == "N_v__-aea9b0" and ids["a b"].startswith("a_b-"), ids
    rerun = subprocess.run(["node", "-e", script, json.dumps(names)], cwd=CONNECTOR, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert json.loads(rerun.stdout) == list(ids.values())


@pytest.mark.slow
def test_players_through_one_connector_each_follow_their_own_game(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()
    server = TestServer(port)
    source = start_source(port, max_players="3", forget="4")
    bots: dict[str, Player] = {}
    dave: Player | None = None
    try:
        _, listen = source.wait_listening(30)
        bots = {name: Player(listen, name) for name in ("alice", "bob", "carol")}  # all at once
        for bot in bots.values():
            bot.spawns()
        wait_until(lambda: set(source.in_world) == set(bots), 15, "three players in the world")
        for name in bots:
            s = shows(source, name, lambda s: s.scene.biome == "forest", "the spawn")
            assert s.extra["username"] == name  # the line tagged with a name carries that player's state
        assert set(source.players()) == set(bots)

        # Each one goes their own way; the others' states must not move.
        carol = shows(source, "carol", lambda s: s.scene.biome == "forest", "the spawn")
        server.request("teleport", username="carol", x=-300.5, y=5, z=10.5)
        shows(source, "carol", lambda s: s.scene.biome == "snowy_tundra", "the snowy tundra")
        server.request("teleport", username="alice", x=300.5, y=5, z=10.5)
        shows(source, "alice", lambda s: s.scene.biome == "desert", "the desert")
        server.request("world", username="bob", name="nether")
        shows(source, "bob", lambda s: s.scene.dimension == "the_nether", "the nether")
        server.request("damage", username="bob", amount=4)
        bob = shows(source, "bob", lambda s: s.health.value == 16 and s.attacked is not None, "damage")
        server.request("spawn_mob", username="carol", name="zombie", dx=3)
        carol = shows(source, "carol", lambda s: any(h.name == "zombie" for h in s.hostiles), "a zombie")
        time.sleep(1.0)  # several more messages of each
        alice = state_of(source, "alice")
        assert alice is not None
        assert (alice.scene.biome, alice.scene.dimension, alice.health.value) == ("desert", "overworld", 20)
        assert alice.attacked is None and alice.hostiles == [] and alice.position.x == pytest.approx(300.5)
        bob = state_of(source, "bob")
        assert bob is not None and bob.scene.biome == "nether_wastes" and bob.hostiles == []
        assert bob.health.value == 16 and bob.attacked is not None and bob.attacked.damage == 4
        carol = state_of(source, "carol")
        assert carol is not None and carol.scene.biome == "snowy_tundra" and carol.health.value == 20
        assert carol.attacked is None and carol.position.x == pytest.approx(-300.5)
        assert [s.extra["username"] for s in (alice, bob, carol)] == ["alice", "bob", "carol"]

        # A fourth player is one too many (max_players=3): refused with a message in the game.
        dave = Player(listen, "dave", rejoin=0)
        kicked = dave.wait_event(lambda e: e.get("event") == "kicked", 20, "dave being told")
        assert "full (3 players" in kicked["reason"], kicked
        assert "dave" not in source.players()
        wait_until(lambda: any("dave was refused" in e for e in errors(caplog)), 5, "dave named")
        dave.close()
        dave = None

        # Bob leaves: only his session ends, the others' states keep flowing.
        logged = len(caplog.records)
        bots.pop("bob").close()
        wait_until(lambda: sorted(source.in_world) == ["alice", "carol"], 10, "bob's session ending")
        left_at = time.monotonic()
        assert source.in_session
        assert flowing(source, "alice") and flowing(source, "carol")
        server.request("damage", username="alice", amount=2)
        shows(source, "alice", lambda s: s.health.value == 18, "damage after bob left")
        lost = warnings(caplog, logged)
        assert len(lost) == 1 and "bob left the game" in lost[0], lost
        kept = state_of(source, "bob")  # his music keeps his last state until he is forgotten
        assert kept is not None and kept.scene.biome == "nether_wastes"
        wait_until(lambda: "bob" not in source.players(), 10, "bob forgotten")
        assert time.monotonic() - left_at >= 3.0  # forget=4 s from his last state, just before he left
        assert sorted(source.players()) == ["alice", "carol"]

        # His place is free again once he is forgotten: a new player gets in.
        dave = Player(listen, "dave")
        dave.spawns()
        shows(
            source, "dave", lambda s: s.scene.biome == "forest" and s.extra["username"] == "dave", "dave in"
        )
        assert sorted(source.in_world) == ["alice", "carol", "dave"]
        assert source.stats().rejected == 0
    finally:
        close_all(dave, *bots.values(), source, server)


@pytest.mark.slow
def test_the_same_name_joining_twice_replaces_the_old_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()
    server = TestServer(port)
    source = start_source(port)
    old = bob = new = odd = None
    try:
        _, listen = source.wait_listening(30)
        old, bob = Player(listen, "alice", rejoin=0), Player(listen, "bob")
        old.spawns()
        bob.spawns()
        wait_until(lambda: sorted(source.in_world) == ["alice", "bob"], 15, "both in the world")
        server.request("teleport", username="alice", x=300.5, y=5, z=10.5)
        shows(source, "alice", lambda s: s.scene.biome == "desert", "the desert")
        server.request("damage", username="bob", amount=3)
        shows(source, "bob", lambda s: s.health.value == 17, "damage")
        logged = len(caplog.records)

        # Alice again, from another client, while the old connection is still up.
        new = Player(listen, "alice", rejoin=0)
        new.spawns()
        kicked = old.wait_event(lambda e: e.get("event") == "kicked", 10, "the old connection ended")
        assert "joined again from another connection" in kicked["reason"], kicked
        # The new connection's own state: back at the spawn (the server starts her afresh), and
        # only that: nothing more from the old one (which stood in the desert).
        shows(source, "alice", lambda s: s.scene.biome == "forest" and s.health.value == 20, "the new alice")
        seen: list[str] = []
        stop = time.monotonic() + 2.0
        while time.monotonic() < stop:
            s = state_of(source, "alice")
            assert s is not None
            seen.append(s.scene.biome)
            time.sleep(0.02)
        assert set(seen) == {"forest"}, seen
        accepted = source._channel("alice").accepted  # type: ignore[union-attr]
        time.sleep(2.0)
        rate = (source._channel("alice").accepted - accepted) / 2.0  # type: ignore[union-attr]
        assert 3.0 <= rate <= 7.0, rate  # one stream of 5 a second, not two
        assert source.in_world == ["bob", "alice"]
        # Bob saw nothing of it: his session went on, his state is his own.
        b = state_of(source, "bob")
        assert b is not None and b.health.value == 17 and b.extra["username"] == "bob"
        assert flowing(source, "bob")
        assert warnings(caplog, logged) == [], warnings(caplog, logged)
        assert any("joined again from another connection" in r.getMessage() for r in caplog.records[logged:])
        # The new connection plays on: a change on the server reaches it.
        server.request("damage", username="alice", amount=5)
        shows(source, "alice", lambda s: s.health.value == 15, "damage on the new connection")

        # A name that is no player id (offline mode lets any in) plays under its mapped id.
        odd = Player(listen, "Név Ü", rejoin=0)
        odd.spawns()
        s = shows(source, "N_v__-aea9b0", lambda s: s.scene.biome == "forest", "the mapped player")
        assert s.extra["username"] == "Név Ü"
        assert source.in_world == ["bob", "alice", "N_v__-aea9b0"]
        renamed = warnings(caplog, logged)
        assert len(renamed) == 1 and "'Név Ü' is not a player id" in renamed[0], renamed
        assert source.stats().rejected == 0
    finally:
        close_all(odd, new, old, bob, source, server)


# ---- serve: every player hears their own scene ----


@pytest.fixture
def minecraft_host() -> Iterator[tuple[object, TestServer]]:
    from metabgm_edge.audio import open_audio_backend
    from metabgm_edge.serve.options import ServeArgs, build_host
    from metabgm_edge.text.composer import Composer

    port = free_port()
    server = TestServer(port)
    uri = f"minecraft://127.0.0.1:{port}?listen=127.0.0.1:{free_port()}&backoff_max=2"
    args = ServeArgs(source=uri, audio_listen="127.0.0.1:0", audio_secret="s" * 32, interval=4.0)
    host = build_host(args, Composer(), open_audio_backend("synth"))
    try:
        host.start()
        yield host, server
    finally:
        host.stop()
        server.close()


@pytest.mark.slow
def test_serve_gives_each_minecraft_player_music_of_their_own_scene(
    minecraft_host: tuple[object, TestServer], tmp_path: Path
) -> None:
    from metabgm_edge.serve.host import PlayerHost
    from metabgm_edge.serve.listen import ListenClient

    host, server = minecraft_host
    assert isinstance(host, PlayerHost) and isinstance(host.source, MinecraftSource)
    _, listen = host.source.wait_listening(30)
    bots = [Player(listen, "alice"), Player(listen, "bob")]
    try:
        for bot in bots:
            bot.spawns()
        wait_until(lambda: set(host.players()) == {"alice", "bob"}, 15, "a session for each player")
        server.request("teleport", username="alice", x=300.5, y=5, z=10.5)
        server.request("world", username="bob", name="nether")
        server.request("time", ticks=18000)
        shows(host.source, "alice", lambda s: s.scene.biome == "desert", "the desert")
        shows(host.source, "bob", lambda s: s.scene.biome == "nether_wastes", "the nether")
        clients = [
            ListenClient(host.server.url(p), token=host.server.token(p), out=str(tmp_path / f"{p}.wav"),
                         duration=13.0, use_device=False)
            for p in ("alice", "bob")
        ]  # fmt: skip
        threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        close_all(*bots)
    own = {"alice": "desert", "bob": "nether_wastes"}
    descriptions = {}
    for c in clients:
        st = c.stats
        assert st.seconds >= 12.9 and st.connections == 1 and st.underrun_seconds == 0, st
        biomes = [h.info["biome"] for h in st.segments]
        print(f"{c.player} heard: {biomes}")
        other = own["bob" if c.player == "alice" else "alice"]
        assert other not in biomes, (c.player, biomes)  # never the other player's scene
        assert biomes[-2:] == [own[c.player]] * 2, (c.player, biomes)  # their own, once it changed
        descriptions[c.player] = {
            h.info["description"] for h in st.segments if h.info["biome"] == own[c.player]
        }
    assert descriptions["alice"].isdisjoint(descriptions["bob"]), descriptions
    status = host.status()
    assert {p.player for p in status.players} == {"alice", "bob"}


@pytest.mark.slow
def test_serve_on_ray_with_a_minecraft_source(tmp_path: Path) -> None:
    """``metabgm-edge serve --source minecraft://...`` as an operator runs it: a local Ray, the
    connector started inside the Players deployment, two players through it, one ``metabgm-edge
    listen`` each; and no connector left behind when serve stops."""
    import os
    import re
    import signal
    import sys

    import psutil

    cli = Path(sys.executable).with_name("metabgm-edge")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    port, listen, audio = free_port(), free_port(), free_port()
    server = TestServer(port)
    command = [
        str(cli), "serve", "--source", f"minecraft://127.0.0.1:{port}?listen=127.0.0.1:{listen}",
        "--audio-listen", f"127.0.0.1:{audio}", "--num-cpus", "2", "--no-dashboard", "--duration", "150",
    ]  # fmt: skip
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             cwd=tmp_path, start_new_session=True)  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in serve.stdout or []:
            lines.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    joined_re = re.compile(r"^player (\S+) joined: metabgm-edge listen (\S+) --token (\S+)$")
    bots: list[Player] = []
    heard: dict[str, list[str]] = {}

    def serving() -> bool:
        assert serve.poll() is None, lines[-20:]
        return any(x.startswith("serving:") for x in lines)

    def joined() -> dict[str, tuple[str, str]]:
        found = {m[1]: (m[2], m[3]) for x in lines if (m := joined_re.match(x))}
        return found if len(found) == 2 else {}

    def listen_to(player: str, url: str, token: str) -> subprocess.Popen[str]:
        args = [str(cli), "listen", url, "--token", token, "--out", str(tmp_path / f"{player}.wav")]
        return subprocess.Popen([*args, "--duration", "14"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)  # fmt: skip

    try:
        wait_until(serving, 120, "serve serving")
        bots = [Player(listen, "alice"), Player(listen, "bob")]
        for bot in bots:
            bot.spawns()
        players = wait_until(joined, 60, "both players joining")
        # (Ray's processes share the 2 cores with the game: generating new chunks takes long)
        server.request("teleport", 30, username="alice", x=300.5, y=5, z=10.5)
        server.request("teleport", 30, username="bob", x=-300.5, y=5, z=10.5)
        clients = {p: listen_to(p, url, token) for p, (url, token) in players.items()}
        for p, proc in clients.items():
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            heard[p] = re.findall(r"^\[\s*[\d.]+ s\] \S+\s+(\S+?),", out, re.M)
    finally:
        close_all(*bots)
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=10)
        server.close()
    print(f"heard: {heard}")
    assert "snowy_tundra" not in heard["alice"] and heard["alice"][-1] == "desert", heard
    assert "desert" not in heard["bob"] and heard["bob"][-1] == "snowy_tundra", heard

    def connectors_left() -> list[psutil.Process]:
        return [
            p
            for p in psutil.process_iter(["cmdline"])
            if f"127.0.0.1:{listen}" in " ".join(p.info["cmdline"] or [])
        ]

    # The connector goes with serve: it exits once its stdin (the replica that started it) closes.
    wait_until(lambda: not connectors_left(), 15, "the connector to exit with serve", interval=0.2)
