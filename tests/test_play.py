"""`play`: the scheduler end to end, its fallbacks, Ctrl-C, and a real output device."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from audio_device import PulseSink, locate, pulse_null_sink_fixture, stop_recording  # noqa: F401 (fixture)

from metabgm_edge.audio import open_audio_backend
from metabgm_edge.playback.wav import read_wav
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import open_source
from metabgm_edge.text import StageRequest
from metabgm_edge.text.composer import Composer

SR = 32000
XFADE = 0.5


def session(tmp_path: Path, *, text=None, audio=None, source="sim:tour?leg=10", **opts) -> Session:
    options = PlayOptions(fast=opts.pop("fast", True), **opts)
    return Session(
        open_source(source, seed=1),
        text or Composer(),
        audio or open_audio_backend("synth"),
        options=options,
        out=tmp_path / "out.wav",
        log_path=tmp_path / "log.jsonl",
    )


def records(tmp_path: Path) -> list[SegmentRecord]:
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert '"summary"' in lines[-1]  # the session's totals close the log
    return [msgspec.json.decode(line, type=SegmentRecord) for line in lines[:-1]]


def bpm(text: str) -> int:
    found = re.search(r"(\d+) BPM", text)
    assert found, text
    return int(found.group(1))


def join_times(recs: list[SegmentRecord]) -> list[float]:
    """Audio times (s) where one segment joins another, replayed from the log (fast mode)."""
    joins, end = [], 0.0
    for rec in recs:
        if rec.join == "start":
            end = rec.audio_seconds
        elif rec.join == "append":
            joins.append(end)
            end += rec.audio_seconds
        elif rec.join == "transition":
            joins.append(rec.queued_at)
            end = rec.queued_at + rec.audio_seconds
    return joins


def longest_silence(audio: np.ndarray, floor: float = 1e-4) -> float:
    quiet = np.abs(audio).max(axis=1) < floor
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best / SR


def test_sixty_seconds_of_the_tour(tmp_path: Path) -> None:
    stats = session(tmp_path, duration=60.0, source="sim:tour?leg=15").run()
    audio, info = read_wav(tmp_path / "out.wav")
    assert info.sample_rate == SR and audio.shape == (60 * SR, 2)
    assert stats.underruns == 0 and stats.starvations == 0 and stats.deadline_misses == 0
    assert stats.fallbacks == {}
    recs = records(tmp_path)
    assert recs[0].join == "start" and recs[0].end == 0.0
    assert [r.end for r in recs if r.trigger == "interval"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert recs[-1].trigger == "combat_start" and recs[-1].end == 60.0  # the combat leg begins
    # The descriptions follow the scenes: forest at first, then dusk to night, then the storm.
    by_biome = {r.state.scene.biome: r.description for r in recs}
    assert {"forest", "plains", "taiga", "mountains"} <= set(by_biome)
    assert "major" in recs[1].description
    night = [r for r in recs if r.state.time.resolved_phase() == "night"]
    assert night and all("minor" in r.description for r in night)
    stormy = [r for r in recs if r.state.weather.state in ("rain", "thunder")]
    assert stormy and stormy[-1].description != recs[1].description
    # Audio is music, not silence, and no join clicks.
    assert longest_silence(audio) < XFADE
    assert float(np.sqrt(np.mean(audio**2))) > 0.01
    assert np.abs(audio).max() < 1.0
    diff = np.abs(np.diff(audio, axis=0)).max(axis=1)
    for t in join_times(recs):
        at = round(t * SR)
        if at + SR // 10 >= diff.shape[0]:
            continue
        at_join = diff[at - 32 : at + 32].max()
        around = np.concatenate([diff[at - SR // 10 : at - SR // 100], diff[at + SR // 100 : at + SR // 10]])
        assert at_join <= 1.5 * around.max() + 1e-4, f"click at {t:.2f} s: {at_join:.4f} vs {around.max()}"


def test_combat_and_the_nether_change_the_music_at_once(tmp_path: Path) -> None:
    session(tmp_path, duration=60.0, source="sim:tour?leg=8").run()
    recs = records(tmp_path)
    start = next(r for r in recs if r.trigger == "combat_start")
    assert start.join == "transition" and start.combat
    calm = [r for r in recs if not r.combat and r.state.scene.dimension == "overworld"]
    assert bpm(start.description) > max(bpm(r.description) for r in calm)
    nether = next(r for r in recs if r.trigger == "dimension")
    assert nether.state.scene.dimension == "the_nether" and nether.join == "transition"
    # A sharp change is queued the moment its window closes (fast mode: on the game clock).
    assert start.queued_at == start.end and nether.queued_at == nether.end


def test_same_seed_same_session(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    session(a, duration=24.0).run()
    session(b, duration=24.0).run()
    assert [r.description for r in records(a)] == [r.description for r in records(b)]
    np.testing.assert_array_equal(read_wav(a / "out.wav")[0], read_wav(b / "out.wav")[0])


class Raising:
    name = "raising"

    def generate(self, request: StageRequest) -> str:
        raise RuntimeError("model exploded")


class Hanging:
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def generate(self, request: StageRequest) -> str:
        self.release.wait(60)
        return "too late"


def test_a_text_backend_that_raises_is_replaced_by_the_composer(tmp_path: Path) -> None:
    stats = session(tmp_path, text=Raising(), duration=30.0).run()
    recs = records(tmp_path)
    assert stats.fallbacks["text.narrative.error"] == len(recs)
    assert stats.fallbacks["text.description.error"] == len(recs)
    assert all(r.description and r.narrative for r in recs)
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] == 30 * SR and longest_silence(audio) < XFADE
    assert stats.starvations == 0


def test_a_text_backend_that_hangs_misses_its_deadline_and_the_music_goes_on(tmp_path: Path) -> None:
    hanging = Hanging()
    try:
        t0 = time.monotonic()
        stats = session(tmp_path, text=hanging, duration=12.0, interval=2.0).run()
        took = time.monotonic() - t0
    finally:
        hanging.release.set()
    recs = records(tmp_path)
    # The first call waits out its share of the deadline; later ones fail at once while it hangs.
    assert took < 10
    assert stats.fallbacks["text.narrative.deadline"] == len(recs)
    assert stats.deadline_misses == len(recs)
    assert all(r.missed_deadline and "text.narrative.deadline" in r.fallbacks for r in recs)
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] == 12 * SR and longest_silence(audio) < XFADE


class FlakyAudio:
    """The synthesizer behind the audio interface, failing on chosen segments (by the request's
    seed, which is the segment's index in these sessions; a segment's extension to its next bar
    line has its seed too)."""

    name = "flaky"
    kind = "synth"

    def __init__(self, fail_on: set[int]) -> None:
        self.synth = open_audio_backend("synth")
        self.sample_rate, self.channels = self.synth.sample_rate, self.synth.channels
        self.fail_on = fail_on
        self.calls = 0

    def stream(self, request):
        self.calls += 1
        if request.seed in self.fail_on:
            raise RuntimeError("GPU fell off the bus")
        yield from self.synth.stream(request)

    def anchor_from_bytes(self, data):
        return self.synth.anchor_from_bytes(data)

    def realtime_factor(self):
        return self.synth.realtime_factor()


def test_an_audio_backend_that_raises_extends_the_previous_segment(tmp_path: Path) -> None:
    flaky = FlakyAudio(fail_on={1, 2})  # segment 0: the start segment
    stats = session(tmp_path, audio=flaky, duration=50.0, source="sim:forest").run()
    recs = records(tmp_path)
    assert stats.fallbacks == {"audio.error": 2}
    assert [r.join for r in recs[1:3]] == ["extend", "extend"]
    assert recs[3].join == "append" and recs[3].audio_backend == "flaky"
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] == 50 * SR
    assert longest_silence(audio) < XFADE and stats.starvations == 0


def test_an_audio_backend_that_keeps_failing_is_replaced_by_the_synth(tmp_path: Path) -> None:
    broken = FlakyAudio(fail_on=set(range(1, 100)))
    stats = session(tmp_path, audio=broken, duration=60.0, source="sim:forest").run()
    recs = records(tmp_path)
    assert stats.fallbacks["audio.replaced"] == 1 and stats.fallbacks["audio.error"] == 3
    assert recs[-1].audio_backend == "synth" and recs[-1].join == "append"
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio) < XFADE and stats.starvations == 0


@pytest.mark.slow
def test_real_time_session_without_a_device_keeps_time(tmp_path: Path) -> None:
    s = Session(
        open_source("sim:forest"), Composer(), open_audio_backend("synth"),
        options=PlayOptions(interval=2.0, duration=5.0, sample_period=0.5),
        out=tmp_path / "out.wav", use_device=False,
    )  # fmt: skip
    t0 = time.monotonic()
    stats = s.run()
    took = time.monotonic() - t0
    assert 5.0 <= took < 12.0
    assert stats.sink == "file" and stats.underruns == 0 and stats.starvations == 0
    assert stats.segments >= 3 and stats.deadline_misses == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] >= 4 * SR and longest_silence(audio[: 4 * SR]) < XFADE


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_wav_is_valid(tmp_path: Path) -> None:
    out, log = tmp_path / "out.wav", tmp_path / "log.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metabgm_edge", "play", "--interval", "2", "--out", out, "--log", log],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "played" in stdout
    audio, info = read_wav(out)
    assert info.sample_rate == SR and audio.shape[0] > 2 * SR
    assert all(msgspec.json.decode(line) for line in log.read_text().splitlines())


def _interrupt(
    args: list[str], log: Path, env: dict[str, str], source_feed: Any = None
) -> tuple[int, str, str]:
    """Start ``play``, wait for three segments in its log, press Ctrl-C (SIGINT)."""
    proc = subprocess.Popen([sys.executable, "-m", "metabgm_edge", "play", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip
    stop = threading.Event()
    feeder = threading.Thread(target=source_feed, args=(stop,), daemon=True) if source_feed else None
    if feeder is not None:
        feeder.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "live source"])
def test_ctrl_c_in_every_mode_leaves_a_valid_wav_and_log(tmp_path: Path, mode: str) -> None:
    import json
    import socket

    import soundfile

    out, log = tmp_path / "out.wav", tmp_path / "log.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    common = ["--text", "composer", "--interval", "2", "--out", str(out), "--log", str(log)]
    feed = None
    if mode == "fast":
        args = [*common, "--fast", "--duration", "100000"]  # it would run for a long while
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = [*common, "--source", f"udp://127.0.0.1:{port}", "--sample-period", "0.5"]
        message = json.dumps({"v": 1, "scene": {"biome": "desert"}, "temperature": 2.0}).encode()

        def feed(stop: threading.Event) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                while not stop.is_set():
                    s.sendto(message, ("127.0.0.1", port))
                    stop.wait(0.2)

    code, stdout, stderr = _interrupt(args, log, env, feed)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "played" in stdout
    info = soundfile.info(str(out))  # the header was finalised: a strict reader agrees
    assert info.samplerate == SR and info.frames > 2 * SR
    lines = log.read_text().splitlines()
    assert all(msgspec.json.decode(line) for line in lines)
    assert '"summary"' in lines[-1]  # the totals were written on the way out


@pytest.mark.slow
@pytest.mark.audio_device
def test_ctrl_c_on_a_real_device(pulse_null_sink: PulseSink, tmp_path: Path) -> None:
    import soundfile

    out, log = tmp_path / "out.wav", tmp_path / "log.jsonl"
    args = ["--text", "composer", "--interval", "2", "--out", str(out), "--log", str(log)]
    code, stdout, stderr = _interrupt(args, log, pulse_null_sink.env)
    assert code == 0, stderr
    assert "on device" in stdout and "Traceback" not in stderr
    assert soundfile.info(str(out)).frames > 2 * SR


@pytest.mark.audio_device
def test_play_on_a_real_device_plays_what_the_wav_holds(pulse_null_sink: PulseSink, tmp_path: Path) -> None:
    captured = tmp_path / "captured.wav"
    s = Session(
        open_source("sim:tour?leg=4"), Composer(), open_audio_backend("synth"),
        options=PlayOptions(interval=2.0, duration=6.0, sample_period=0.5),
        out=tmp_path / "out.wav",
    )  # fmt: skip
    recorder = pulse_null_sink.record(captured)
    try:
        time.sleep(0.5)
        stats = s.run()
        time.sleep(0.5)
    finally:
        stop_recording(recorder)
    assert stats.sink == "device", stats
    played = read_wav(tmp_path / "out.wav")[0]
    heard = read_wav(captured)[0]
    assert played.shape[0] >= 5 * SR
    offset = locate(played[SR : SR + 4096], heard, SR, heard.shape[0]) - SR
    chunk, matched, total = SR // 20, 0, 0
    for i in range(SR // 50, played.shape[0] - chunk - SR // 2, chunk):
        ref = played[i : i + chunk]
        if np.abs(ref).max() < 1e-4:
            continue
        total += 1
        at = locate(ref, heard, offset + i, radius=SR // 2)
        if at is None or at + chunk > heard.shape[0]:
            continue
        if np.abs(heard[at : at + chunk] - ref).max() <= 1e-6:
            matched += 1
            offset = at - i
    allowed = 0 if stats.device_underflows == 0 else min(total // 10, 3 * stats.device_underflows)
    assert total > 50 and matched >= total - allowed, f"{matched}/{total} chunks bit-exact"


class SlowAudio(FlakyAudio):
    """The synthesizer made to render at half real time (as MusicGen does on a CPU)."""

    name = "slow"

    def __init__(self, speed: float = 0.5, channels: int = 2) -> None:
        super().__init__(fail_on=set())
        self.speed = speed
        if channels != self.channels:  # a mono model, as musicgen-small is
            self.synth = open_audio_backend("synth", channels=channels)
            self.channels = channels

    def stream(self, request):
        t0 = time.monotonic()
        for chunk in self.synth.stream(request):
            time.sleep(max(0.0, (request.seconds + request.tail) / self.speed - (time.monotonic() - t0)))
            yield chunk

    def realtime_factor(self):
        return self.speed


@pytest.mark.slow
@pytest.mark.parametrize("channels", [2, 1])
def test_a_backend_slower_than_real_time_lets_the_synthesizer_play(tmp_path: Path, caplog, channels) -> None:
    slow = SlowAudio(0.5, channels=channels)
    s = Session(
        open_source("sim:forest"), Composer(), slow,
        options=PlayOptions(interval=2.0, duration=6.0, sample_period=0.5, if_slow="synth"),
        out=tmp_path / "out.wav", log_path=tmp_path / "log.jsonl", use_device=False,
    )  # fmt: skip
    stats = s.run()
    assert stats.fallbacks.get("audio.too_slow") == 1 and stats.audio_policy == "synth"
    assert stats.audio_realtime_factor == 0.5
    assert "0.50 s of audio per second" in caplog.text and "synthesizer plays instead" in caplog.text
    recs = records(tmp_path)
    assert recs and all(r.audio_backend == "synth" for r in recs) and slow.calls == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[1] == channels  # the synthesizer stands in, in the model's format
    assert longest_silence(audio[SR // 2 :]) < XFADE and stats.deadline_misses == 0


@pytest.mark.slow
def test_a_backend_slower_than_real_time_queued_is_heard_late_without_silence(tmp_path: Path, caplog) -> None:
    slow = SlowAudio(0.5)
    s = Session(
        open_source("sim:forest"), Composer(), slow,
        options=PlayOptions(interval=2.0, duration=16.0, sample_period=0.5, if_slow="queue"),
        out=tmp_path / "out.wav", log_path=tmp_path / "log.jsonl", use_device=False,
    )  # fmt: skip
    stats = s.run()
    assert stats.audio_policy == "queue" and "heard about 4 s after its scene" in caplog.text
    recs = records(tmp_path)
    assert len(recs) >= 2 and all(r.audio_backend == "slow" for r in recs)
    assert not any(f.startswith("audio.deadline") or f == "audio.error" for r in recs for f in r.fallbacks)
    assert stats.fallbacks.get("audio.late_extend", 0) >= 1  # the music before repeats while it renders
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio[SR // 2 :]) < XFADE and stats.starvations == 0
