"""`metabgm-edge bench`, and pytest-benchmark figures for the hot paths.

The suite runs with ``--benchmark-disable``: each benchmark then runs once, as a test (its
assertions still hold). ``pytest tests/test_bench.py --benchmark-enable`` gives the figures.
Speed targets live in the benchmarks and in ``bench``'s output, not in these assertions: the
bounds below are sanity checks that hold on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from audio_helpers import render
from click.testing import CliRunner

from metabgm_edge.acquisition import MIN_TRANSITION_GAP
from metabgm_edge.audio import SAMPLE_RATE, open_audio_backend
from metabgm_edge.bench import ScriptedChange, combat_state, pick_change_time
from metabgm_edge.characterize import characterize, in_combat, scene_data
from metabgm_edge.cli import main
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.session_log import SessionStats
from metabgm_edge.sources import open_source
from metabgm_edge.stages import MAX_WORDS, describe
from metabgm_edge.text.composer import Composer

STAGES = ("characterize", "narrative", "description", "audio", "total")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "-q",
            "bench",
            "--segments",
            "3",
            "--text",
            "composer",
            "--seed",
            "2",
            "--json",
            "--out",
            str(out),
            "--changes",
            "3",
            "--interval",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out, result.stdout


def test_bench_json_has_every_figure_with_plausible_values(bench_json: tuple[dict, Path, str]) -> None:
    data, _, _ = bench_json
    assert data["backends"] == {"text": "composer", "audio": "synth", "source": "sim:tour"}
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["cpu_model"]
    t = data["throughput"]
    assert t["segments"] == 3
    assert set(STAGES) <= set(t["stages"])
    for name in STAGES:
        p = t["stages"][name]
        assert p["max"] >= p["p95"] >= p["p50"] > 0, name
        assert p["n"] == 3
    assert t["stages"]["total"]["p50"] >= t["stages"]["audio"]["p50"]
    assert t["audio_seconds"] >= 3 * t["interval"] - 1.0  # each segment lasts about an interval
    assert t["real_time_factor"] == pytest.approx(t["audio_seconds"] / t["processing_seconds"])
    assert t["real_time_factor"] > 1  # the embedded defaults render faster than real time
    assert 0 < t["load"]["p50"] <= t["load"]["p95"]
    assert t["load"]["p50"] == pytest.approx(t["stages"]["total"]["p50"] / t["interval"])
    assert t["render_per_10s"]["p50"] > 0
    assert t["starvations"] == 0 and t["deadline_misses"] == 0
    assert data["peak_rss_mib"] > 30


def test_bench_measures_scene_change_to_audible(bench_json: tuple[dict, Path, str]) -> None:
    lat = bench_json[0]["latency"]
    assert lat["error"] is None, lat["error"]
    assert "audible_at - change_at" in lat["definition"]
    kinds = [(c["change"], c["kind"]) for c in lat["changes"]]
    assert kinds == [("dusk", "gradual"), ("night", "gradual"), ("combat_start", "sharp")]
    for c in lat["changes"]:
        assert c["lag"] == pytest.approx(c["audible_at"] - c["change_at"])
        assert c["after_close"] == pytest.approx(c["audible_at"] - c["closed_at"])
        assert c["closed_at"] >= c["change_at"] - 1e-9  # heard only after its window closed
        assert c["audible_at"] > c["closed_at"]
        assert 0 < c["after_close"] < 8  # sanity only; the targets are bench's figures, not unit tests
    for gradual in lat["changes"][:2]:
        assert gradual["trigger"] == "interval" and gradual["join"] == "append"
    for sharp in lat["changes"][2:]:
        assert sharp["trigger"] == sharp["change"] and sharp["join"] == "transition"
        assert sharp["closed_at"] - sharp["change_at"] <= lat["sample_period"] + 0.3  # cut at once
    assert lat["sharp"]["n"] == 1 and lat["gradual"]["n"] == 2 and lat["gradual_after_close"]["n"] == 2
    assert lat["seconds"] == pytest.approx(lat["changes"][2]["lag"])
    assert lat["sink"] == "null"
    assert lat["starvations"] == 0  # the music never ran dry in the real-time run
    assert isinstance(lat["underruns"], int) and lat["underruns"] >= 0


def test_bench_out_file_holds_the_same_json(bench_json: tuple[dict, Path, str]) -> None:
    data, out, _ = bench_json
    assert json.loads(out.read_text(encoding="utf-8")) == data


def test_bench_table_names_the_machine_backends_and_figures() -> None:
    result = CliRunner().invoke(
        main, ["-q", "bench", "--segments", "2", "--text", "composer", "--no-latency"]
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in ("machine", "CPUs", "text composer, audio synth", "p50 ms", "p95 ms", "audio", "total",
                   "real-time factor", "load p50 / p95", "render 10 s of audio", "peak RSS"):  # fmt: skip
        assert needle in text, needle
    assert "scene change->audible" not in text  # --no-latency skips the real-time run


def test_bench_refuses_a_live_source_and_bad_counts() -> None:
    live = CliRunner().invoke(main, ["bench", "--source", "udp://127.0.0.1:0", "--no-latency"])
    assert live.exit_code == 2
    assert "is live" in live.output
    zero = CliRunner().invoke(main, ["bench", "--segments", "0"])
    assert zero.exit_code == 2


def test_the_scripted_change_is_placed_between_samples_where_it_can_cut_in() -> None:
    for after, interval, period in [(2.7, 10.0, 1.0), (9.2, 10.0, 1.0), (0.4, 4.0, 0.5), (19.0, 10.0, 1.0)]:
        t = pick_change_time(after, interval, period)
        detect = t + period / 2
        assert t >= after
        assert math.isclose(detect / period, round(detect / period), abs_tol=1e-9)
        assert detect % interval > MIN_TRANSITION_GAP  # the window is old enough to be cut short
    src = ScriptedChange()
    assert not in_combat(src.sample(100.0))  # no change scheduled: calm
    src.schedule(105.5)
    assert src.sample(105.4).time.resolved_phase() == "day"
    assert src.sample(105.5).time.resolved_phase() == "dusk"  # the first step: dusk
    src.schedule(107.5)
    assert src.sample(107.5).time.resolved_phase() == "night"  # then nightfall
    src.schedule(110.5)
    assert not in_combat(src.sample(110.4))
    assert in_combat(src.sample(110.5))  # then combat
    again = ScriptedChange(12).steps
    assert [name for _, name, _ in again[9:12]] == ["health_drop", "dimension", "dusk"]  # back, a new round


# -- pytest-benchmark ------------------------------------------------------------------------------


@pytest.mark.benchmark(group="audio")
def test_benchmark_synth_renders_10_s(benchmark) -> None:
    synth = open_audio_backend("synth")
    description = (
        "Driving cinematic music at 140 BPM in A minor: thumping drums, wide strings, distorted bass."
    )
    audio, anchor = benchmark(render, synth, description, 10.0, None, tail=0.5, seed=1)
    assert audio.shape == (round(10.5 * SAMPLE_RATE), 2)
    assert float((audio**2).mean()) ** 0.5 > 0.01
    assert anchor is not None


@pytest.mark.benchmark(group="text")
def test_benchmark_composer_both_stages(benchmark) -> None:
    state = combat_state()
    result = benchmark(describe, state, Composer(), mode="two-stage", seed=4)
    assert result.narrative and result.description
    assert len(result.description.split()) <= MAX_WORDS
    assert result.combat


@pytest.mark.benchmark(group="text")
def test_benchmark_characterize(benchmark) -> None:
    state = combat_state()
    out = benchmark(lambda: characterize(scene_data(state), in_combat(state)))
    assert "Hostile Entity" in out and "Time" not in out  # the combat key set


@pytest.mark.benchmark(group="session")
def test_benchmark_fast_session_60_s(benchmark) -> None:
    def run() -> SessionStats:
        session = Session(
            open_source("sim:tour?leg=15", seed=1),
            Composer(),
            open_audio_backend("synth"),
            options=PlayOptions(fast=True, duration=60.0, seed=1),
        )
        return session.run()

    stats = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    assert stats.seconds == pytest.approx(60.0)
    assert stats.segments >= 6
    assert stats.starvations == 0 and stats.deadline_misses == 0
