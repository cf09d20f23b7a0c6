"""Many players on one listener: the protocol's optional player id, states kept apart per player,
players forgotten after a timeout, and a single session following one player."""

from __future__ import annotations

import json
import socket
import time

import pytest

from metabgm_edge.errors import MessageError, SourceError
from metabgm_edge.sources import open_source
from metabgm_edge.state import DEFAULT_PLAYER, parse_message


def message(player: str | None, biome: str, **extra: object) -> bytes:
    body: dict[str, object] = {"v": 1, "scene": {"biome": biome}, **extra}
    if player is not None:
        body["player"] = player
    return json.dumps(body).encode()


def wait_for(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def udp():  # type: ignore[no-untyped-def]
    opened = []

    def make(query: str = "") -> tuple[object, socket.socket]:
        src = open_source(f"udp://127.0.0.1:0{query}")
        src.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append((src, sock))
        return src, sock

    yield make
    for src, sock in opened:
        sock.close()
        src.close()


def test_player_id_is_an_envelope_field() -> None:
    state, env = parse_message(message("alice", "desert"))
    assert env.player == "alice" and state.scene.biome == "desert"
    assert "player" not in state.extra
    assert parse_message(message(None, "forest"))[1].player is None


@pytest.mark.parametrize("bad", ["", "a" * 65, "a b", "a/b", "alice\n", "al\x00ice", "ü", "../x", "a?b"])
def test_hostile_player_ids_are_rejected(bad: str) -> None:
    with pytest.raises(MessageError) as err:
        parse_message(message(bad, "forest"))
    assert err.value.reason == "bad_player"


def test_player_id_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(MessageError) as err:
        parse_message(json.dumps({"v": 1, "player": 7}).encode())
    assert err.value.reason == "invalid_field"


def test_each_players_state_is_kept_apart(udp) -> None:  # type: ignore[no-untyped-def]
    src, sock = udp()
    addr = ("127.0.0.1", src.port)
    for player, biome in [("alice", "desert"), ("bob", "snowy_tundra"), ("alice", "jungle"), (None, "ocean")]:
        sock.sendto(message(player, biome), addr)
    wait_for(lambda: len(src.players()) == 3 and src.player_source("alice").sample(0).scene.biome == "jungle")
    assert src.players() == ["alice", "bob", DEFAULT_PLAYER]
    assert src.player_source("bob").sample(0).scene.biome == "snowy_tundra"
    assert src.player_source(DEFAULT_PLAYER).sample(0).scene.biome == "ocean"
    assert src.player_source("nobody").sample(0) is None
    drained = [s.scene.biome for _, s in src.player_source("alice").drain()]
    assert drained == ["desert", "jungle"]
    assert src.player_source("alice").drain() == []
    # A single session follows the first player heard; the others do not change its music.
    assert src.followed == "alice" and src.sample(0).scene.biome == "jungle"


def test_a_single_session_follows_the_named_player(udp) -> None:  # type: ignore[no-untyped-def]
    src, sock = udp("?player=bob")
    addr = ("127.0.0.1", src.port)
    sock.sendto(message("alice", "desert"), addr)
    sock.sendto(message("bob", "swamp"), addr)
    wait_for(lambda: src.sample(0) is not None)
    assert src.sample(0).scene.biome == "swamp"
    sock.sendto(message("alice", "nether_wastes"), addr)
    wait_for(lambda: src.player_source("alice").sample(0).scene.biome == "nether_wastes")
    assert src.sample(0).scene.biome == "swamp"


def test_quiet_players_are_forgotten(udp) -> None:  # type: ignore[no-untyped-def]
    src, sock = udp("?forget=1")
    addr = ("127.0.0.1", src.port)
    sock.sendto(message("alice", "desert"), addr)
    sock.sendto(message("bob", "desert"), addr)
    wait_for(lambda: len(src.players()) == 2)
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:  # bob keeps talking, alice goes quiet
        sock.sendto(message("bob", "desert"), addr)
        time.sleep(0.1)
    assert src.players() == ["bob"]
    sock.sendto(message("alice", "jungle"), addr)  # back: a new session
    wait_for(lambda: src.players() == ["bob", "alice"])


def test_too_many_players_are_rejected_and_counted(udp) -> None:  # type: ignore[no-untyped-def]
    src, sock = udp("?max_players=2")
    addr = ("127.0.0.1", src.port)
    for i in range(5):
        sock.sendto(message(f"p{i}", "desert"), addr)
    sock.sendto(message("p0", "jungle"), addr)  # a known player still gets through
    wait_for(lambda: src.stats().received == 6)
    assert src.players() == ["p0", "p1"]
    assert src.stats().reasons == {"too_many_players": 3}
    assert src.player_source("p0").sample(0).scene.biome == "jungle"


@pytest.mark.parametrize(
    "query", ["?player=a/b", "?forget=0", "?forget=nan", "?max_players=0", "?max_players=x"]
)
def test_bad_player_options_are_refused(query: str) -> None:
    with pytest.raises(SourceError):
        open_source(f"udp://127.0.0.1:0{query}")
