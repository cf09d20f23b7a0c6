"""The real-time scheduler: state -> description -> audio, segment after segment, without a gap.

Threads (real time):
    sampler   metabgm_edge.acquisition: samples the source, hands over segments
    pipeline  here: characterize -> stage 1 -> stage 2 -> audio, per segment; the audio backend
              streams chunks, each queued in the mixer as it comes
    audio     a worker the pipeline waits on with the segment's deadline (``Guard``)
    feeder    metabgm_edge.playback.feeder: mixer -> lock-free ring buffer
    callback  PortAudio (or the file sink's thread): ring buffer -> device and WAV
    main      here: a watchdog that extends the music when a segment is late, Ctrl-C, --duration

Timeline. The lag between a window's close and its music is what the backends need, not a
fixed interval. Segment k is rendered to last until the next window is expected to close plus a
*lead*: the margin its music needs to be ready, learned from the measured stage times (1.25 x
the longest of the last segments' needs, plus the ring's guard; see :meth:`Session.lead`), so a
slow LLM or a slow audio backend gets a longer lead and never underruns. Its end is then carried
on to the next natural point of its music (a bar line, or a beat of a long bar: the anchor's
optional :class:`~metabgm_edge.audio.BarGrid`) by a short extension rendered from its anchor, so
the next window's music joins at a bar line, as soon as it is ready. A sharp change (combat
starts or ends, the dimension changes, health drops) is rendered at once, its short head first,
and crossfaded in over what is playing, right behind the audio the device is about to play (the
deep ring buffer gives back what it holds and has not played). Every segment's log line says
when it became audible and, for a change, the lag from the first sample that saw it.

Fallbacks, each named, logged and counted, none of them silent:
    text.<stage>.error / text.<stage>.deadline   the composer rules write that stage instead
    audio.error / audio.deadline                  the previous segment is extended, crossfaded
    audio.replaced                                after 3 audio failures in a row the embedded
                                                  synthesizer takes over for the session
    audio.late_extend                             the next segment is late while the music is
                                                  about to run out: the music is extended, the
                                                  late segment then cuts in
    audio.align.error                             the extension to the next bar line failed: the
                                                  next segment joins where the music ends
    audio.stalled                                 a segment's stream stopped coming mid-segment
                                                  (a model replica that died) with the music about
                                                  to run out: it ends where it is, the music is
                                                  extended, the next segment cuts in
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
from metabgm_edge.audio import (
    CONTEXT_SECONDS,
    SPEED_MARGIN,
    AudioBackend,
    AudioRequest,
    anchor_to_metadata,
    next_join_point,
)
from metabgm_edge.errors import MetabgmError
from metabgm_edge.listener_profile import DEFAULT_PROFILE, Profile
from metabgm_edge.playback.mixer import Join, Mixer
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.sinks import Sink
from metabgm_edge.playback.wav import open_wav_writer
from metabgm_edge.session_log import SegmentRecord, SessionStats, SessionSummary
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
FAST_LEAD: Final = 0.5
"""The lead in --fast (virtual time): fixed, so that a fast session is reproducible."""
INITIAL_LEAD: Final = 1.0
"""The lead before any stage time has been measured."""
MIN_LEAD: Final = 0.3
MAX_LEAD: Final = 30.0
LEAD_FACTOR: Final = 1.25
LEAD_SAFETY: Final = 0.1
"""Seconds added to the learned lead on top of the ring's guard."""
LEAD_HISTORY: Final = 5
"""Segments whose measured needs the lead covers."""
MIN_SEGMENT: Final = 1.0
STALL_SECONDS: Final = 1.0
"""A stream that sends nothing this long while the music is about to run out has stalled."""
RESERVE_SECONDS: Final = 0.5
"""Tail rendered past one crossfade: music the deep ring keeps playing while the next segment comes."""


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
    buffer_seconds: float = 1.0
    """Audio kept in the ring ahead of the device, so a busy machine never starves it. Joins take
    back what the device has not played, so this depth adds nothing to a change's latency."""
    lead: float | None = None
    """Seconds from a window's close to its music (before the wait for a bar line); None: learned
    from the measured stage times in real time, :data:`FAST_LEAD` with ``fast``."""
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


