"""The real-time scheduler: state -> description -> audio, segment after segment, without a gap.

Threads (real time):
    sampler   metabgm_edge.acquisition: samples the source, hands over segments
    pipeline  here: characterize -> stage 1 -> stage 2 -> audio, per segment; the audio backend
              streams chunks, each queued in the mixer as it comes
    audio     a worker the pipeline waits on with the segment's deadline (``Guard``)
    feeder    metabgm_edge.playback.feeder: mixer -> lock-free ring buffer
    callback  PortAudio (or the file sink's thread): ring buffer -> device and WAV
    main      here: a watchdog that extends the music when a segment is late, Ctrl-C, --duration

Timeline. Segment k's window closes at ``end``; its audio must be in the mixer by
``end + deadline`` (the deadline is the interval unless set), when the audio before it runs out.
The first segment (the ``start`` prelude, rendered from the first sample) and every sharp-change
segment (rendered at once and crossfaded in over what is playing as soon as its first chunk is
there) therefore last ``interval + deadline``; regular segments last ``interval`` and join the
previous one's tail with an equal-power crossfade.

Fallbacks, each named, logged and counted, none of them silent:
    text.<stage>.error / text.<stage>.deadline   the composer rules write that stage instead
    audio.error / audio.deadline                  the previous segment is extended, crossfaded
    audio.replaced                                after 3 audio failures in a row the embedded
                                                  synthesizer takes over for the session
With ``fast`` the session runs on virtual time as fast as the machine allows (no device): the WAV
holds exactly ``duration`` seconds, aligned with the game clock as a real-time run would be.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

import msgspec
import numpy as np

from metabgm_edge.acquisition import Acquisition, FastClock, RealClock
from metabgm_edge.audio import CONTEXT_SECONDS, SPEED_MARGIN, AudioBackend, AudioRequest, anchor_to_metadata
from metabgm_edge.listener_profile import DEFAULT_PROFILE, Profile
from metabgm_edge.playback.mixer import Join, Mixer
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.sinks import Sink
from metabgm_edge.playback.wav import WavWriter
from metabgm_edge.session_log import SegmentRecord, SessionStats
from metabgm_edge.sources import Source
from metabgm_edge.stages import DescribeResult, Mode, describe
from metabgm_edge.state import Window
from metabgm_edge.text import StageRequest, TextBackend

log = logging.getLogger(__name__)

T = TypeVar("T")
AUDIO_FAILURES_BEFORE_REPLACING: Final = 3
SHARP: Final = frozenset({"combat_start", "combat_end", "dimension", "health_drop"})
HEAD_SECONDS: Final = 3.0
"""A sharp change's segment is rendered in two parts: this head first, heard at once."""


class PlayOptions(msgspec.Struct, kw_only=True):
    interval: float = 10.0
    sample_period: float = 1.0
    deadline: float | None = None
    """Seconds after a window closes by which its audio must be queued; None: the interval."""
    crossfade: float = 0.5
    text_share: float = 0.6
    """Part of the deadline the two text stages may use together; audio gets the rest."""
    mode: Mode = "two-stage"
    seed: int = 0
    transitions: bool = True
    fast: bool = False
    duration: float | None = None
    """Stop after this many seconds of session time (None: until the source ends or Ctrl-C)."""
    buffer_seconds: float = 0.25
    """Audio kept in the ring ahead of the device: small, so scene changes are heard quickly."""
    if_slow: Literal["synth", "queue"] = "synth"
    """When the audio backend renders slower than real time here (MusicGen on a CPU): ``synth`` lets
    the embedded synthesizer play; ``queue`` plays each segment whole once it is ready, later than its
    scene, the music before it repeated meanwhile."""
    retry_audio_after: float | None = None
    """Seconds after ``audio.replaced`` when the replaced backend gets another try (``audio.restored``);
    None: never (``play``). A server whose model replicas restart after a crash sets it."""

    @property
    def budget(self) -> float:
        return self.interval if self.deadline is None else self.deadline


class DeadlineMissed(Exception):
    pass


