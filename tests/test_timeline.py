"""When a window's music is heard: the lead learned from stage times, the join at a bar line, and the
named fallbacks on the real clock (late music, hanging or failing backends, a busy machine)."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from metabgm_edge.audio import AudioChunk, AudioRequest, BarGrid, next_join_point, open_audio_backend
from metabgm_edge.playback.wav import read_wav
from metabgm_edge.scheduler import FAST_LEAD, LEAD_FACTOR, PlayOptions, Session
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import open_source
from metabgm_edge.text import StageRequest
from metabgm_edge.text.composer import Composer

SR = 32000
XFADE = 0.5
BAR = 2.4


class ToneAnchor:
    """Where a tone backend's music is: seconds of music before this point."""

    kind = "tone"

    def __init__(self, at: float) -> None:
        self.at = at

    def to_bytes(self) -> bytes:
        return repr(self.at).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ToneAnchor:
        return cls(float(data))

    def summary(self) -> str:
        return f"at {self.at:.2f} s"


class GridAnchor(ToneAnchor):
    """The same, with a bar grid: a bar every BAR seconds of music."""

    def bar_seconds(self) -> float:
        return BAR

    def beats_per_bar(self) -> int:
        return 4

    def seconds_to_bar(self) -> float:
        left = (-self.at) % BAR
        return 0.0 if left < 1e-6 or BAR - left < 1e-6 else left