class _Closing(Exception):
    """The session ended while a segment was being made."""


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
        """Stream frame where the last segment's music begins (read from :attr:`on_segment`: a stream
        tells its listener what plays when); a failed segment's is where the extension begins."""
        self._whole_segments = False
        """Slow backend, ``if_slow=queue``: segments enter the mixer whole, once ready."""
        self.profile = profile
        self.out = Path(out) if out is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.use_device = use_device and not opts.fast
        self.device = device
        self.composer = Composer()
        self.stats = SessionStats()
        # The session's fallbacks: those of the segments heard (a segment the end of the session
        # cuts short is neither logged nor counted) and the session's own (too slow, late extension).
        self._fallbacks: Counter[str] = Counter()
        self._text_guard = Guard("text")
        self._audio_guard = Guard("audio")
        self._audio_failures = 0
        self._anchor: Any = None
        self._stop = threading.Event()
        self._closing = threading.Event()
        """Set when a real-time session ends: the music fades out now and nothing more is queued."""
        self._late = threading.Event()
        """Set by the watchdog when it had to extend the music: the next segment cuts in."""
        self._cut_stalled: Callable[[], bool] | None = None
        """While a segment streams: ends it where it is if its stream has stalled (the watchdog's)."""
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
        self._feeder: Any = None
        """The real-time feeder (None in fast mode): where the listener is on the stream."""
        self._device_latency = 0.0
        self._needs: list[float] = []
        self._rates: list[float] = []
        """Seconds the audio backend took per second of audio, for the last segments."""
        """Measured needs (see SegmentRecord.lead_needed) of the last segments."""
        self._rejects_seen: dict[str, int] = {}
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
            return describe(
                seg, self.composer, mode=opts.mode, profile=self.profile, seed=opts.seed + seg.index
            )

    def _render(
        self,
        request: AudioRequest,
        fallbacks: list[str],
        deadline: float,
        *,
        join: Join,
        closed_mono: float,
        now: Callable[[], float],
    ) -> Rendered | None:
        """Stream one segment from the audio backend into the mixer, chunk by chunk as it comes.

        Returns where and when it entered the music, or None when nothing was queued (the
        previous segment is then extended). A failure after some audio was queued keeps what came
        and extends it for the rest.
        """
        opts = self.options
        sr = self.audio.sample_rate
        tail_frames = round(request.tail * sr)
        backend = self.audio
        want = round((request.seconds + request.tail) * sr)
        lock = threading.Lock()
        cancel = threading.Event()
        got: dict[str, Any] = {"seg": None, "queued_at": None, "anchor": None, "frames": 0, "need": 0.0,
                               "join": join, "first": None, "rendered": 0,
                               "last": time.monotonic()}  # fmt: skip
        whole = self._whole_segments
        held: list[np.ndarray] = []

        def queue(audio: np.ndarray) -> bool:
            with lock:
                if cancel.is_set():
                    return False
                if self._closing.is_set():  # the session is ending: nothing more is queued
                    got["closed"] = True
                    return False
                # How early the music could have started for this chunk to be in time.
                need = time.monotonic() - closed_mono - got["frames"] / sr
                got["need"] = max(got["need"], need)
                if got["seg"] is None:
                    # The music had to be extended while this segment was on its way: it cuts
                    # in over the extension instead of waiting for the extension's end.
                    got["join"] = "transition" if self._late.is_set() else join
                    got["seg"] = self.mixer.begin(got["join"], tail_frames)
                got["seg"].add(audio)
                got["frames"] += audio.shape[0]
                got["last"] = time.monotonic()
                if got["queued_at"] is None:
                    got["queued_at"] = now()
                    got["first"] = time.monotonic()
                return True

        def cut() -> bool:
            with lock:
                seg = got["seg"]
                if cancel.is_set() or seg is None or time.monotonic() - got["last"] < STALL_SECONDS:
                    return False
                cancel.set()
                got["stalled"] = True
            seg.end(keep_last=False)  # what the extension repeats is the music before this stub
            return True

        def work() -> None:
            for chunk in backend.stream(request):
                audio = np.asarray(chunk.audio, dtype=np.float32)
                if audio.ndim != 2 or audio.shape[1] != backend.channels:
                    raise ValueError(f"a chunk of shape {audio.shape}, expected (frames, {backend.channels})")
                got["rendered"] += audio.shape[0]
                if whole:  # a slow backend, queued: the segment enters the music once complete
                    held.append(audio)
                elif not queue(audio):
                    return
                if chunk.last:
                    got["anchor"] = chunk.anchor
                    break
            if abs(got["rendered"] - want) > 1:
                raise ValueError(f"rendered {got['rendered']} frames, expected {want}")
            if got["anchor"] is None:
                raise ValueError("the backend's last chunk carried no anchor")
            for audio in held:
                if not queue(audio):
                    return

        self._cut_stalled = cut
        try:
            try:
                # Late text leaves the audio at least a quarter of the budget: late music beats none.
                timeout = max(deadline - time.monotonic(), 0.25 * opts.budget)
                if whole:  # a slow backend, queued: it takes what it takes, with a margin
                    speed = max(self.stats.audio_realtime_factor, 1e-3)
                    timeout = max(timeout, 1.5 * (request.seconds + request.tail) / speed + opts.interval)
                self._audio_guard.call(work, timeout)
                if got.get("closed"):
                    if got["seg"] is not None:
                        got["seg"].end()
                    return None
            except Exception as exc:
                if self._closing.is_set():
                    return None
                with lock:
                    cancel.set()
                    seg = got["seg"]
                    if seg is not None:
                        seg.end()
                reason = "audio.deadline" if isinstance(exc, DeadlineMissed) else "audio.error"
                if got.get("stalled"):  # the watchdog cut it and keeps the music going
                    reason = "audio.stalled"
                log.warning("%s: %s; extending the previous segment", backend.name, exc)
                fallbacks.append(reason)
                self._audio_failures += 1
                missing = request.seconds - max(0, got["frames"] - tail_frames) / sr
                if missing > 0 and not got.get("stalled"):
                    self.mixer.extend_previous(missing)
                if self._audio_failures >= AUDIO_FAILURES_BEFORE_REPLACING and not self._replaced:
                    if self.fallback_audio is None:
                        self.fallback_audio = self._fallback_synth()
                    log.error("%s failed %d times in a row: %s takes over for the rest of the session",
                              backend.name, self._audio_failures, self.fallback_audio.name)  # fmt: skip
                    self._replaced = True
                    self._replaced_at = time.monotonic()
                    self.audio = self.fallback_audio
                    self._audio_guard = Guard("audio")
                    fallbacks.append("audio.replaced")
                seg = got["seg"]
                if seg is None or seg.start_frame is None:
                    return None
                return Rendered(
                    got["queued_at"], seg.start_frame, seg.late, got["need"], None, got["join"], got["first"]
                )
            seg = got["seg"]
            if got.get("stalled"):  # it came back after the watchdog cut it: what came late is dropped
                log.warning("%s stalled mid-segment; the music was extended", backend.name)
                fallbacks.append("audio.stalled")
                self._audio_failures += 1
                return Rendered(
                    got["queued_at"], seg.start_frame, seg.late, got["need"], None, got["join"], got["first"]
                )
            seg.end()
            self._audio_failures = 0
            self._anchor = got["anchor"]
            return Rendered(
                got["queued_at"],
                seg.start_frame,
                seg.late,
                got["need"],
                got["anchor"],
                got["join"],
                got["first"],
            )
        finally:
            self._cut_stalled = None

    def _request(self, description: str, seconds: float, seed: int, first_chunk: float = 0.0) -> AudioRequest:
        anchor = self._anchor
        own = anchor is not None and getattr(anchor, "kind", None) == self.audio.kind
        return AudioRequest(
            description=self.profile.audio_description(description),  # what the listener avoids, named
            seconds=seconds,
            tail=self.options.crossfade + RESERVE_SECONDS,
            seed=seed,
            anchor=anchor,
            context=None if own else self.mixer.context(CONTEXT_SECONDS),
            first_chunk=first_chunk,
        )

    # -- the timeline ---------------------------------------------------------------------------

    def lead(self) -> float:
        """Seconds between a window's close and its music being heard, before the wait for a bar
        line: :attr:`PlayOptions.lead` if set; :data:`FAST_LEAD` in fast mode; else learned,
        :data:`LEAD_FACTOR` x the largest need of the last :data:`LEAD_HISTORY` segments (text
        time + how late each audio chunk came) plus the ring's guard and :data:`LEAD_SAFETY`."""
        opts = self.options
        if opts.lead is not None:
            return opts.lead
        if opts.fast:
            return FAST_LEAD
        if not self._needs:
            return INITIAL_LEAD
        guard = self._feeder.guard() / self.mixer.sample_rate if self._feeder is not None else 0.0
        learned = LEAD_FACTOR * max(self._needs) + guard + LEAD_SAFETY
        return min(MAX_LEAD, max(MIN_LEAD, learned))

    def _head(self, seconds: float) -> float:
        """How long the first chunk of a segment that cuts in at once should be: :data:`HEAD_SECONDS`,
        or longer when the measured render speed says the rest would not come before the head has
        played (a slow or busy machine), so the new music never stops after its head."""
        if seconds <= HEAD_SECONDS + 1.0:
            return 0.0
        rate = 1.5 * max(self._rates) if self._rates else 0.0  # seconds of work per second of audio
        head = max(HEAD_SECONDS, (rate * seconds + 0.5) / (1.0 + rate))
        return head if head + 1.0 < seconds else 0.0

    def frame_time(self, frame: int) -> float:
        """Session time at which stream frame ``frame`` is (or was) heard."""
        sr = self.mixer.sample_rate
        if self._feeder is None:
            return frame / sr  # fast mode: the WAV is the game clock
        return self.clock.now() + (frame - self._feeder.heard_frame) / sr + self._device_latency

    def _earliest(self, now: float) -> float:
        """The soonest a transition starting at session time ``now`` can be heard."""
        if self._feeder is None:
            return now
        return now + self._feeder.guard() / self.mixer.sample_rate + self._device_latency

    def _align(self, description: str, seed: int, target: float, fallbacks: list[str]) -> float:
        """Carry the music queued last on to the first natural point at or after session time
        ``target`` (the next window's expected close plus the lead): a short extension rendered
        from its anchor, so the next window's music joins at a bar line. Returns the seconds added."""
        ends = self.frame_time(self.mixer.join_frame)
        point = next_join_point(self._anchor, max(0.0, target - ends))
        if point is None:  # no bar grid (MusicGen): only a lead that grew needs more music
            point = target - ends if target - ends > 0.25 else 0.0
        if point < 0.02 or self.mixer.streaming or self._closing.is_set() or self._whole_segments:
            return 0.0
        seconds = min(point, 2 * self.options.interval)
        request = self._request(description, seconds, seed)
        try:
            self._audio_guard.call(lambda: self._extend_from(request), max(2.0, 0.25 * self.options.budget))
        except Exception as exc:
            log.warning("%s could not carry the music on to its next bar line (%s: %s); the next "
                        "segment joins where it ends", self.audio.name, type(exc).__name__, exc)  # fmt: skip
            fallbacks.append("audio.align.error")
            return 0.0
        log.debug("music carried on %.2f s to its next bar line", seconds)
        return seconds

    def _extend_from(self, request: AudioRequest) -> None:
        sr = self.audio.sample_rate
        seg = None
        anchor = None
        frames = 0
        try:
            for chunk in self.audio.stream(request):
                if self._closing.is_set():
                    return
                audio = np.asarray(chunk.audio, dtype=np.float32)
                if audio.ndim != 2 or audio.shape[1] != self.audio.channels:
                    raise ValueError(f"a chunk of shape {audio.shape}")
                if seg is None:
                    seg = self.mixer.begin("append", round(request.tail * sr))
                seg.add(audio)
                frames += audio.shape[0]
                if chunk.last:
                    anchor = chunk.anchor
                    break
        finally:
            if seg is not None:
                seg.end(keep_last="extend")
        if anchor is None or abs(frames - round((request.seconds + request.tail) * sr)) > 1:
            raise ValueError("the extension came back incomplete")
        self._anchor = anchor

    def _process(self, seg: Window, now: Callable[[], float]) -> SegmentRecord:
        opts = self.options
        t0 = time.monotonic()
        closed_mono = t0 if opts.fast else t0 - max(0.0, now() - seg.end)
        fallbacks: list[str] = []
        retry = opts.retry_audio_after
        if self._replaced and retry is not None and t0 - self._replaced_at >= retry:
            primary = self._primary_audio
            log.info("%s gets another try after %.0f s on %s", primary.name, retry, self.audio.name)
            self.audio, self._replaced, self._audio_failures = primary, False, 0
            self._audio_guard = Guard("audio")
            fallbacks.append("audio.restored")
        result = self._describe(seg, fallbacks, t0)
        sharp = seg.trigger in SHARP
        seed = opts.seed + seg.index
        late = self._late.is_set()
        if seg.trigger == "start":
            join, mixer_join = "start", "append"
        elif sharp or late:
            join, mixer_join = "transition", "transition"
        else:
            join, mixer_join = "append", "append"
        lead = self.lead()
        next_close = seg.end + opts.interval
        target = next_close + lead
        if join == "append":
            begins = self.frame_time(self.mixer.join_frame)
            deadline = begins - (self._feeder.guard() / self.mixer.sample_rate if self._feeder else 0.0)
        else:
            begins = self._earliest(now())
            deadline = seg.end + opts.budget
        seconds = max(MIN_SEGMENT, target - begins)
        # A new scene should be heard at once: ask for a short head first (the mixer cuts over to
        # it as soon as it arrives); the rest of the segment follows.
        first_chunk = self._head(seconds) if join != "append" else 0.0
        if self._whole_segments:  # a slow backend, queued: one interval of music, heard when ready
            seconds, first_chunk = opts.interval, 0.0
        t_audio = time.monotonic()
        request = self._request(result.description, seconds, seed, first_chunk)
        hard = t0 + opts.budget
        planned = self.mixer.join_frame if mixer_join == "append" else self.mixer.read_frame
        rendered = self._render(request, fallbacks, hard, join=mixer_join, closed_mono=closed_mono, now=now)
        if self._closing.is_set():
            raise _Closing  # the session ended while this segment was on its way: it is not heard
        if rendered is None:
            join = "extend"
            queued_at, start_frame, late_join, need = now(), None, False, None
        else:
            queued_at, start_frame, late_join, need = (
                rendered.queued_at,
                rendered.start_frame,
                rendered.late,
                rendered.need,
            )
            if rendered.join == "transition" and join == "append":
                join, late = "transition", True  # it came late: cut in over the extended music
            if join == "transition":
                self.stats.transitions += 1
            if not opts.fast and need is not None:
                self._needs.append(need)
                del self._needs[:-LEAD_HISTORY]
            if not opts.fast and seconds > 0:  # (fast mode: a fixed head, reproducible)
                self._rates.append((time.monotonic() - t_audio) / seconds)
                del self._rates[:-LEAD_HISTORY]
        self.last_start_frame = start_frame if start_frame is not None else planned
        heard_at = audible_at = None
        if start_frame is not None:
            heard_at = self.frame_time(start_frame)
            audible_at = heard_at + opts.crossfade / 2
        rendered_seconds = seconds  # (a failed render is made up by extending the previous segment)
        if rendered is not None and rendered.anchor is not None:
            rendered_seconds += self._align(result.description, seed, next_close + self.lead(), fallbacks)
        t_done = time.monotonic()
        self._late.clear()
        overran = any(f.endswith(".deadline") for f in fallbacks)
        missed = late or overran or late_join or (not opts.fast and join != "append" and queued_at > deadline)
        if missed:
            self.stats.deadline_misses += 1
        timings = dict(result.timings)
        timings["audio"] = t_done - t_audio  # the segment and its extension to the next bar line
        if rendered is not None and rendered.first is not None:
            timings["first_audio"] = rendered.first - t_audio
        timings["total"] = t_done - t0
        for k, v in timings.items():
            self.stats.stage_seconds.setdefault(k, []).append(v)
        kind = "sharp" if sharp else "gradual"
        lag = None
        if audible_at is not None:
            if seg.trigger != "start":
                self.stats.close_lag.setdefault(kind, []).append(audible_at - seg.end)
            if seg.changed_at is not None:
                lag = audible_at - seg.changed_at
                self.stats.change_lag.setdefault(kind, []).append(lag)
            if sharp and join == "transition":
                self.stats.transition_latency.append(audible_at - seg.end)
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
            audio_seconds=rendered_seconds,
            heard_at=heard_at,
            audible_at=audible_at,
            lead=lead,
            lead_needed=need,
            change=seg.change,
            changed_at=seg.changed_at,
            lag=lag,
            rejected=self._new_rejects(),
            late=late_join,
        )

    def _new_rejects(self) -> dict[str, int]:
        """Live messages rejected since the last call, by reason."""
        reasons = self.source.stats().reasons
        new = {
            k: n - self._rejects_seen.get(k, 0)
            for k, n in reasons.items()
            if n > self._rejects_seen.get(k, 0)
        }
        self._rejects_seen = dict(reasons)
        return new

    def _record(self, rec: SegmentRecord) -> None:
        self.stats.segments += 1
        self._fallbacks.update(rec.fallbacks)
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
            try:
                if self.log_path.parent and not self.log_path.parent.exists():
                    self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log_file = self.log_path.open("w", encoding="utf-8")
            except OSError as exc:
                raise MetabgmError(
                    f"cannot write the session log {self.log_path}: {exc.strerror or exc}"
                ) from None
        try:
            if self.options.fast:
                self._run_fast()
            else:
                self._run_real_time()
        finally:
            self.stats.fallbacks = dict(self._fallbacks)
            self.stats.extensions = self.mixer.stats.extensions
            self.stats.starvations = self.mixer.stats.starvations
            source = self.source.stats()
            self.stats.source = msgspec.to_builtins(source)
            self.stats.rejected = dict(source.reasons)
            self.stats.received = source.received
            if self._log_file is not None:
                summary = SessionSummary(summary=self.stats)
                self._log_file.write(self._encoder.encode(summary).decode() + "\n")
                self._log_file.close()
        return self.stats

    def _run_fast(self) -> None:
        """Virtual time: audio is written exactly up to each segment's end before it joins."""
        sr = self.audio.sample_rate
        self.acquisition.start()  # first: a source that cannot start leaves no half-made file
        writer = None
        try:
            writer = open_wav_writer(self.out, sr, self.audio.channels) if self.out is not None else None
        except BaseException:
            self.acquisition.stop()
            raise
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

    def _fallback_synth(self) -> AudioBackend:
        """The embedded synthesizer in the mixer's format (mono for a mono model)."""
        from metabgm_edge.audio import open_audio_backend

        return open_audio_backend("synth", channels=self.mixer.channels)

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
                self.fallback_audio = self._fallback_synth()
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
        try:
            ring = RingBuffer(max(2 * round(opts.buffer_seconds * sr), sr), self.audio.channels)
            if self.sink_factory is not None:
                sink = self.sink_factory(ring, sr)
            else:
                sink = open_sink(
                    ring, sample_rate=sr, wav_path=self.out, use_device=self.use_device, device=self.device,
                    paced=True, strict_device=self.device is not None,
                )  # fmt: skip
        except BaseException:
            self.acquisition.stop()
            raise
        feeder = Feeder(self.mixer, ring, target_seconds=opts.buffer_seconds, realtime=True)
        self._feeder = feeder
        self.stats.sink = getattr(sink, "kind", type(sink).__name__)
        pipeline = threading.Thread(target=self._pipeline, name="metabgm-pipeline", daemon=True)
        pipeline.start()
        started = False
        try:
            # The ring starts empty: wait for the first (start) segment before the device runs.
            while not self._stop.is_set() and self.mixer.end_frame == 0 and pipeline.is_alive():
                if opts.duration is not None and self.clock.now() >= opts.duration:
                    break
                time.sleep(0.01)
            if self.mixer.end_frame == 0:  # stopped, or --duration passed, before any music
                log.warning("no music was made: %s", self._nothing_heard())
                return
            feeder.start()
            ready = time.monotonic() + 1.0  # the device starts on a filled ring, never on an empty one
            while ring.available_frames < feeder.target_frames // 2 and time.monotonic() < ready:
                if self.mixer.queued_frames == 0 and ring.available_frames > 0:
                    break
                time.sleep(0.002)
            sink.start()
            started = True
            retry_at = 0.0
            self._device_latency = float(getattr(sink.stats(), "latency_s", 0.0) or 0.0)
            while not self._stop.is_set() and pipeline.is_alive():
                time.sleep(0.05)
                if opts.duration is not None and self.clock.now() >= opts.duration:
                    break
                ahead = (ring.available_frames + self.mixer.queued_frames) / sr
                low_water = feeder.guard() / sr + 0.3
                waiting = time.monotonic() < retry_at or self._stop.is_set()
                if ahead < low_water and not waiting:
                    if self.mixer.streaming:  # a segment is coming in: only a stalled one is cut
                        cut = self._cut_stalled
                        if cut is None or not cut():
                            continue
                        log.warning("the segment on its way stalled mid-stream: it ends where it is")
                    # The next segment is late: keep the music going with the previous one.
                    got = self.mixer.extend_previous(opts.interval / 2)
                    if got > 0:
                        self._late.set()
                        self._fallbacks["audio.late_extend"] += 1
                        log.warning("next segment is late: extended the music by %.1f s", got)
                    else:
                        retry_at = time.monotonic() + 0.5
        except KeyboardInterrupt:
            log.info("stopped by Ctrl-C")
        finally:
            self._stop.set()
            self._closing.set()  # the segment on its way is not queued any more: stop now, not later
            self.acquisition.stop()
            # End with a fade: the segment on its way ends where it is, whatever plays crossfades
            # into silence, the rest is dropped, and nothing more is taken.
            self.mixer.close(fade_frames=round(opts.crossfade * sr) if started else 0)
            if started:
                feeder.finish(timeout=2.0)
            feeder.stop()
            if self._anchor is not None:  # `render --continue-from` the recording continues the music
                sink.set_metadata(anchor_to_metadata(self._anchor))
            sink.stop(drain=started, timeout=2.0)  # before waiting for the pipeline: nothing plays on
            if not started and self.out is not None:
                open_wav_writer(self.out, sr, self.audio.channels).close()  # a valid, empty WAV all the same
            pipeline.join(timeout=2 * opts.budget)  # (it queues nothing more: the log gets its last line)
            st = sink.stats()
            self.stats.underruns = st.ring_underruns
            self.stats.device_underflows = getattr(st, "underflows", 0)
            self.stats.seconds = st.frames / sr

    def _nothing_heard(self) -> str:
        st = self.source.stats()
        if st.received == 0:
            return f"no message came from {self.source.uri}"
        reasons = ", ".join(f"{k} x{n}" for k, n in sorted(st.reasons.items()))
        return f"{st.received} messages came from {self.source.uri}, none valid ({reasons})"

    def _pipeline(self) -> None:
        try:
            while not self._stop.is_set():
                seg = self.acquisition.next_segment()
                if seg is None or self._stop.is_set():
                    break
                self._record(self._process(seg, self.clock.now))
        except _Closing:
            pass
        except Exception:
            log.exception("the pipeline failed; the session stops")


class Rendered(msgspec.Struct, frozen=True):
    """Where and when a rendered segment entered the music."""

    queued_at: float
    start_frame: int
    late: bool
    need: float
    anchor: Any
    join: str
    """How it entered: the mixer's join (a late one became a transition)."""
    first: float | None = None
    """Monotonic time its first chunk was queued."""
