"""``metabgm-edge bench``: how fast the pipeline runs here, and how soon a scene change is heard.

Two measurements, both through the real :class:`~metabgm_edge.scheduler.Session`:

1. **Throughput** (``--fast``, virtual time): ``N`` segments of ``--source`` on the chosen text
   and audio backends. Per stage (characterize, narrative, description, audio, total) the p50 and
   p95 of the wall time per segment; the real-time factor (seconds of music rendered per second
   of processing, > 1 is faster than real time); the load (processing time / interval: the part
   of each segment's deadline the pipeline uses); the render time per 10 s of audio; mixer
   starvations and deadline misses.
2. **Scene change to audible** (real time, no device: the paced null sink, which pulls the
   ring at the device's rate): a scripted source plays a calm day in a forest, then one change
   after another, each once the music of the one before is heard: gradual ones (dusk, nightfall,
   rain, thunder, going underground, another cave biome), which wait for their window to close,
   and sharp ones (combat starts, combat ends, the Nether, health drops), which cut in at once.
   For every change::

       lag = audible_at - change_at

   ``change_at`` is the scripted moment (for the end of combat, the moment the combat hold of
   :data:`~metabgm_edge.characterize.COMBAT_HOLD_S` ran out); ``audible_at`` is when the new music
   is as loud as the old (the segment log's ``audible_at``: its join, behind the audio the device
   is about to play, plus half a crossfade). A gradual change's lag splits into the wait for its
   window to close and ``after_close``: the lead (learned from the stage times), the wait for the
   next bar line of the music playing and half a crossfade. The p50 / p95 of both kinds, ring
   underruns and mixer starvations over the run (both should be 0) are reported.

Peak RSS is the process's high-water mark (``resource.getrusage``), imports included.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import resource
import sys
import threading
import time
from typing import Final

import msgspec
import numpy as np

from metabgm_edge.acquisition import MIN_TRANSITION_GAP
from metabgm_edge.audio import AudioBackend
from metabgm_edge.characterize import COMBAT_HOLD_S
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import Source
from metabgm_edge.state import (
    Attacked,
    Health,
    Hostile,
    Movement,
    Position,
    Scene,
    SceneState,
    TimeOfDay,
    Weather,
)
from metabgm_edge.text import TextBackend

log = logging.getLogger(__name__)

STAGE_ORDER: Final = ("characterize", "narrative", "description", "direct", "first_audio", "audio", "total")
LATENCY_DEFINITION: Final = (
    "from each scripted scene change to the new music being as loud as the old: audible_at - change_at "
    "(the segment's join behind the audio the device is about to play, plus crossfade/2), on the "
    "session clock of a real-time run (paced null sink, no device)"
)
AUDIBLE_TARGET_S: Final = 3.0
"""Sharp changes: heard within this many seconds."""
GRADUAL_TARGET_S: Final = 4.0
"""Gradual changes: heard within this many seconds after their window closes (bar wait included)."""


class Machine(msgspec.Struct, kw_only=True):
    cpu_model: str
    cpu_count: int | None
    usable_cpus: int | None
    load_average: list[float] | None
    platform: str
    python: str


class Percentiles(msgspec.Struct, kw_only=True):
    p50: float
    p95: float
    max: float
    mean: float
    n: int


class Throughput(msgspec.Struct, kw_only=True):
    source: str
    segments: int
    interval: float
    audio_seconds: float
    """Music rendered (sum of the segments' audio_seconds)."""
    processing_seconds: float
    """Sum of the segments' total stage times."""
    wall_seconds: float
    stages: dict[str, Percentiles]
    real_time_factor: float
    """audio_seconds / processing_seconds: > 1 is faster than real time."""
    load: Percentiles
    """Per segment: total processing time / interval (the share of the deadline used)."""
    render_per_10s: Percentiles
    """Seconds the audio backend takes per 10 s of audio."""
    starvations: int
    deadline_misses: int
    fallbacks: dict[str, int]
    transitions: int


class ChangeLag(msgspec.Struct, kw_only=True):
    """One scripted change and when its music was heard."""

    kind: str
    """``sharp`` or ``gradual``."""
    change: str
    change_at: float
    seen_at: float | None = None
    """The first sample that saw it (the segment log's ``changed_at``)."""
    closed_at: float | None = None
    """When its window closed (the segment's ``end``)."""
    audible_at: float | None = None
    lag: float | None = None
    """audible_at - change_at."""
    after_close: float | None = None
    """audible_at - closed_at."""
    trigger: str | None = None
    join: str | None = None
    lead: float | None = None


class Latency(msgspec.Struct, kw_only=True):
    definition: str
    seconds: float | None
    """The first sharp change's lag (combat starts); None when none was heard (the error says why)."""
    sharp: Percentiles | None = None
    """Lags of the sharp changes (combat starts or ends, dimension, health drop)."""
    gradual: Percentiles | None = None
    """Lags of the gradual changes (dusk, nightfall, rain, thunder, caves), window wait included."""
    gradual_after_close: Percentiles | None = None
    """Gradual changes: window close to audible (lead + wait for the bar line + crossfade/2)."""
    changes: list[ChangeLag] = msgspec.field(default_factory=list)
    detection_seconds: float | None = None
    """The first sharp change: change_at -> the sample that saw it (the segment's end)."""
    processing_seconds: float | None = None
    """The first sharp change: the segment's end -> queued in the mixer."""
    output_delay_seconds: float
    """The ring's guard (what the device is about to play) + half a crossfade."""
    sample_period: float
    ring_seconds: float
    crossfade: float
    run_seconds: float = 0.0
    sink: str = ""
    underruns: int = 0
    """Ring-buffer underruns during the real-time run (should be 0)."""
    starvations: int = 0
    """Times the mixer ran dry during the real-time run (should be 0)."""
    deadline_misses: int = 0
    fallbacks: dict[str, int] = msgspec.field(default_factory=dict)
    error: str | None = None
    target_seconds: float = AUDIBLE_TARGET_S
    gradual_target_seconds: float = GRADUAL_TARGET_S


class BenchResult(msgspec.Struct, kw_only=True):
    machine: Machine
    backends: dict[str, str]
    seed: int
    throughput: Throughput
    latency: Latency | None
    peak_rss_mib: float


# -- helpers ---------------------------------------------------------------------------------------


def machine_info() -> Machine:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return Machine(
        cpu_model=model or platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        usable_cpus=usable,
        load_average=load,
        platform=platform.platform(),
        python=platform.python_version(),
    )


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles(p50=math.nan, p95=math.nan, max=math.nan, mean=math.nan, n=0)
    arr = np.asarray(values, dtype=np.float64)
    return Percentiles(
        p50=float(np.percentile(arr, 50)),
        p95=float(np.percentile(arr, 95)),
        max=float(arr.max()),
        mean=float(arr.mean()),
        n=int(arr.size),
    )


# -- 1. throughput ---------------------------------------------------------------------------------


def run_throughput(
    source: Source,
    text: TextBackend,
    audio: AudioBackend,
    *,
    segments: int,
    interval: float = 10.0,
    seed: int = 0,
) -> Throughput:
    """``segments`` segments of ``source`` through a fast (virtual-time) session."""
    if segments < 1:
        raise ValueError(f"segments must be at least 1, got {segments}")
    if source.live:
        raise ValueError(f"{source.uri} is live: bench runs its segments in fast mode (use sim: or replay:)")
    options = PlayOptions(interval=interval, seed=seed, fast=True)
    session = Session(source, text, audio, options=options, use_device=False)
    records: list[SegmentRecord] = []

    def on_segment(rec: SegmentRecord) -> None:
        records.append(rec)
        if len(records) >= segments:
            session.stop()

    session.on_segment = on_segment
    t0 = time.perf_counter()
    stats = session.run()
    wall = time.perf_counter() - t0
    if len(records) < segments:
        log.warning("%s ended after %d of %d segments", source.uri, len(records), segments)
    stages = {
        k: percentiles([r.timings[k] for r in records if k in r.timings])
        for k in STAGE_ORDER
        if any(k in r.timings for r in records)
    }
    audio_s = sum(r.audio_seconds for r in records)
    processing = sum(r.timings.get("total", 0.0) for r in records)
    return Throughput(
        source=source.uri,
        segments=len(records),
        interval=interval,
        audio_seconds=audio_s,
        processing_seconds=processing,
        wall_seconds=wall,
        stages=stages,
        real_time_factor=audio_s / processing if processing > 0 else math.inf,
        load=percentiles([r.timings.get("total", 0.0) / interval for r in records]),
        render_per_10s=percentiles(
            [10.0 * r.timings["audio"] / r.audio_seconds for r in records if r.audio_seconds > 0]
        ),
        starvations=stats.starvations,
        deadline_misses=stats.deadline_misses,
        fallbacks=dict(stats.fallbacks),
        transitions=stats.transitions,
    )


# -- 2. scene change to audible --------------------------------------------------------------------


def calm_state() -> SceneState:
    return SceneState(
        scene=Scene(biome="forest"),
        time=TimeOfDay(ticks=3000),
        weather=Weather(state="clear"),
        temperature=0.7,
        movement=Movement(state="walking", speed=4.3),
    )


def combat_state() -> SceneState:
    return SceneState(
        scene=Scene(biome="plains"),
        time=TimeOfDay(ticks=18000),
        weather=Weather(state="clear"),
        temperature=0.8,
        health=Health(value=12.0, max=20.0),
        movement=Movement(state="running", speed=5.6),
        status={"sprinting": True},
        hostiles=[Hostile(name="zombie", distance=2.0), Hostile(name="zombie", distance=3.5)],
        attacked=Attacked(damage=3.0, attacker="zombie", seconds_ago=0.0),
    )


def _with(state: SceneState, **changes: object) -> SceneState:
    return msgspec.structs.replace(state, **changes)


def script() -> list[tuple[str, str, SceneState]]:
    """One round of scripted changes, in order: (kind, what changes, the state from then on)."""
    day = calm_state()
    dusk = _with(day, time=TimeOfDay(ticks=12400))
    night = _with(day, time=TimeOfDay(ticks=18000))
    after = _with(night, scene=Scene(biome="plains"))
    rain = _with(after, weather=Weather(state="rain", intensity=0.7))
    thunder = _with(after, weather=Weather(state="thunder", intensity=1.0))
    cave = _with(thunder, position=Position(y=20.0, depth=40.0), scene=Scene(biome="dripstone_caves"))
    lush = _with(cave, scene=Scene(biome="lush_caves"))
    nether = _with(
        lush, scene=Scene(biome="nether_wastes", dimension="the_nether"), temperature=2.0,
        weather=Weather(state="clear"), position=Position(y=70.0),
    )  # fmt: skip
    hurt = _with(nether, health=Health(value=4.0, max=20.0))
    return [
        ("gradual", "dusk", dusk),
        ("gradual", "night", night),
        ("sharp", "combat_start", combat_state()),
        ("sharp", "combat_end", after),
        ("gradual", "rain", rain),
        ("gradual", "thunder", thunder),
        ("gradual", "underground", cave),
        ("gradual", "lush_caves", lush),
        ("sharp", "dimension", nether),
        ("sharp", "health_drop", hurt),
    ]


def steps(count: int | None) -> list[tuple[str, str, SceneState]]:
    """``count`` changes (None: one round): rounds of :func:`script`, each after the first
    beginning with the way back from the Nether to the calm day (a dimension change)."""
    one = script()
    count = len(one) if count is None else count
    out: list[tuple[str, str, SceneState]] = []
    while len(out) < count:
        if out:
            out.append(("sharp", "dimension", calm_state()))
        out += one
    return out[:count]


class ScriptedChange(Source):
    """A calm day in a forest, then the states of :func:`script` one after another: the bench sets
    :attr:`change_at` (session seconds) for the next step once the previous one is heard."""

    uri = "bench:scripted-changes"

    def __init__(self, count: int | None = None) -> None:
        super().__init__()
        self.steps = steps(count)
        self.step = -1
        """Index of the step in force (-1: the calm start)."""
        self.change_at: float | None = None
        """When the next step (``step + 1``) takes over; None: not scheduled yet."""
        self._state = calm_state()
        self._lock = threading.Lock()

    def sample(self, now: float) -> SceneState | None:
        with self._lock:
            if self.change_at is not None and now >= self.change_at and self.step + 1 < len(self.steps):
                self.step += 1
                self._state = self.steps[self.step][2]
                self.change_at = None
            return self._state

    def schedule(self, at: float) -> None:
        with self._lock:
            self.change_at = at

    @property
    def pending(self) -> tuple[str, str] | None:
        """(kind, name) of the next step, or None when the script is done."""
        if self.step + 1 >= len(self.steps):
            return None
        kind, name, _ = self.steps[self.step + 1]
        return kind, name


def pick_change_time(after: float, interval: float, sample_period: float) -> float:
    """A change time half a sample period before a sample that may end the window at once.

    Samples fall on multiples of ``sample_period``; the window in progress must be at least
    MIN_TRANSITION_GAP old at the detecting sample, or the acquisition waits for the next one. The
    window's start is itself a measured sample time, so a margin keeps scheduling jitter from
    deciding that comparison. (Windows here start on multiples of ``interval``; a sharp change
    restarts them, which the caller accounts for through ``after``.)"""
    margin = 0.25 * sample_period
    k = math.ceil(after / sample_period) + 1
    while True:
        detect = k * sample_period
        if detect % interval >= MIN_TRANSITION_GAP + margin and detect - 0.5 * sample_period >= after:
            return detect - 0.5 * sample_period
        k += 1


def run_latency(
    text: TextBackend,
    audio: AudioBackend,
    *,
    interval: float = 10.0,
    seed: int = 0,
    steps: int | None = None,
    lead_in: float = 2.0,
    settle: float = 1.5,
    hold: float = 1.5,
    max_seconds: float | None = None,
) -> Latency:
    """A real-time session through the scripted changes; each comes ``settle`` s after the music
    of the one before is audible (the first ``lead_in`` s after the music begins)."""
    source = ScriptedChange(steps)
    budget = max_seconds if max_seconds is not None else 30.0 + len(source.steps) * (2 * interval + 10.0)
    options = PlayOptions(interval=interval, seed=seed, fast=False, duration=budget)
    session = Session(source, text, audio, options=options, use_device=False)
    period = options.sample_period
    changes: list[ChangeLag] = []
    timers: list[threading.Timer] = []
    window_start = [0.0]

    def next_change(after: float) -> None:
        pending = source.pending
        if pending is None:
            timer = threading.Timer(hold, session.stop)  # let the last music play into the ring
            timer.daemon = True
            timers.append(timer)
            timer.start()
            return
        kind, name = pending
        if kind == "sharp":
            # Sharp changes cut a window short only when it is MIN_TRANSITION_GAP old.
            at = window_start[0] + pick_change_time(after - window_start[0], interval, period)
        else:
            at = after + 0.37 * period  # between samples, anywhere in the window
        source.schedule(at)
        changes.append(ChangeLag(kind=kind, change=name, change_at=at))
        log.info("bench: %s (%s) at %.2f s", name, kind, at)

    def on_segment(rec: SegmentRecord) -> None:
        if rec.trigger != "interval":
            window_start[0] = rec.end  # a sharp change (or the start) restarts the window clock
        if rec.trigger == "start":
            next_change((rec.queued_at or 0.0) + lead_in)
            return
        open_change = next((c for c in changes if c.audible_at is None), None)
        if open_change is None or rec.audible_at is None or rec.end < open_change.change_at:
            return
        if open_change.kind == "sharp" and rec.trigger != open_change.change:
            return
        if open_change.kind == "gradual" and rec.change is None:
            return
        open_change.seen_at = rec.changed_at
        open_change.closed_at = rec.end
        open_change.audible_at = rec.audible_at
        open_change.trigger = rec.trigger
        open_change.join = rec.join
        open_change.lead = rec.lead
        if open_change.change == "combat_end":
            open_change.change_at += COMBAT_HOLD_S  # no longer combat from then on, by definition
        open_change.lag = rec.audible_at - open_change.change_at
        open_change.after_close = rec.audible_at - rec.end
        next_change(max(rec.audible_at, session.clock.now()) + settle)

    session.on_segment = on_segment
    t0 = time.perf_counter()
    try:
        stats = session.run()
    finally:
        for timer in timers:
            timer.cancel()
    guard = session._feeder.guard() / audio.sample_rate if session._feeder is not None else 0.0
    heard = [c for c in changes if c.lag is not None]
    sharp = [c.lag for c in heard if c.kind == "sharp" and c.lag is not None]
    gradual = [c for c in heard if c.kind == "gradual"]
    result = Latency(
        definition=LATENCY_DEFINITION,
        seconds=None,
        sharp=percentiles(sharp) if sharp else None,
        gradual=percentiles([c.lag for c in gradual if c.lag is not None]) if gradual else None,
        gradual_after_close=(
            percentiles([c.after_close for c in gradual if c.after_close is not None]) if gradual else None
        ),
        changes=changes,
        output_delay_seconds=guard + options.crossfade / 2,
        sample_period=period,
        ring_seconds=options.buffer_seconds,
        crossfade=options.crossfade,
        run_seconds=time.perf_counter() - t0,
        sink=stats.sink,
        underruns=stats.underruns,
        starvations=stats.starvations,
        deadline_misses=stats.deadline_misses,
        fallbacks=dict(stats.fallbacks),
    )
    first = next((c for c in heard if c.change == "combat_start"), None)
    if first is not None and first.seen_at is not None and first.closed_at is not None:
        rec_queued = first.audible_at - result.output_delay_seconds if first.audible_at else None
        result.seconds = first.lag
        result.detection_seconds = first.closed_at - first.change_at
        if rec_queued is not None:
            result.processing_seconds = rec_queued - first.closed_at
    missing = [c.change for c in changes if c.lag is None]
    if not changes:
        result.error = "no scene change was scripted: the first segment never played"
    elif missing or len(changes) < len(source.steps):
        unheard = missing + [name for _, name, _ in source.steps[len(changes) :]]
        result.error = f"not heard within the run: {', '.join(unheard)}"
    return result


# -- both ------------------------------------------------------------------------------------------


def run_bench(
    source: Source,
    text: TextBackend,
    audio: AudioBackend,
    *,
    segments: int = 12,
    interval: float = 10.0,
    seed: int = 0,
    latency: bool = True,
    changes: int | None = None,
) -> BenchResult:
    machine = machine_info()
    backends = {"text": text.name, "audio": audio.name, "source": source.uri}
    log.info("bench: %d segments of %s on text %s, audio %s", segments, source.uri, text.name, audio.name)
    throughput = run_throughput(source, text, audio, segments=segments, interval=interval, seed=seed)
    lat = run_latency(text, audio, interval=interval, seed=seed, steps=changes) if latency else None
    return BenchResult(
        machine=machine,
        backends=backends,
        seed=seed,
        throughput=throughput,
        latency=lat,
        peak_rss_mib=peak_rss_mib(),
    )


# -- output ----------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:9.1f}"


def format_table(result: BenchResult) -> str:
    m, t, lat = result.machine, result.throughput, result.latency
    load = f", load average {' '.join(f'{x:g}' for x in m.load_average)}" if m.load_average else ""
    lines = [
        f"machine   {m.cpu_model}, {m.cpu_count} CPUs ({m.usable_cpus} usable){load}; Python {m.python}",
        f"backends  text {result.backends['text']}, audio {result.backends['audio']}; "
        f"source {t.source} (fast mode), seed {result.seed}",
        f"run       {t.segments} segments, interval {t.interval:g} s: {t.audio_seconds:.0f} s of music "
        f"in {t.processing_seconds:.2f} s of processing ({t.wall_seconds:.2f} s wall)",
        "",
        f"{'stage':<14}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}",
    ]
    for name, p in t.stages.items():
        lines.append(f"{name:<14}{_ms(p.p50):>10}{_ms(p.p95):>10}{_ms(p.max):>10}")
    rpt = t.render_per_10s
    lines += [
        "",
        f"real-time factor      {t.real_time_factor:8.1f} x   (seconds of music per second of processing)",
        f"load p50 / p95        {100 * t.load.p50:7.1f} % / {100 * t.load.p95:.1f} %   "
        "(processing time / interval)",
        f"render 10 s of audio  {rpt.p50:8.2f} s p50, {rpt.p95:.2f} s p95",
        f"deadline misses       {t.deadline_misses:8d}     fallbacks: "
        + (", ".join(f"{k} {v}" for k, v in sorted(t.fallbacks.items())) or "none"),
        f"mixer starvations     {t.starvations:8d}     (fast run)",
    ]
    if lat is not None:
        lines.append("")
        for name, p, target in (
            ("sharp change->audible", lat.sharp, f"target {lat.target_seconds:g} s"),
            ("gradual change->audible", lat.gradual, "window wait included"),
            ("gradual close->audible", lat.gradual_after_close, f"target {lat.gradual_target_seconds:g} s"),
        ):
            if p is None:
                lines.append(f"{name:<24} not measured")
                continue
            lines.append(
                f"{name:<24}{p.p50:6.2f} s p50, {p.p95:.2f} s p95, max {p.max:.2f} ({p.n} changes; {target})"
            )
        for c in lat.changes:
            if c.lag is None:
                lines.append(f"  {c.change:<13} {c.kind:<8} at {c.change_at:6.1f} s: not heard")
                continue
            lines.append(
                f"  {c.change:<13} {c.kind:<8} at {c.change_at:6.1f} s: audible after {c.lag:5.2f} s "
                f"({c.after_close:.2f} s after its window closed at {c.closed_at:.1f} s; "
                f"lead {c.lead or 0:.2f} s)"
            )
        if lat.error:
            lines.append(f"  note                 {lat.error}")
        fb = ", ".join(f"{k} {v}" for k, v in sorted(lat.fallbacks.items())) or "no fallbacks"
        lines += [
            f"  real-time run        {lat.run_seconds:.1f} s on the {lat.sink} sink "
            f"(ring {lat.ring_seconds:g} s): "
            f"{lat.underruns} ring underruns, "
            f"{lat.starvations} mixer starvations, {lat.deadline_misses} deadline misses, {fb}",
            f"  definition           {lat.definition}",
        ]
    lines.append(f"peak RSS              {result.peak_rss_mib:8.0f} MiB")
    return "\n".join(lines)
