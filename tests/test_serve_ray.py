"""``metabgm-edge serve`` on a real Ray instance, as an operator runs it: the command starts a small
local Ray itself (2 CPUs, no dashboard, a 256 MB object store) and deploys the bundled Ray Serve
config on the embedded defaults (composer + synthesizer). Four simulated players in different
scenes send their states over UDP with their player ids; three ``metabgm-edge listen`` clients
receive their music over WebSocket on loopback (one through a proxy that is cut once); the fourth
player quits the game. Meanwhile the Audio replica is killed (Ray starts another; the players hear
the fallback, not silence) and a client with a wrong token is turned away.

What a player notices: their own scene's music (the segments' metadata and the key of the audio),
continuous, segment after segment. What the operator notices: requests from several players
batched by the shared deployments, a player who left is forgotten, one status line per player.

No skip: Ray is part of the test extra, and a Ray that cannot start fails the test (``serve`` exits
before it says it is serving). Ray is not imported into the test process itself.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import serve_helpers
import yaml

from metabgm_edge.playback.wav import read_wav
from metabgm_edge.serve.players import SimPlayer, SimPlayers

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).with_name("metabgm-edge")
LINE = re.compile(
    r"^\[\s*(?P<at>[\d.]+) s\] (?P<trigger>\S+)\s+(?P<scene>.*?)\s+\| (?P<description>.*?)"
    r"(?: \[(?P<fb>[^\]]*)\])?$"
)
JOINED = re.compile(r"^player (\S+) joined: metabgm-edge listen (\S+) --token (\S+)$")
BACKENDS = re.compile(r"text .*?: (?P<text>\d+) calls \((?P<text_b>\d+) batched\).*; audio .*?: "
                      r"(?P<audio>\d+) calls \((?P<audio_b>\d+) batched\)")  # fmt: skip
BIOMES = {"alice": "ocean", "bob": "mountains", "carol": "forest"}
INTERVAL = 4.0
LISTEN_S = 26.0
SR = 32000


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replicas(name: str, root: int) -> list[psutil.Process]:
    """The test's own replicas named ``name``: processes under ``root`` (another Ray Serve on the
    machine has replicas of the same name)."""
    out = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if f"ServeReplica:metabgm:{name}" in cmd:
            out.append(p)
    return out


class Reader:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, proc: subprocess.Popen[str], deadline: float, what: str) -> None:  # type: ignore[no-untyped-def]
        while not predicate(self.lines):
            tail = "\n".join(self.lines[-30:])
            assert proc.poll() is None, f"serve exited ({proc.returncode}) waiting for {what}:\n{tail}"
            assert time.monotonic() < deadline, f"no {what} in time:\n{tail}"
            time.sleep(0.2)


def config(tmp_path: Path) -> Path:
    """The bundled config, with 4 s segments, a short forget timeout and small CPU shares."""
    cfg = yaml.safe_load((Path(__file__).parent.parent / "metabgm_edge" / "serve" / "serve.yaml").read_text())
    app = cfg["applications"][0]
    app["args"].update({"interval": INTERVAL, "forget": 5.0, "retry_audio_after": 8.0})
    for dep in app["deployments"]:
        dep["ray_actor_options"]["num_cpus"] = {"Text": 0.25, "Audio": 0.5, "Players": 0.25}[dep["name"]]
        if dep["name"] in ("Text", "Audio"):  # players whose segments start together are batched
            dep["user_config"]["batch_wait_timeout_s"] = 0.25
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_serve_many_players_on_ray(tmp_path: Path) -> None:
    udp, audio_port = free_port(socket.SOCK_DGRAM), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        str(BIN), "serve", "--config", str(config(tmp_path)), "--source", f"udp://127.0.0.1:{udp}",
        "--audio-listen", f"127.0.0.1:{audio_port}", "--num-cpus", "2", "--no-dashboard",
        "--status-every", "3", "--duration", "150",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=tmp_path, start_new_session=True)  # fmt: skip
    out = Reader(server)
    family: list[psutil.Process] = []
    sim = SimPlayers(
        f"udp://127.0.0.1:{udp}",
        [SimPlayer("alice", "ocean"), SimPlayer("bob", "cave", seed=1), SimPlayer("carol", "forest", seed=2),
         SimPlayer("erin", "desert", seed=3)],
    )  # fmt: skip
    proxy = None
    listeners: list[tuple[str, subprocess.Popen[str], Reader]] = []
    wrong = None
    try:
        deadline = time.monotonic() + 120
        out.wait_for(lambda ls: any(line.startswith("serving:") for line in ls), server, deadline, "serving")
        family = [server, *psutil.Process(server.pid).children(recursive=True)]
        sim.start()
        joined: dict[str, tuple[str, str]] = {}

        def all_joined(lines: list[str]) -> bool:
            found = (m for line in lines if (m := JOINED.match(line)))
            joined.update({m.group(1): (m.group(2), m.group(3)) for m in found})
            return len(joined) == 4

        out.wait_for(all_joined, server, deadline, "four players joining")
        sim.players[3].paused = True  # erin quits the game: forgotten after 5 s
        proxy = serve_helpers.CuttingProxy(("127.0.0.1", audio_port))
        for player in ("alice", "bob", "carol"):
            url, token = joined[player]
            if player == "carol":  # carol's connection goes through a proxy that is cut
                url = url.replace(f":{audio_port}/", f":{proxy.port}/")
            proc = subprocess.Popen(
                [str(BIN), "listen", url, "--token", token, "--out", str(tmp_path / f"{player}.wav"),
                 "--duration", str(LISTEN_S)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            )  # fmt: skip
            listeners.append((player, proc, Reader(proc)))
        wrong = subprocess.run(
            [str(BIN), "listen", joined["bob"][0], "--token", "not-" + joined["bob"][1], "--out",
             str(tmp_path / "intruder.wav"), "--duration", "5"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        t0 = time.monotonic()
        [audio_replica] = replicas("Audio", server.pid)
        time.sleep(max(0.0, 8.0 - (time.monotonic() - t0)))
        proxy.cut()
        time.sleep(2.0)
        audio_replica.send_signal(signal.SIGKILL)  # Ray must start another one
        for _, proc, _ in listeners:
            proc.wait(timeout=LISTEN_S + 60)
        restarted = [p.pid for p in replicas("Audio", server.pid)]
    finally:
        sim.stop()
        if proxy is not None:
            proxy.close()
        for _, proc, _ in listeners:
            if proc.poll() is None:
                proc.kill()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        for p in family:  # nothing of Ray may outlive the test
            try:
                p.wait(timeout=20)
            except psutil.TimeoutExpired:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    log = "\n".join(out.lines)
    assert server.returncode == 0, log[-3000:]

    # A wrong token: one clear line, exit status 2, nothing played.
    assert wrong is not None and wrong.returncode == 2, (wrong.stdout, wrong.stderr)
    said = (wrong.stdout + wrong.stderr).splitlines()
    errors = [line for line in said if line.lower().startswith("error:")]
    assert len(errors) == 1 and "refused the token for player bob (HTTP 401)" in errors[0], wrong.stderr

    # Each player hears their own scene, segment after segment, without silence.
    assert restarted and audio_replica.pid not in restarted, "Ray did not start a new Audio replica"
    fallbacks_seen: list[str] = []
    descriptions: dict[str, list[str]] = {}
    segments: dict[str, list[tuple[float, bool]]] = {}
    for player, proc, reader in listeners:
        text = "\n".join(reader.lines)
        assert proc.returncode == 0, text[-2000:]
        heard = [m.groupdict() for line in reader.lines if (m := LINE.match(line))]
        # (a segment whose render failed is announced when it fails: a deadline later than its start)
        assert len(heard) >= LISTEN_S / INTERVAL - 2, text[-2000:]
        assert all(h["scene"].startswith(BIOMES[player]) for h in heard), (player, heard)  # not another's
        starts = [float(h["at"]) for h in heard]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert starts[0] < 1.5 and all(0 < g <= 2 * INTERVAL + 1 for g in gaps), text
        fallbacks_seen += [fb for h in heard if h["fb"] for fb in h["fb"].split(", ")]
        descriptions[player] = [h["description"] for h in heard]
        segments[player] = [(float(h["at"]), bool(h["fb"])) for h in heard]
        audio, info = read_wav(tmp_path / f"{player}.wav")
        assert info.sample_rate == SR and audio.shape[0] >= (LISTEN_S - 0.1) * SR
        quiet = [r for r in serve_helpers.silent_runs(audio) if r[0] > 0.5]
        if player == "carol":  # the cut connection: one reconnect, a short gap, then the music again
            assert sum(length for _, length in quiet) < 2.5, quiet
            assert ", 1 reconnects" in text, text[-500:]
        else:  # the killed replica is heard as the fallback (the previous music extended), not silence
            assert not [r for r in quiet if r[1] > 0.5], (player, quiet)
    assert {"audio.error", "audio.deadline"} & set(fallbacks_seen), (fallbacks_seen, log[-3000:])
    # The audio itself is each player's music: the pitch classes of what was rendered for their
    # segments fit the key its own descriptions name (A major, F minor, G major: keys far apart)
    # clearly better than every other player's key. (Not the fallback: after the replica's kill the
    # music is extended from its last bar for a few segments, often one chord held, which fits its
    # neighbour keys as well as its own: a CI run heard carol's G major hold on C major for 15 s.)
    keys = {p: {serve_helpers.described_key(d) for d in ds} for p, ds in descriptions.items()}
    assert all(len(k) == 1 and None not in k for k in keys.values()), keys
    assert len({next(iter(k)) for k in keys.values()}) == 3, keys
    for me in keys:
        audio, _ = read_wav(tmp_path / f"{me}.wav")
        music = serve_helpers.rendered(audio, segments[me])
        assert music.shape[0] >= INTERVAL * SR, (me, segments[me])
        got = serve_helpers.chroma(music)
        profiles = {p: serve_helpers.key_profile(next(iter(k))) for p, k in keys.items()}
        fit = {p: serve_helpers.similarity(got, profile) for p, profile in profiles.items()}
        assert all(fit[me] > fit[p] + 0.3 for p in fit if p != me), (me, fit)

    # The operator: the shared deployments batched several players' requests into one call.
    calls = [m.groupdict() for line in out.lines if (m := BACKENDS.search(line))]
    assert calls, log[-3000:]
    assert max(int(c["text_b"]) for c in calls) > 0 and max(int(c["audio_b"]) for c in calls) > 0, calls
    # erin, who quit, was forgotten (her session ended), the others kept playing.
    assert re.search(r"^player erin left \(not heard from for 5 s\)", log, re.M), log[-3000:]
    status = [line for line in out.lines if line.startswith("-- 3 players")]
    assert status and ", 1 left" in status[-1], log[-3000:]
    assert "deadline misses" in log and any(line.lstrip().startswith("alice ") for line in out.lines)


def test_bench_serve_reports_every_players_run_as_json(tmp_path: Path) -> None:
    """``bench serve`` as an operator runs it: it starts Ray, serve, simulated players and listen
    clients itself; stdout is the JSON result alone (progress goes to stderr), and each player's
    zombie attack is heard as combat music within the segment it happens in (a sharp change cuts
    in: it does not wait for the next window)."""
    interval = 8.0
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run(
        [str(BIN), "bench", "serve", "--players", "2", "--duration", "24", "--interval", str(interval),
         "--format", "pcm16", "--json", "--out", str(tmp_path / "bench.json")],
        capture_output=True, text=True, env=env, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # nothing but the JSON on stdout
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    assert "started a local Ray" in done.stderr
    [run] = result["rounds"]
    assert run["players"] == 2 and run["batching"] is True and len(run["per_player"]) == 2
    assert run["continuous"] and run["deadline_misses"] == 0, run
    assert run["text_calls"] > 0 and run["audio_calls"] > 0
    for p in run["per_player"]:
        assert p["segments"] >= 3 and p["silence_s"] == 0, p
        assert p["change_latency_s"] is not None and 0 < p["change_latency_s"] < interval, p
    assert result["max_players_without_miss"] == {"on": 2}
