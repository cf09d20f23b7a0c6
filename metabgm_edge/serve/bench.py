"""``metabgm-edge bench serve``: how many players ``serve`` keeps up with here.

Everything is started by the bench itself, on loopback: a local Ray (all of this machine's CPUs,
no dashboard), the ``serve`` application from the config (the bundled one by default, with the
``--text`` / ``--audio`` backends), and for each player count N: N simulated players, each in its
own scene (:data:`~metabgm_edge.serve.players.SCENES` in turn) sending over UDP, and N
``listen`` clients (in this process, null sinks paced like a device). Each player is attacked by a
zombie half-way through (the same moment for all of them: the worst case for the shared
deployments), and the time from that state to the moment the combat music reaches the player's
sink is the player's scene-change latency (network and jitter buffer included).

Per N it reports: deadline misses (segments whose audio was late, all players), audio continuity
per player (seconds of silence the player heard from the network, the mixer's starvations,
frames lost), the processing time per segment (state window closed to audio queued) p50/p95, the
scene-change latency p50/max, the shared deployments' calls and how many were batches, and memory
(the RSS of the Players replica per player, and of the three replicas together).

``--batching both`` runs the counts with batching on, then again with ``max_batch_size: 1``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import numpy as np

from metabgm_edge.bench import Machine, machine_info

WARMUP_S: Final = 6.0
"""Seconds the players send before their listeners start (sessions start, first segments)."""


class PlayerRun(msgspec.Struct, kw_only=True):
    player: str
    scene: str
    segments: int
    deadline_misses: int
    silence_s: float
    """Seconds of silence the listener played because the network delivered nothing."""
    starvations: int
    lost_s: float
    reconnects: int
    change_latency_s: float | None
    """Zombie attack to the combat music at the player's sink; None: not heard within the run."""


class RoundResult(msgspec.Struct, kw_only=True):
    players: int
    batching: bool
    duration_s: float
    deadline_misses: int
    segments: int
    continuous: bool
    """Every player heard music throughout: no network silence, no mixer starvation, no loss."""
    processing_p50_s: float
    processing_p95_s: float
    change_latency_p50_s: float | None
    change_latency_max_s: float | None
    text_calls: int
    text_batched: int
    audio_calls: int
    audio_batched: int
    players_rss_mib: float
    rss_per_player_mib: float
    replicas_rss_mib: float
    load_average: list[float] | None
    per_player: list[PlayerRun]


class ServeBenchResult(msgspec.Struct, kw_only=True):
    machine: Machine
    text: str
    audio: str
    interval: float
    format: str
    rounds: list[RoundResult]
    max_players_without_miss: dict[str, int]
    """Per batching mode ("on"/"off"): the largest N run with no deadline miss and continuous audio."""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:  # a replica that restarted
        return math.nan


def _batched(sizes: list[int]) -> tuple[int, int]:
    return len(sizes), sum(1 for n in sizes if n > 1)


