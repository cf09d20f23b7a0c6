"""Many players' sessions in one host (what the Players deployment runs), without Ray: real UDP and
WebSocket sockets on loopback, simulated players, listen clients. The Ray application itself is
tested in test_serve_ray.py."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serve_helpers

from metabgm_edge.audio import open_audio_backend
from metabgm_edge.playback.wav import read_wav
from metabgm_edge.serve.host import PlayerHost
from metabgm_edge.serve.listen import ListenClient, ListenError
from metabgm_edge.serve.options import ServeArgs, build_host
from metabgm_edge.serve.players import SimPlayer, SimPlayers
from metabgm_edge.serve.stream import Decoder, Encoder, player_token
from metabgm_edge.text.composer import Composer

pytestmark = pytest.mark.slow


@pytest.fixture
def host() -> Iterator[PlayerHost]:
    args = ServeArgs(source="udp://127.0.0.1:0?forget=2", audio_listen="127.0.0.1:0", audio_secret="s" * 32,
                     interval=4.0)  # fmt: skip
    h = build_host(args, Composer(), open_audio_backend("synth"))
    h.start()
    yield h
    h.stop()


def players(h: PlayerHost, *specs: tuple[str, str]) -> SimPlayers:
    sim = SimPlayers(
        f"udp://127.0.0.1:{h.source.port}", [SimPlayer(p, s, seed=i) for i, (p, s) in enumerate(specs)]
    )
    sim.start()
    return sim


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def client(h: PlayerHost, player: str, tmp: Path, **kw: object) -> ListenClient:
    kw.setdefault("out", str(tmp / f"{player}.wav"))
    kw.setdefault("use_device", False)
    return ListenClient(h.server.url(player), token=h.server.token(player), **kw)  # type: ignore[arg-type]


def run(clients: list[ListenClient]) -> None:
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


@pytest.mark.parametrize("fmt", ["opus", "flac", "pcm16"])
def test_codecs_round_trip(fmt: str) -> None:
    t = np.arange(32000) / 32000
    audio = (0.3 * np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)], 1)).astype(np.float32)
    enc = Encoder(fmt, 1000)
    dec = Decoder(enc.hello())
    packets = [p for i in range(0, 32000, 640) for p in enc.encode(audio[i : i + 640])]
    assert packets[0][0] == 1000 and all(b[0] > a[0] for a, b in itertools.pairwise(packets))
    out = np.concatenate([dec.decode(data) for _, data in packets])
    size = sum(len(d) for _, d in packets)
    assert abs(out.shape[0] - 32000) < 3000
    mid = slice(4000, 24000)  # past the codecs' start-up delay
    rms_in = float(np.sqrt((audio[mid] ** 2).mean()))
    assert abs(float(np.sqrt((out[mid] ** 2).mean())) - rms_in) < 0.05 * rms_in
    if fmt == "opus":
        assert size < 0.25 * audio.nbytes / 2  # well under 16-bit PCM
    if fmt == "pcm16":
        assert np.abs(out - audio).max() < 1e-4


def test_each_player_hears_their_own_scene(host: PlayerHost, tmp_path: Path) -> None:
    sim = players(host, ("alice", "ocean"), ("bob", "cave"))
    try:
        wait_for(lambda: set(host.players()) == {"alice", "bob"})
        clients = [
            client(host, "alice", tmp_path, duration=13.0),
            client(host, "bob", tmp_path, duration=13.0, fmt="pcm16"),
        ]
        run(clients)
    finally:
        sim.stop()
    own = {"alice": {"ocean"}, "bob": {"mountains"}}
    descriptions = {}
    for c in clients:
        st = c.stats
        assert st.seconds >= 12.9 and st.connections == 1
        assert st.underrun_seconds == 0 and st.lost_frames == 0, st
        heard = st.segments
        assert len(heard) >= 3  # start + two intervals of 4 s
        assert {h.info["biome"] for h in heard} == own[c.player]
        assert [h.info["index"] for h in heard] == sorted(h.info["index"] for h in heard)
        descriptions[c.player] = [h.info["description"] for h in heard]
        audio, info = read_wav(c.out)
        assert info.sample_rate == 32000 and abs(audio.shape[0] / 32000 - st.seconds) < 0.05
        # Continuous music: no silence longer than a crossfade once it has started.
        quiet = [r for r in serve_helpers.silent_runs(audio) if r[0] > 0.5]
        assert not [r for r in quiet if r[1] > 0.5], quiet
    assert descriptions["alice"] != descriptions["bob"]
    # The audio itself is each player's music: its pitch classes fit the key its own descriptions
    # name (A major, F minor: keys far apart) clearly better than the other player's key.
    keys = {p: {serve_helpers.described_key(d) for d in ds} for p, ds in descriptions.items()}
    assert all(len(k) == 1 and None not in k for k in keys.values()) and keys["alice"] != keys["bob"], keys
    for me, other in (("alice", "bob"), ("bob", "alice")):
        audio, _ = read_wav(tmp_path / f"{me}.wav")
        got = serve_helpers.chroma(audio[32000:])
        mine = serve_helpers.similarity(got, serve_helpers.key_profile(next(iter(keys[me]))))
        theirs = serve_helpers.similarity(got, serve_helpers.key_profile(next(iter(keys[other]))))
        assert mine > theirs + 0.3, (me, mine, theirs)
    status = host.status()
    assert {p.player for p in status.players} == {"alice", "bob"}
    assert all(p.segments >= 3 and p.deadline_misses == 0 for p in status.players)


def test_a_listener_rides_out_a_dropped_connection(host: PlayerHost, tmp_path: Path) -> None:
    sim = players(host, ("carol", "snow"))
    proxy = serve_helpers.CuttingProxy(("127.0.0.1", host.server.port))
    try:
        wait_for(lambda: host.players() == ["carol"])
        url, token = f"ws://127.0.0.1:{proxy.port}/carol", host.server.token("carol")
        c = ListenClient(url, token=token, out=str(tmp_path / "carol.wav"), duration=10.0, use_device=False)
        threading.Timer(4.0, proxy.cut).start()
        run([c])
    finally:
        proxy.close()
        sim.stop()
    st = c.stats
    assert st.reconnects == 1 and st.connections == 2 and proxy.accepted == 2
    assert st.seconds >= 9.9
    audio, _ = read_wav(c.out)
    # The gap is bounded by the reconnect (backoff 0.5 s) plus the rebuffer: well under 2 s.
    quiet = [r for r in serve_helpers.silent_runs(audio) if r[0] > 0.5]
    assert sum(length for _, length in quiet) < 2.0, quiet
    assert {h.info["biome"] for h in st.segments} <= {
        "snowy_tundra",
        "snowy_plains",
        "ice_spikes",
        "snowy_taiga",
    }


def test_a_wrong_token_is_one_clear_error_and_an_unknown_player_is_waited_for(
    host: PlayerHost, tmp_path: Path
) -> None:
    with pytest.raises(ListenError, match="refused the token"):
        ListenClient(host.server.url("dave"), token="wrong", use_device=False, duration=1.0).run()
    assert host.server.refused["bad_token"] == 1
    c = client(host, "dave", tmp_path, duration=3.0)
    t = threading.Thread(target=c.run, daemon=True)
    t.start()
    time.sleep(1.5)  # dave's game has not sent anything yet: the client waits (HTTP 404), then plays
    assert c.stats.connections == 0 and host.server.refused["unknown_player"] >= 1
    sim = players(host, ("dave", "ocean"))
    try:
        t.join(timeout=30)
    finally:
        sim.stop()
    assert c.stats.connections == 1 and c.stats.seconds >= 2.9


def test_a_player_who_leaves_is_forgotten_and_their_stream_ends(host: PlayerHost, tmp_path: Path) -> None:
    sim = players(host, ("erin", "forest"), ("frank", "desert"))
    try:
        wait_for(lambda: len(host.players()) == 2)
        sim.players[0].paused = True  # erin quits the game
        wait_for(lambda: host.players() == ["frank"], timeout=10)
        assert host.status().forgotten == 1
        with pytest.raises(ListenError, match="refused"):  # no stream for her: 404, then a wrong token
            ListenClient(host.server.url("erin"), token=player_token(b"x" * 32, "erin"), use_device=False,
                         duration=1.0).run()  # fmt: skip
    finally:
        sim.stop()


def test_a_session_that_fails_at_once_every_time_is_replaced_at_most_every_few_seconds(
    host: PlayerHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A defect that ends every session as it starts: the player is not replaced in a loop (one
    new session per watcher poll would be dozens a second, each logging a traceback)."""
    from metabgm_edge import scheduler
    from metabgm_edge.serve.host import RESTART_AFTER_S

    def broken(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a defect in every session")

    monkeypatch.setattr(scheduler.Session, "run", broken)
    caplog.set_level(logging.WARNING, logger="metabgm_edge.serve.host")
    sim = players(host, ("hugo", "forest"))
    try:
        wait_for(lambda: host.players() == ["hugo"])
        began = time.monotonic()
        time.sleep(2.5 * RESTART_AFTER_S)
        watched = time.monotonic() - began
        status = {p.player: p for p in host.status().players}["hugo"]
    finally:
        sim.stop()
    restarts = status.fallbacks.get("session.restarted", 0)
    assert 1 <= restarts <= watched / RESTART_AFTER_S + 1, (restarts, watched)
    ended = [r for r in caplog.records if "the session ended by itself" in r.getMessage()]
    assert len(ended) == restarts and "a defect in every session" in ended[0].getMessage()


def test_a_session_that_fails_is_replaced_and_the_player_keeps_the_music(
    host: PlayerHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metabgm_edge import scheduler

    real = scheduler.Session._process
    failed: list[int] = []

    def process_once_broken(self, seg, now):  # type: ignore[no-untyped-def]
        if seg.index == 2 and not failed:  # the first session's third segment: a defect
            failed.append(seg.index)
            raise RuntimeError("a defect in the session")
        return real(self, seg, now)

    monkeypatch.setattr(scheduler.Session, "_process", process_once_broken)
    sim = players(host, ("gina", "ocean"))
    try:
        wait_for(lambda: host.players() == ["gina"])
        c = client(host, "gina", tmp_path, duration=16.0, fmt="pcm16")
        run([c])
        status = {p.player: p for p in host.status().players}["gina"]
    finally:
        sim.stop()
    assert failed == [2]
    assert status.fallbacks.get("session.restarted") == 1, status
    st = c.stats
    assert st.connections == 1 and st.seconds >= 15.9  # the same connection all along
    # Music after the failure: segments of the new session were heard on the same stream, in order.
    at = [h.at for h in st.segments]
    assert at == sorted(at) and at[-1] > 10.0, st.segments
    audio, _ = read_wav(c.out)
    quiet = [r for r in serve_helpers.silent_runs(audio) if r[0] > 0.5]
    assert sum(length for _, length in quiet) < 4.0, quiet  # the new session's first segment: a short gap