class Guard:
    """Calls one backend on a worker thread with a timeout.

    A call that times out keeps running in the background (Python cannot kill a thread); while it
    does, further calls fail at once instead of queueing behind it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending: threading.Event | None = None

    def call(self, fn: Callable[[], T], timeout: float | None) -> T:
        if self._pending is not None and not self._pending.is_set():
            raise DeadlineMissed(f"{self.name} is still busy with a call that missed its deadline")
        done = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"metabgm-{self.name}", daemon=True).start()
        if not done.wait(None if timeout is None else max(timeout, 0.0)):
            self._pending = done
            raise DeadlineMissed(f"{self.name} missed its deadline ({timeout:.2f} s)")
        if "error" in box:
            raise box["error"]
        return box["result"]


class Session:
    """One ``play`` session. Build it, then :meth:`run` (blocking; Ctrl-C stops cleanly)."""

    def __init__(
        self,
        source: Source,
        text: TextBackend,
        audio: AudioBackend,
        *,
        options: PlayOptions | None = None,
        profile: Profile = DEFAULT_PROFILE,
        out: str | Path | None = None,
        log_path: str | Path | None = None,
        use_device: bool = True,
        device: int | str | None = None,
        fallback_audio: AudioBackend | None = None,
        sink_factory: Callable[[RingBuffer, int], Sink] | None = None,
    ) -> None:
        from metabgm_edge.text.composer import Composer

        self.options = opts = options or PlayOptions()
        self.source = source
        self.text = text
        self.audio = audio
        self.fallback_audio = fallback_audio
        """The backend that takes over after repeated failures (None: a fresh embedded synthesizer)."""
        self._replaced = False
        self._primary_audio = audio
        self._replaced_at = 0.0
        self.sink_factory = sink_factory
        """Where a real-time session's ring goes (None: the device, or a file without one); ``serve``
        streams it to the player over the network. Called with the ring and the sample rate."""
        self.last_start_frame: int | None = None
        """Where the last segment's music begins in the output, in frames since the session started
        (read from :attr:`on_segment`: a stream tells its listener what plays when)."""
        self._whole_segments = False
        """Slow backend, ``if_slow=queue``: segments enter the mixer whole, once ready."""
        self.profile = profile
        self.out = Path(out) if out is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.use_device = use_device and not opts.fast
        self.device = device
        self.composer = Composer()
        self.stats = SessionStats()
        self._fallbacks: Counter[str] = Counter()
        self._text_guard = Guard("text")
        self._audio_guard = Guard("audio")
        self._audio_failures = 0
        self._anchor: Any = None
        self._stop = threading.Event()
        self._late = threading.Event()
        """Set by the watchdog when it had to extend the music: the next segment cuts in."""
        self._log_file: IO[str] | None = None
        self._encoder = msgspec.json.Encoder()
        clock = FastClock() if opts.fast else RealClock()
        self.clock = clock
        self.acquisition = Acquisition(
            source,
            interval=opts.interval,
            sample_period=opts.sample_period,
            clock=clock,
            transitions=opts.transitions,
            prelude=True,
        )
        self.mixer = Mixer(audio.sample_rate, audio.channels, crossfade_s=opts.crossfade)
        self.on_segment: Callable[[SegmentRecord], None] | None = None
        """Called after each segment is queued (the CLI prints a line)."""

    # -- one segment ----------------------------------------------------------------------------

    def _run_stage(self, fallbacks: list[str], text_deadline: float) -> Callable[..., str]:
        def run(backend: TextBackend, request: StageRequest) -> str:
            if backend is self.composer:
                return backend.generate(request)
            timeout = text_deadline - time.monotonic()
            # The backend learns its time too, so a server call ends when the stage's share does.
            bounded = msgspec.structs.replace(request, timeout=max(timeout, 0.0))
            try:
                return self._text_guard.call(lambda: backend.generate(bounded), timeout)
            except DeadlineMissed as exc:
                reason = f"text.{request.stage}.deadline"
                log.warning("%s; composer rules write the %s instead", exc, request.stage)
            except Exception as exc:
                reason = f"text.{request.stage}.error"
                log.warning("%s failed (%s: %s); composer rules write the %s instead",
                            backend.name, type(exc).__name__, exc, request.stage)  # fmt: skip
            fallbacks.append(reason)
            self._fallbacks[reason] += 1
            return self.composer.generate(request)

        return run

    def _describe(self, seg: Window, fallbacks: list[str], t0: float) -> DescribeResult:
        opts = self.options
        text_deadline = t0 + opts.budget * opts.text_share
        run_stage = self._run_stage(fallbacks, text_deadline)
        try:
            return describe(seg, self.text, mode=opts.mode, profile=self.profile,
                            seed=opts.seed + seg.index, run_stage=run_stage)  # fmt: skip
        except Exception as exc:  # e.g. the backend wrote nothing: redo with the composer
            reason = "text.empty" if "no text" in str(exc) else "text.error"
            log.warning("%s: %s; composer rules describe this segment", self.text.name, exc)
            fallbacks.append(reason)
            self._fallbacks[reason] += 1
            return describe(
                seg, self.composer, mode=opts.mode, profile=self.profile, seed=opts.seed + seg.index
            )

    def _render(
        self,
        description: str,
        seconds: float,
        seed: int,
        fallbacks: list[str],
        deadline: float,
        *,
        join: Join,
        first_chunk: float,
        now: Callable[[], float],
    ) -> tuple[float | None, float | None]:
        """Stream one segment from the audio backend into the mixer, chunk by chunk as it comes.

        Returns the session time its first chunk was queued and the monotonic time of that, or
        (None, None) when nothing was queued (the previous segment is then extended). A failure
        after some audio was queued keeps what came and extends it for the rest.
        """
        opts = self.options
        sr = self.audio.sample_rate
        tail_frames = round(opts.crossfade * sr)
        backend = self.audio
        anchor = self._anchor
        own = anchor is not None and getattr(anchor, "kind", None) == backend.kind
        request = AudioRequest(
            description=description,
            seconds=seconds,
            tail=opts.crossfade,
            seed=seed,
            anchor=anchor,
            context=None if own else self.mixer.context(CONTEXT_SECONDS),
            first_chunk=first_chunk,
        )
        want = round((seconds + opts.crossfade) * sr)
        lock = threading.Lock()
        cancel = threading.Event()
        got: dict[str, Any] = {"seg": None, "queued_at": None, "anchor": None, "frames": 0, "first": None}

        whole = self._whole_segments
        held: list[np.ndarray] = []

        def queue(audio: np.ndarray) -> None:
            with lock:
                if cancel.is_set():
                    return
                if got["seg"] is None:
                    got["seg"] = self.mixer.begin(join, tail_frames)
                got["seg"].add(audio)
                if got["queued_at"] is None:
                    got["queued_at"] = now()
                    got["first"] = time.monotonic()

        def work() -> None:
            for chunk in backend.stream(request):
                audio = np.asarray(chunk.audio, dtype=np.float32)
                if audio.ndim != 2 or audio.shape[1] != backend.channels:
                    raise ValueError(f"a chunk of shape {audio.shape}, expected (frames, {backend.channels})")
                got["frames"] += audio.shape[0]
                if whole:
                    held.append(audio)
                else:
                    queue(audio)
                if chunk.last:
                    got["anchor"] = chunk.anchor
                    break
            if abs(got["frames"] - want) > 1:
                raise ValueError(f"rendered {got['frames']} frames, expected {want}")
            if got["anchor"] is None:
                raise ValueError("the backend's last chunk carried no anchor")
            for audio in held:
                queue(audio)

        try:
            # Late text leaves the audio at least a quarter of the budget: late music beats none.
            timeout = max(deadline - time.monotonic(), 0.25 * opts.budget)
            if self._whole_segments:  # a slow backend, queued: it takes what it takes, with a margin
                speed = max(self.stats.audio_realtime_factor, 1e-3)
                timeout = max(timeout, 1.5 * (seconds + opts.crossfade) / speed + opts.interval)
            self._audio_guard.call(work, timeout)
        except Exception as exc:
            with lock:
                cancel.set()
                seg = got["seg"]
                if seg is not None:
                    seg.end()
            reason = "audio.deadline" if isinstance(exc, DeadlineMissed) else "audio.error"
            log.warning("%s: %s; extending the previous segment", backend.name, exc)
            fallbacks.append(reason)
            self._fallbacks[reason] += 1
            self._audio_failures += 1
            missing = seconds - max(0, got["frames"] - tail_frames) / sr
            # Where this segment's time begins: its own head if it started, else the extension.
            extended_at = self.mixer.frames_read + self.mixer.queued_frames
            if missing > 0:
                self.mixer.extend_previous(missing)
            self.last_start_frame = seg.start_frame if seg is not None and seg.started else extended_at
            if self._audio_failures >= AUDIO_FAILURES_BEFORE_REPLACING and not self._replaced:
                if self.fallback_audio is None:
                    from metabgm_edge.audio import open_audio_backend

                    self.fallback_audio = open_audio_backend("synth")
                log.error("%s failed %d times in a row: %s takes over for the rest of the session",
                          backend.name, self._audio_failures, self.fallback_audio.name)  # fmt: skip
                self._replaced = True
                self._replaced_at = time.monotonic()
                self.audio = self.fallback_audio
                self._audio_guard = Guard("audio")
                fallbacks.append("audio.replaced")
                self._fallbacks["audio.replaced"] += 1
            return got["queued_at"], got["first"]
        got["seg"].end()
        self.last_start_frame = got["seg"].start_frame
        self._audio_failures = 0
        self._anchor = got["anchor"]
        return got["queued_at"], got["first"]

    def _process(self, seg: Window, now: Callable[[], float]) -> SegmentRecord:
        opts = self.options
        t0 = time.monotonic()
        fallbacks: list[str] = []
        retry = opts.retry_audio_after
        if self._replaced and retry is not None and t0 - self._replaced_at >= retry:
            primary = self._primary_audio
            log.info("%s gets another try after %.0f s on %s", primary.name, retry, self.audio.name)
            self.audio, self._replaced, self._audio_failures = primary, False, 0
            self._audio_guard = Guard("audio")
            fallbacks.append("audio.restored")
            self._fallbacks["audio.restored"] += 1
        result = self._describe(seg, fallbacks, t0)
        sharp = seg.trigger in SHARP or seg.trigger == "start"
        seconds = opts.interval + (opts.budget if sharp else 0.0)
        seed = opts.seed + seg.index
        audio_deadline = t0 + opts.budget
        late = self._late.is_set()
        if seg.trigger == "start":
            join, mixer_join = "start", "append"
        elif sharp or late:
            join, mixer_join = "transition", "transition"
        else:
            join, mixer_join = "append", "append"
        # A new scene should be heard at once: ask for a short head first (the mixer cuts over to
        # it as soon as it arrives); the rest of the segment follows.
        first_chunk = HEAD_SECONDS if sharp and seconds > HEAD_SECONDS + 1.0 else 0.0
        t_audio = time.monotonic()
        queued, first = self._render(result.description, seconds, seed, fallbacks, audio_deadline,
                                     join=mixer_join, first_chunk=first_chunk, now=now)  # fmt: skip
        if queued is None:
            join = "extend"
            queued = now()
        elif join == "transition":
            self.stats.transitions += 1
        queued_at = queued
        t_done = time.monotonic()
        self._late.clear()
        deadline = seg.end + opts.budget
        overran = any(f.endswith(".deadline") for f in fallbacks)
        missed = (not opts.fast and queued_at > deadline) or late or overran
        if missed:
            self.stats.deadline_misses += 1
        timings = dict(result.timings)
        timings["audio"] = t_done - t_audio
        if first is not None:
            timings["first_audio"] = first - t_audio
        timings["total"] = t_done - t0
        for k, v in timings.items():
            self.stats.stage_seconds.setdefault(k, []).append(v)
        if seg.trigger in SHARP and join == "transition":
            self.stats.transition_latency.append(queued_at - seg.end + self._output_delay())
        return SegmentRecord(
            index=seg.index,
            start=seg.start,
            end=seg.end,
            trigger=seg.trigger,
            combat=seg.combat,
            state=seg.latest,
            window={
                "samples": seg.samples,
                "lowest_health": seg.lowest_health,
                "damage_taken": seg.damage_taken,
                "biomes": seg.biomes,
                "attackers": seg.attackers,
            },
            characterized=result.characterized,
            narrative=result.narrative,
            description=result.description,
            text_backend=result.backend,
            audio_backend=self.audio.name,
            timings=timings,
            deadline=deadline,
            queued_at=queued_at,
            missed_deadline=missed,
            fallbacks=fallbacks,
            join=join,
            audio_seconds=seconds,
        )

    def _output_delay(self) -> float:
        """Seconds between the mixer and the ear: the ring's fill plus half a crossfade."""
        if self.options.fast:
            return self.options.crossfade / 2
        return self.options.buffer_seconds + self.options.crossfade / 2

    def _record(self, rec: SegmentRecord) -> None:
        self.stats.segments += 1
        if self._log_file is not None:
            self._log_file.write(self._encoder.encode(rec).decode() + "\n")
            self._log_file.flush()
        if rec.fallbacks:
            log.info("segment %d fallbacks: %s", rec.index, ", ".join(rec.fallbacks))
        if self.on_segment is not None:
            self.on_segment(rec)

    # -- the session -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running session to end (thread-safe)."""
        self._stop.set()

    def run(self) -> SessionStats:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("w", encoding="utf-8")
        try:
            if self.options.fast:
                self._run_fast()
            else:
                self._run_real_time()
        finally:
            if self._log_file is not None:
                self._log_file.close()
            self.stats.fallbacks = dict(self._fallbacks)
            self.stats.extensions = self.mixer.stats.extensions
            self.stats.starvations = self.mixer.stats.starvations
            self.stats.source = msgspec.to_builtins(self.source.stats())
        return self.stats

    def _run_fast(self) -> None:
        """Virtual time: audio is written exactly up to each segment's end before it joins."""
        sr = self.audio.sample_rate
        self.acquisition.start()  # first: a source that cannot start leaves no half-made file
        writer = WavWriter(self.out, sr, self.audio.channels) if self.out is not None else None
        written = 0
        self.stats.sink = "file" if writer else "null"

        def play_until(t: float) -> None:
            nonlocal written
            frames = round(t * sr) - written
            while frames > 0:
                block = self.mixer.read(min(frames, sr))
                if writer is not None:
                    writer.write(block)
                written += block.shape[0]
                frames -= block.shape[0]

        duration = self.options.duration
        try:
            while not self._stop.is_set():
                seg = self.acquisition.next_segment()
                if seg is None:
                    break
                if duration is not None and seg.end > duration:
                    break
                play_until(seg.end)
                self._record(self._process(seg, lambda s=seg: s.end))
            if duration is not None:
                play_until(duration)
        except KeyboardInterrupt:
            log.info("stopped by Ctrl-C")
        finally:
            self.acquisition.stop()
            if writer is not None:
                if self._anchor is not None:
                    writer.set_metadata(anchor_to_metadata(self._anchor))
                writer.close()
            self.stats.seconds = written / sr

    def check_speed(self) -> float:
        """Before a real-time session: can the audio backend keep up here? If not, do what
        ``if_slow`` says, and say so once with the measured figure. Returns the real-time factor."""
        opts = self.options
        speed = self.audio.realtime_factor()
        self.stats.audio_realtime_factor = speed
        if speed >= SPEED_MARGIN:
            log.info("%s renders %.1f s of audio per second here: it keeps up", self.audio.name, speed)
            return speed
        name = self.audio.name
        if opts.if_slow == "synth":
            if self.fallback_audio is None:
                from metabgm_edge.audio import open_audio_backend

                self.fallback_audio = open_audio_backend("synth")
            log.warning(
                "%s renders %.2f s of audio per second here (it needs %.2f to keep up): the embedded "
                "synthesizer plays instead (--if-slow queue plays it anyway, later than the game)",
                name, speed, SPEED_MARGIN,
            )  # fmt: skip
            self.audio = self.fallback_audio
            self._fallbacks["audio.too_slow"] += 1
            self.stats.audio_policy = "synth"
            return speed
        render_s = opts.interval / max(speed, 1e-3)
        self._whole_segments = True
        self.stats.audio_policy = "queue"
        log.warning(
            "%s renders %.2f s of audio per second here, slower than real time: each %.0f s segment takes "
            "about %.0f s, so it is heard about %.0f s after its scene, and the music before it repeats "
            "meanwhile (--if-slow synth plays the embedded synthesizer instead)",
            name, speed, opts.interval, render_s, render_s,
        )  # fmt: skip
        return speed

    def _run_real_time(self) -> None:
        from metabgm_edge.playback.feeder import Feeder
        from metabgm_edge.playback.sinks import open_sink

        opts = self.options
        self.check_speed()  # before the source starts: a measurement takes a moment
        if isinstance(self.clock, RealClock):
            self.clock.restart()
        sr = self.audio.sample_rate
        self.acquisition.start()  # first: a source that cannot start opens no device or file
        ring = RingBuffer(max(4 * round(opts.buffer_seconds * sr), sr), self.audio.channels)
        if self.sink_factory is not None:
            sink = self.sink_factory(ring, sr)
        else:
            sink = open_sink(ring, sample_rate=sr, wav_path=self.out, use_device=self.use_device,
                             device=self.device, paced=True)  # fmt: skip
        feeder = Feeder(self.mixer, ring, target_seconds=opts.buffer_seconds, realtime=True)
        self.stats.sink = getattr(sink, "kind", type(sink).__name__)
        pipeline = threading.Thread(target=self._pipeline, name="metabgm-pipeline", daemon=True)
        low_water = opts.crossfade + opts.buffer_seconds + 0.25
        pipeline.start()
        try:
            # The ring starts empty: wait for the first (start) segment before the device runs.
            while not self._stop.is_set() and self.mixer.queued_seconds == 0 and pipeline.is_alive():
                time.sleep(0.01)
            feeder.start()
            sink.start()
            while not self._stop.is_set() and pipeline.is_alive():
                time.sleep(0.05)
                if opts.duration is not None and self.clock.now() >= opts.duration:
                    break
                if self.mixer.queued_seconds < low_water and not self._stop.is_set():
                    # The next segment is late: keep the music going with the previous one.
                    got = self.mixer.extend_previous(opts.interval / 2)
                    if got > 0:
                        self._late.set()
                        self._fallbacks["audio.late_extend"] += 1
                        log.warning("next segment is late: extended the music by %.1f s", got)
        except KeyboardInterrupt:
            log.info("stopped by Ctrl-C")
        finally:
            self._stop.set()
            self.acquisition.stop()
            # End with a fade at once: crossfade whatever plays into silence, drop the rest, and take
            # nothing more (a segment still rendering would otherwise play after the fade).
            fade = round(opts.crossfade * sr)
            self.mixer.transition(np.zeros((fade, self.audio.channels), dtype=np.float32), 0)
            self.mixer.close()
            feeder.finish(timeout=2.0)
            feeder.stop()
            if self._anchor is not None:  # `render --continue-from` the recording continues the music
                sink.set_metadata(anchor_to_metadata(self._anchor))
            sink.stop(drain=True, timeout=2.0)
            pipeline.join(timeout=min(2.0, 2 * opts.budget))  # a render still running is abandoned
            st = sink.stats()
            self.stats.underruns = st.ring_underruns
            self.stats.device_underflows = getattr(st, "underflows", 0)
            self.stats.seconds = st.frames / sr

    def _pipeline(self) -> None:
        try:
            while not self._stop.is_set():
                seg = self.acquisition.next_segment()
                if seg is None or self._stop.is_set():
                    break
                self._record(self._process(seg, self.clock.now))
        except Exception:
            log.exception("the pipeline failed; the session stops")