class Tone:
    """An audio backend playing a steady tone, continuous across segments (its phase follows the
    anchor), optionally slow: ``delay`` before the first chunk, ``chunk`` seconds per chunk taking
    ``per_chunk`` seconds each, and ``stall`` extra seconds on chosen segments (by seed)."""

    name = "tone"
    kind = "tone"
    sample_rate = SR
    channels = 2

    def __init__(
        self, grid: bool = True, delay: float = 0.0, chunk: float = 0.0, per_chunk: float = 0.0,
        stall: dict[int, float] | None = None,
    ) -> None:  # fmt: skip
        self.anchor_type = GridAnchor if grid else ToneAnchor
        self.delay, self.chunk, self.per_chunk = delay, chunk, per_chunk
        self.stall = stall or {}
        self.requests: list[AudioRequest] = []

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        self.requests.append(request)
        at = request.anchor.at if isinstance(request.anchor, ToneAnchor) else 0.0
        frames = round((request.seconds + request.tail) * SR)
        t = at + np.arange(frames) / SR
        audio = (0.2 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        audio = np.stack([audio, audio], axis=1)
        time.sleep(self.delay + self.stall.pop(request.seed, 0.0))
        step = round(self.chunk * SR) if self.chunk else frames
        for start in range(0, frames, step):
            if start:
                time.sleep(self.per_chunk)
            last = start + step >= frames
            anchor = self.anchor_type(at + request.seconds) if last else None
            yield AudioChunk(audio=audio[start : start + step], last=last, anchor=anchor)

    def anchor_from_bytes(self, data: bytes) -> ToneAnchor:
        return self.anchor_type.from_bytes(data)

    def realtime_factor(self) -> float:  # seconds of audio per second of work, as it streams
        return self.chunk / self.per_chunk if self.chunk and self.per_chunk else 100.0


def session(
    tmp_path: Path, audio: Any, *, text: Any = None, source: str = "sim:forest", **opts: Any
) -> Session:
    options = PlayOptions(**{"fast": True, **opts})
    return Session(
        open_source(source, seed=1), text or Composer(), audio, options=options,
        out=tmp_path / "out.wav", log_path=tmp_path / "log.jsonl", use_device=False,
    )  # fmt: skip


def run(tmp_path: Path, audio: Any, **kwargs: Any) -> Any:
    return session(tmp_path, audio, **kwargs).run()


def records(tmp_path: Path) -> list[SegmentRecord]:
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    return [msgspec.json.decode(line, type=SegmentRecord) for line in lines[:-1]]


def longest_silence(audio: np.ndarray, floor: float = 1e-4) -> float:
    quiet = np.abs(audio).max(axis=1) < floor
    best = run_ = 0
    for q in quiet:
        run_ = run_ + 1 if q else 0
        best = max(best, run_)
    return best / SR


# -- the lead and the bar line (virtual time: exact) --------------------------------------------------


def test_next_join_point_waits_for_the_bar_line_or_a_beat_of_a_long_bar() -> None:
    assert next_join_point(ToneAnchor(1.0)) is None  # no bar grid: joins where it is
    assert isinstance(GridAnchor(0.0), BarGrid)
    assert next_join_point(GridAnchor(1.0)) == pytest.approx(1.4)
    assert next_join_point(GridAnchor(1.0), after=2.0) == pytest.approx(3.8)
    assert next_join_point(GridAnchor(2.4)) == 0.0

    class Slow(GridAnchor):  # 60 BPM in 4: 4 s bars, joined on beat 3 as well
        def bar_seconds(self) -> float:
            return 4.0

        def seconds_to_bar(self) -> float:
            return (-self.at) % 4.0

    assert next_join_point(Slow(1.0)) == pytest.approx(1.0)  # the half bar at 2 s
    assert next_join_point(Slow(2.5), after=0.1) == pytest.approx(1.5)


def test_the_next_window_is_heard_at_the_first_bar_line_after_its_close_plus_the_lead(tmp_path: Path) -> None:
    """The issue's complaint: a window's music started one whole interval after it closed. Now it
    starts after the lead, at the music's next bar line, and every window is heard."""
    tone = Tone(grid=True)
    stats = run(tmp_path, tone, duration=61.0)
    recs = records(tmp_path)
    appended = [r for r in recs if r.join == "append"]
    assert len(appended) == 6 and stats.starvations == 0 and stats.fallbacks == {}
    for rec in appended:
        assert rec.lead == FAST_LEAD
        wait = rec.heard_at - (rec.end + rec.lead)
        assert -1e-6 <= wait < BAR, (rec.index, wait)  # at most one bar later than the lead
        assert rec.heard_at / BAR == pytest.approx(round(rec.heard_at / BAR), abs=1e-4)  # on a bar line
        assert rec.audible_at == pytest.approx(rec.heard_at + XFADE / 2)
    # The music is the tone without a seam: its phase runs on across every join.
    audio = read_wav(tmp_path / "out.wav")[0]
    t = np.arange(audio.shape[0]) / SR
    expected = 0.2 * np.sin(2 * np.pi * 220.0 * t)
    np.testing.assert_allclose(audio[SR:, 0], expected[SR:], atol=2e-3)


def test_without_a_bar_grid_the_music_joins_right_after_the_lead(tmp_path: Path) -> None:
    run(tmp_path, Tone(grid=False), duration=41.0)
    appended = [r for r in records(tmp_path) if r.join == "append"]
    assert len(appended) == 4
    for rec in appended:
        assert rec.heard_at == pytest.approx(rec.end + FAST_LEAD, abs=2 / SR)


def test_every_segment_of_the_tour_is_heard_soon_after_its_window_closes(tmp_path: Path) -> None:
    """Night and rain were printed but never heard: now each window's music plays, from at most a
    lead plus a bar (3 s at most) after its window closes until the next one's."""
    run(tmp_path, open_audio_backend("synth"), source="sim:tour?leg=15", duration=90.0)
    recs = records(tmp_path)
    scenes = {(r.state.time.resolved_phase(), r.state.weather.state) for r in recs}
    assert ("night", "clear") in scenes and any(w in ("rain", "thunder") for _, w in scenes)
    for rec, after in itertools.pairwise(recs):
        assert after.heard_at > rec.heard_at + 1.0, (rec.index, rec.heard_at, after.heard_at)  # heard
    for rec in recs[1:]:
        after_close = rec.audible_at - rec.end
        limit = XFADE / 2 if rec.join == "transition" else FAST_LEAD + 3.0 + XFADE / 2
        assert 0 < after_close <= limit + 1e-6, (rec.index, rec.trigger, after_close)
    changes = [r for r in recs if r.change is not None]
    assert {"night"} <= {w for r in changes for w in r.change.split(", ")}
    for rec in changes:
        assert rec.lag == pytest.approx(rec.audible_at - rec.changed_at)
        assert rec.start <= rec.changed_at <= rec.end


# -- the real clock ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_lead_grows_for_a_slow_backend_and_the_music_never_runs_dry(tmp_path: Path) -> None:
    """A backend far slower than the synthesizer (a second before its first chunk, then chunks a
    little faster than real time, as MusicGen on a GPU): the lead is learned from what it took."""
    slow = Tone(grid=False, delay=1.0, chunk=1.0, per_chunk=0.4)
    stats = run(tmp_path, slow, fast=False, interval=5.0, sample_period=0.5, duration=17.0)
    recs = records(tmp_path)
    assert stats.starvations == 0 and stats.underruns == 0
    assert "audio.late_extend" not in stats.fallbacks and stats.deadline_misses == 0
    later = [r for r in recs if r.join == "append" and r.index >= 2]
    assert later
    for rec in later:
        assert rec.lead >= LEAD_FACTOR * 1.0  # learned from the >= 1 s each segment needed
        assert rec.lead_needed >= 1.0
        assert rec.heard_at - rec.end >= rec.lead_needed  # its music came in time for its join
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio[SR // 2 :]) < XFADE


@pytest.mark.slow
def test_a_late_segment_extends_the_music_and_then_cuts_in(tmp_path: Path) -> None:
    """audio.late_extend on the real clock: segment 3 takes 2.5 s more than the ones before."""
    late = Tone(grid=False, delay=0.05, stall={3: 2.5})
    stats = run(tmp_path, late, fast=False, interval=4.0, sample_period=0.5, duration=22.0)
    recs = records(tmp_path)
    assert stats.fallbacks.get("audio.late_extend", 0) >= 1
    rec = next(r for r in recs if r.index == 3)
    assert rec.join == "transition" and rec.missed_deadline  # it cut in over the extension
    assert stats.starvations == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio[SR // 2 :]) < XFADE


class Hanging:
    """An audio backend that hangs on chosen segments (by seed)."""

    def __init__(self, hang_on: set[int]) -> None:
        self.synth = open_audio_backend("synth")
        self.name, self.kind = "hanging", "synth"
        self.sample_rate, self.channels = SR, 2
        self.hang_on = hang_on
        self.release = threading.Event()

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        if request.seed in self.hang_on:
            self.release.wait(30)
        yield from self.synth.stream(request)

    def anchor_from_bytes(self, data: bytes) -> Any:
        return self.synth.anchor_from_bytes(data)

    def realtime_factor(self) -> float:
        return self.synth.realtime_factor()


@pytest.mark.slow
def test_a_hanging_audio_backend_misses_its_deadline_and_the_synth_takes_over(tmp_path: Path) -> None:
    hanging = Hanging(hang_on={1})
    try:
        stats = run(tmp_path, hanging, fast=False, interval=2.0, sample_period=0.5, duration=14.0)
    finally:
        hanging.release.set()
    recs = records(tmp_path)
    assert stats.fallbacks.get("audio.deadline", 0) >= 1
    assert stats.fallbacks.get("audio.replaced") == 1  # it stays busy: three misses in a row
    assert recs[-1].audio_backend == "synth"
    assert stats.starvations == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio[SR // 2 :]) < XFADE


class Stalling(Hanging):
    """An audio backend whose stream stops coming mid-segment on chosen segments (a model replica
    that dies after its first chunks): two 0.5 s chunks, then ``stall`` seconds of nothing, then an
    error, as a dead connection gives."""

    def __init__(self, stall_on: set[int], stall: float) -> None:
        super().__init__(hang_on=set())
        self.name, self.stall_on, self.stall = "stalling", stall_on, stall

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        for chunk in self.synth.stream(request):
            step = SR // 2
            for i in range(0, chunk.audio.shape[0], step):
                if request.seed in self.stall_on and i == 2 * step:
                    self.release.wait(self.stall)
                    raise RuntimeError("the replica died")
                last = chunk.last and i + step >= chunk.audio.shape[0]
                yield AudioChunk(
                    audio=chunk.audio[i : i + step], last=last, anchor=chunk.anchor if last else None
                )


@pytest.mark.slow
def test_a_stream_that_stalls_mid_segment_is_cut_and_the_music_goes_on(tmp_path: Path) -> None:
    """audio.stalled on the real clock: segment 2's stream stops after 1 s of audio for 3 s."""
    stalling = Stalling(stall_on={2}, stall=3.0)
    try:
        stats = run(tmp_path, stalling, fast=False, interval=4.0, sample_period=0.5, duration=18.0)
    finally:
        stalling.release.set()
    recs = records(tmp_path)
    assert stats.fallbacks.get("audio.stalled") == 1, stats.fallbacks
    assert [r.index for r in recs if "audio.stalled" in r.fallbacks] == [2]
    assert recs[-1].audio_backend == "stalling" and not recs[-1].fallbacks  # it comes back
    assert stats.starvations == 0 and stats.underruns == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert longest_silence(audio[SR // 2 :]) < XFADE


class RaisingText:
    name = "raising"

    def generate(self, request: StageRequest) -> str:
        raise RuntimeError("model exploded")


class HangingText:
    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def generate(self, request: StageRequest) -> str:
        self.release.wait(30)
        return "too late"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["error", "deadline"])
def test_text_fallbacks_on_the_real_clock(tmp_path: Path, kind: str) -> None:
    text = RaisingText() if kind == "error" else HangingText()
    try:
        stats = run(tmp_path, open_audio_backend("synth"), text=text, fast=False, interval=2.0,
                    sample_period=0.5, duration=9.0)  # fmt: skip
    finally:
        if isinstance(text, HangingText):
            text.release.set()
    recs = records(tmp_path)
    assert recs and stats.fallbacks.get(f"text.narrative.{kind}", 0) == len(recs)
    assert all(r.description and f"text.narrative.{kind}" in r.fallbacks for r in recs)
    assert stats.starvations == 0 and stats.underruns == 0
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] > 6 * SR and longest_silence(audio[SR // 2 :]) < XFADE


class StoppingText(RaisingText):
    """Fails every time, and ends the session during segment ``at``'s narrative."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0
        self.session: Any = None

    def generate(self, request: StageRequest) -> str:
        if request.stage == "narrative":
            if self.calls == self.at:
                self.session.stop()
            self.calls += 1
        return super().generate(request)


@pytest.mark.slow
def test_a_segment_the_end_of_the_session_cuts_short_is_not_counted(tmp_path: Path) -> None:
    """The summary's fallbacks are those of the segments in the log: a segment whose text fell back
    and whose music was still on its way when the session ended is neither heard, logged nor counted."""
    text = StoppingText(at=2)
    # Segment 2 (seed 2)'s music takes 1.5 s: the session ends while it is on its way.
    s = session(tmp_path, Tone(stall={2: 1.5}), text=text, fast=False, interval=2.0, sample_period=0.5,
                duration=30.0)  # fmt: skip
    text.session = s
    stats = s.run()
    recs = records(tmp_path)
    assert text.calls == 3 and [r.index for r in recs] == [0, 1]
    assert stats.segments == 2 and stats.fallbacks == {"text.narrative.error": 2, "text.description.error": 2}
    assert all(r.fallbacks == ["text.narrative.error", "text.description.error"] for r in recs)


def _burn(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


@pytest.mark.slow
def test_a_busy_machine_never_starves_the_audio_callback(tmp_path: Path) -> None:
    """The game on the same cores: as many CPU hogs as there are cores, on the real clock, while the
    music plays with sharp changes (transitions take back what the deep ring holds)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    hogs = [
        ctx.Process(target=_burn, args=(stop,), daemon=True)
        for _ in range(max(2, multiprocessing.cpu_count()))
    ]
    for hog in hogs:
        hog.start()
    try:
        stats = run(tmp_path, open_audio_backend("synth"), fast=False, source="sim:tour?leg=5", interval=4.0,
                    sample_period=0.5, duration=24.0)  # fmt: skip
    finally:
        stop.set()
        for hog in hogs:
            hog.join(5)
    recs = records(tmp_path)
    assert any(r.join == "transition" for r in recs)  # the combat leg cut in
    assert stats.underruns == 0, stats
    assert stats.starvations == 0
