"""``metabgm-edge bench``: how fast the pipeline runs here, and how soon a scene change is heard.

Two measurements, both through the real :class:`~metabgm_edge.scheduler.Session`:

1. **Throughput** (``--fast``, virtual time): ``N`` segments of ``--source`` on the chosen text
   and audio backends. Per stage (characterize, narrative, description, audio, total) the p50 and
   p95 of the wall time per segment; the real-time factor (seconds of music rendered per second
   of processing, > 1 is faster than real time); the load (processing time / interval: the part
   of each segment's deadline the pipeline uses); the render time per 10 s of audio; mixer
   starvations and deadline misses.
2. **Scene-change-to-audible latency** (real time, no device: the paced null sink, which pulls
   the ring at the device's rate): a scripted source plays a calm forest until a known moment,
   then combat starts (zombies within 2 blocks, a hit taken). The latency is measured from that
   moment to the moment the new music enters the output::

       latency = queued_at - change_at + ring fill + crossfade / 2

   ``queued_at`` is the session-clock time at which the scheduler handed the combat segment to
   the mixer (the segment log's ``queued_at``); the ring fill (``PlayOptions.buffer_seconds``) is
   the audio already in the ring ahead of the device, which plays before the new music; half
   the crossfade is when the new music is at equal loudness with the old. It splits into
   detection (the next state sample sees the change), processing (characterize, the two text
   stages, the render) and output delay. Ring underruns and mixer starvations over this
   real-time run are reported too (both should be 0).

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
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import Source
from metabgm_edge.state import Attacked, Health, Hostile, Movement, Scene, SceneState, TimeOfDay, Weather
from metabgm_edge.text import TextBackend

log = logging.getLogger(__name__)

STAGE_ORDER: Final = ("characterize", "narrative", "description", "direct", "first_audio", "audio", "total")
LATENCY_DEFINITION: Final = (
    "from the scripted scene change (combat starts) to the new music entering the output: "
    "queued_at - change_at + ring fill + crossfade/2, on the session clock of a real-time run "
    "(paced null sink, no device)"
)
AUDIBLE_TARGET_S: Final = 3.0


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


class Latency(msgspec.Struct, kw_only=True):
    definition: str
    seconds: float | None
    """Scene change to audible; None when no transition was seen (the error says why)."""
    detection_seconds: float | None = None
    """change_at -> the sample that saw it (the segment's end)."""
    processing_seconds: float | None = None
    """The segment's end -> queued in the mixer."""
    output_delay_seconds: float
    """Ring fill + half a crossfade."""
    change_at: float | None = None
    queued_at: float | None = None
    trigger: str | None = None
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
    error: str | None = None
    target_seconds: float = AUDIBLE_TARGET_S


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


class ScriptedChange(Source):
    """A calm forest until ``change_at`` (session seconds), combat after it. Until ``change_at``
    is set (by the bench, once the first music is queued) the scene stays calm."""

    uri = "bench:scripted-change"

    def __init__(self) -> None:
        super().__init__()
        self.change_at: float | None = None
        self._calm = calm_state()
        self._combat = combat_state()

    def sample(self, now: float) -> SceneState | None:
        change = self.change_at
        return self._combat if change is not None and now >= change else self._calm


def pick_change_time(after: float, interval: float, sample_period: float) -> float:
    """A change time half a sample period before a sample that may end the window at once.

    Samples fall on multiples of ``sample_period``; the window in progress must be at least
    MIN_TRANSITION_GAP old at the detecting sample, or the acquisition waits for the next one. The
    window's start is itself a measured sample time, so a margin keeps scheduling jitter from
    deciding that comparison."""
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
    lead_in: float = 2.0,
    hold: float = 1.5,
    max_seconds: float = 90.0,
) -> Latency:
    """A short real-time session with a scripted combat start ``lead_in`` s after music begins."""
    options = PlayOptions(interval=interval, seed=seed, fast=False, duration=max_seconds)
    output_delay = options.buffer_seconds + options.crossfade / 2
    source = ScriptedChange()
    session = Session(source, text, audio, options=options, use_device=False)
    seen: dict[str, SegmentRecord] = {}
    timers: list[threading.Timer] = []

    def on_segment(rec: SegmentRecord) -> None:
        if rec.trigger == "start" and source.change_at is None:
            source.change_at = pick_change_time(rec.queued_at + lead_in, interval, options.sample_period)
            log.info("bench: music queued at %.2f s; combat at %.2f s", rec.queued_at, source.change_at)
        elif rec.trigger == "combat_start" and "change" not in seen:
            seen["change"] = rec
            timer = threading.Timer(hold, session.stop)  # let the new music play into the ring
            timer.daemon = True
            timers.append(timer)
            timer.start()

    session.on_segment = on_segment
    t0 = time.perf_counter()
    try:
        stats = session.run()
    finally:
        for timer in timers:
            timer.cancel()
    result = Latency(
        definition=LATENCY_DEFINITION,
        seconds=None,
        output_delay_seconds=output_delay,
        change_at=source.change_at,
        sample_period=options.sample_period,
        ring_seconds=options.buffer_seconds,
        crossfade=options.crossfade,
        run_seconds=time.perf_counter() - t0,
        sink=stats.sink,
        underruns=stats.underruns,
        starvations=stats.starvations,
        deadline_misses=stats.deadline_misses,
    )
    rec = seen.get("change")
    if rec is None or source.change_at is None:
        result.error = (
            "no combat_start segment within the run: the first segment never played"
            if source.change_at is None
            else "the scene change did not start a transition segment (are transitions disabled?)"
        )
        return result
    result.trigger = rec.trigger
    result.queued_at = rec.queued_at
    result.detection_seconds = rec.end - source.change_at
    result.processing_seconds = rec.queued_at - rec.end
    result.seconds = rec.queued_at - source.change_at + output_delay
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
) -> BenchResult:
    machine = machine_info()
    backends = {"text": text.name, "audio": audio.name, "source": source.uri}
    log.info("bench: %d segments of %s on text %s, audio %s", segments, source.uri, text.name, audio.name)
    throughput = run_throughput(source, text, audio, segments=segments, interval=interval, seed=seed)
    lat = run_latency(text, audio, interval=interval, seed=seed) if latency else None
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
        if lat.seconds is None:
            lines.append(f"scene change->audible  not measured: {lat.error}")
        else:
            verdict = "within" if lat.seconds <= lat.target_seconds else "OVER"
            lines += [
                f"scene change->audible  {lat.seconds:8.2f} s   ({verdict} the {lat.target_seconds:g} s "
                "target) = "
                f"detection {lat.detection_seconds:.2f} + processing {lat.processing_seconds:.2f} "
                f"+ output {lat.output_delay_seconds:.2f} (ring {lat.ring_seconds:g} + crossfade/2)",
            ]
        lines += [
            f"  real-time run        {lat.run_seconds:.1f} s on the {lat.sink} sink: "
            f"{lat.underruns} ring underruns, "
            f"{lat.starvations} mixer starvations, {lat.deadline_misses} deadline misses",
            f"  definition           {lat.definition}",
        ]
    lines.append(f"peak RSS              {result.peak_rss_mib:8.0f} MiB")
    return "\n".join(lines)