def run_round(handle: Any, udp_port: int, n: int, *, batching: bool, duration: float, fmt: str,
              idle_rss: float, tag: str, echo: Callable[[str], None]) -> RoundResult:  # fmt: skip
    from metabgm_edge.serve import runner
    from metabgm_edge.serve.listen import ListenClient
    from metabgm_edge.serve.players import SCENES, SimPlayer, SimPlayers

    players = [SimPlayer(f"{tag}p{i}", SCENES[i % len(SCENES)], seed=i) for i in range(n)]
    sim = SimPlayers(f"udp://127.0.0.1:{udp_port}", players)
    before = handle.backends.remote().result(timeout_s=60)
    sim.start()
    clients: list[ListenClient] = []
    try:
        deadline = time.monotonic() + 60 + 2 * n
        while True:
            st = runner.status(handle)
            if {p["player"] for p in st["players"]} >= {p.player for p in players}:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(st['players'])} of {n} players joined in time")
            time.sleep(0.5)
        time.sleep(WARMUP_S)
        url = st["audio_url"].rsplit("/", 1)[0]
        tokens = st["tokens"]
        options = {"use_device": False, "fmt": fmt, "duration": duration}
        clients = [ListenClient(f"{url}/{p.player}", token=tokens[p.player], **options) for p in players]
        threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
        for t in threads:
            t.start()
        attack = time.monotonic() + duration / 2
        for p in players:
            p.attack_at = attack
        for t in threads:
            t.join(timeout=duration + 60)
        st = runner.status(handle)
        after = handle.backends.remote().result(timeout_s=60)
    finally:
        sim.stop()
        for c in clients:
            c.stop()
    by_player = {p["player"]: p for p in st["players"]}
    runs: list[PlayerRun] = []
    processing: list[float] = []
    for p, c in zip(players, clients, strict=True):
        s = by_player.get(p.player, {})
        processing += [float(x) for x in s.get("processing_s", [])]
        combat = [h for h in c.stats.segments if h.info.get("combat")]
        latency = combat[0].heard_monotonic - p.attacked_since if combat and p.attacked_since else None
        runs.append(PlayerRun(
            player=p.player, scene=p.scene, segments=int(s.get("segments", 0)),
            deadline_misses=int(s.get("deadline_misses", 0)), silence_s=round(c.stats.underrun_seconds, 3),
            starvations=int(s.get("starvations", 0)), lost_s=round(c.stats.lost_frames / 32000, 3),
            reconnects=c.stats.reconnects, change_latency_s=None if latency is None else round(latency, 3),
        ))  # fmt: skip
    latencies = [r.change_latency_s for r in runs if r.change_latency_s is not None]
    t_calls, t_b = (a - b for a, b in zip(_batched(after["text"]["batch_sizes"]),
                                          _batched(before["text"]["batch_sizes"]), strict=True))  # fmt: skip
    a_calls, a_b = (a - b for a, b in zip(_batched(after["audio"]["batch_sizes"]),
                                          _batched(before["audio"]["batch_sizes"]), strict=True))  # fmt: skip
    players_rss = _rss_mib(int(st["pid"]))
    replicas = players_rss + _rss_mib(int(after["text"]["pid"])) + _rss_mib(int(after["audio"]["pid"]))
    result = RoundResult(
        players=n, batching=batching, duration_s=duration, segments=sum(r.segments for r in runs),
        deadline_misses=sum(r.deadline_misses for r in runs),
        continuous=all(r.silence_s == 0 and r.starvations == 0 and r.lost_s == 0 for r in runs),
        processing_p50_s=round(float(np.percentile(processing, 50)), 3) if processing else math.nan,
        processing_p95_s=round(float(np.percentile(processing, 95)), 3) if processing else math.nan,
        change_latency_p50_s=round(float(np.median(latencies)), 3) if latencies else None,
        change_latency_max_s=round(max(latencies), 3) if latencies else None,
        text_calls=t_calls, text_batched=t_b, audio_calls=a_calls, audio_batched=a_b,
        players_rss_mib=round(players_rss, 1), rss_per_player_mib=round((players_rss - idle_rss) / n, 2),
        replicas_rss_mib=round(replicas, 1), load_average=machine_info().load_average, per_player=runs,
    )  # fmt: skip
    echo(format_round(result))
    return result


def _warm_up(handle: Any, udp_port: int, interval: float) -> None:
    from metabgm_edge.serve import runner
    from metabgm_edge.serve.players import SimPlayer, SimPlayers

    sim = SimPlayers(f"udp://127.0.0.1:{udp_port}", [SimPlayer("warmup", "forest")])
    sim.start()
    try:
        deadline = time.monotonic() + 60 + interval
        while time.monotonic() < deadline:
            players = runner.status(handle)["players"]
            if players and players[0]["segments"] >= 2:
                break
            time.sleep(0.5)
    finally:
        sim.stop()
    _wait_until_empty(handle, 30.0)


def _wait_until_empty(handle: Any, timeout: float) -> None:
    from metabgm_edge.serve import runner

    deadline = time.monotonic() + timeout
    while runner.status(handle)["players"] and time.monotonic() < deadline:
        time.sleep(0.5)


def run_serve_bench(
    counts: list[int],
    *,
    duration: float = 60.0,
    text: str = "composer",
    audio: str = "synth",
    batching: str = "on",
    config_path: str | None = None,
    interval: float = 10.0,
    fmt: str = "opus",
    stop_at_miss: bool = True,
    echo: Callable[[str], None] = print,
) -> ServeBenchResult:
    from metabgm_edge.serve import runner

    udp, audio_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    overrides = {"text": text, "audio": audio, "interval": interval, "forget": 5.0, "audio_format": fmt}
    config = runner.load_config(config_path, source=f"udp://127.0.0.1:{udp}",
                                audio_listen=f"127.0.0.1:{audio_port}", overrides=overrides)  # fmt: skip
    modes = {"on": [True], "off": [False], "both": [True, False]}[batching]
    info = runner.start_ray(None, num_cpus=os.cpu_count() or 1, dashboard=False)
    echo(f"{info['what']}; text {text}, audio {audio}, {interval:g} s segments, {fmt}")
    rounds: list[RoundResult] = []
    best: dict[str, int] = {}
    try:
        handle = runner.deploy(config)
        for k, on in enumerate(modes):
            if k or not on:
                for name in ("Text", "Audio"):
                    default = {"Text": 8, "Audio": 4}[name]
                    runner.reconfigure(config, name, {"max_batch_size": default if on else 1})
            mode = "on" if on else "off"
            best[mode] = 0
            if not k:  # one player first, unmeasured: the replicas' first segments import and warm up
                _warm_up(handle, udp, interval)
            for n in counts:
                idle = _rss_mib(int(runner.status(handle)["pid"]))
                r = run_round(handle, udp, n, batching=on, duration=duration, fmt=fmt, idle_rss=idle,
                              tag=f"b{mode}n{n}", echo=echo)  # fmt: skip
                rounds.append(r)
                _wait_until_empty(handle, 30.0)
                if r.deadline_misses == 0 and r.continuous:
                    best[mode] = n
                elif stop_at_miss:
                    break
    finally:
        runner.shutdown(local=True)
    return ServeBenchResult(machine=machine_info(), text=text, audio=audio, interval=interval, format=fmt,
                            rounds=rounds, max_players_without_miss=best)  # fmt: skip


def _s(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


HEADER: Final = (
    f"{'N':>3} {'batch':>5} {'misses':>6} {'cont.':>5} {'silence':>7} {'proc p50':>8} {'p95':>5} "
    f"{'change p50':>10} {'max':>5} {'text calls':>10} {'audio calls':>11} {'MiB/pl':>6} {'replicas':>8} "
    f"{'load':>5}"
)


def format_round(r: RoundResult) -> str:
    silence = sum(p.silence_s for p in r.per_player)
    load = f"{r.load_average[0]:.1f}" if r.load_average else "-"
    return (
        f"{r.players:>3} {'on' if r.batching else 'off':>5} {r.deadline_misses:>6} "
        f"{'yes' if r.continuous else 'NO':>5} {silence:>6.2f}s {_s(r.processing_p50_s):>8} "
        f"{_s(r.processing_p95_s):>5} {_s(r.change_latency_p50_s):>10} {_s(r.change_latency_max_s):>5} "
        f"{f'{r.text_calls}/{r.text_batched}b':>10} {f'{r.audio_calls}/{r.audio_batched}b':>11} "
        f"{r.rss_per_player_mib:>6.1f} {r.replicas_rss_mib:>7.0f}M {load:>5}"
    )


def format_serve_table(result: ServeBenchResult) -> str:
    m = result.machine
    lines = [
        f"bench serve: text {result.text}, audio {result.audio}, {result.interval:g} s segments, "
        f"{result.format}; {m.cpu_model} ({m.usable_cpus} CPUs), load {m.load_average}",
        HEADER,
        *(format_round(r) for r in result.rounds),
        "players without a deadline miss (continuous audio): "
        + ", ".join(f"batching {k}: {v}" for k, v in result.max_players_without_miss.items()),
        "misses: late segments, all players; silence: network silence heard, all players; proc: state "
        "window to audio queued (s); change: zombie attack to combat music at the sink (s); calls: "
        "all/batched (b); MiB/pl: Players replica RSS per player",
    ]
    return "\n".join(lines)
