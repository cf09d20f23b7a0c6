"""Acquisition (paper II-B): a sampler thread reads the source and aggregates each segment.

The sampler asks the source for the state once per ``sample_period`` and folds each sample into
an :class:`Aggregator`. Every ``interval`` seconds, or at once on a sharp scene change (combat
starts or ends, the dimension changes, health falls past a threshold), the aggregate becomes a
:class:`~metabgm_edge.state.Window` and is handed to the consumer through a bounded queue.

Time comes from a :class:`Clock`: :class:`RealClock` for play, :class:`FastClock` (virtual time,
sleeps return at once) for simulated or replayed sessions run faster than real time.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Final, Protocol

import msgspec

from metabgm_edge.characterize import COMBAT_HOLD_S, UNKNOWN_BIOMES, in_combat, scene_change, scene_words
from metabgm_edge.sources import LiveSource, Source
from metabgm_edge.state import SceneState, Window

log = logging.getLogger(__name__)

MIN_INTERVAL: Final = 2.0
MAX_INTERVAL: Final = 60.0
DIMENSION_BIOMES: Final = {"the_nether": "nether_wastes", "the_end": "the_end", "overworld": "plains"}
"""The biome a dimension is taken to be in while the sender cannot say (see Aggregator.known)."""
HEALTH_ALARM: Final = 0.3
"""Fraction of max health under which a fall counts as a sharp change."""
MIN_TRANSITION_GAP: Final = 2.0
"""Seconds a segment lasts at least before a sharp change may cut it short."""


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, t: float, stop: threading.Event) -> None: ...


class RealClock:
    """Seconds since creation on the monotonic clock."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def restart(self) -> None:
        """Time 0 is now (before the session starts, after its preparations)."""
        self._t0 = time.monotonic()

    def sleep_until(self, t: float, stop: threading.Event) -> None:
        delay = t - self.now()
        if delay > 0:
            stop.wait(delay)


class FastClock:
    """Virtual time: sleeping jumps the clock forward at once."""

    def __init__(self) -> None:
        self._t = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def sleep_until(self, t: float, stop: threading.Event) -> None:
        with self._lock:
            self._t = max(self._t, t)


class Aggregator:
    """Folds samples into segments. Not thread-safe: the sampler thread alone uses it."""

    def __init__(self, start: float = 0.0) -> None:
        self.index = 0
        self._last_combat: float | None = None
        self._previous: SceneState | None = None
        self._reference: tuple[SceneState, bool] | None = None
        """The scene now playing: the last segment handed off, or the first state seen."""
        self._known_biome: tuple[str, str] | None = None
        """(dimension, biome) of the last state that named its biome."""
        self._words: list[str] | None = None
        """The latest sample's scene in words, and since when it has been so."""
        self._words_since = start
        self._reset(start)

    def _reset(self, start: float) -> None:
        self.start = start
        self.samples = 0
        self.latest: SceneState | None = None
        self.combat_seen = False
        self.lowest_health = float("inf")
        self.damage_taken = 0.0
        self.biomes: list[str] = []
        self.attackers: list[str] = []

    def known(self, state: SceneState) -> SceneState:
        """``state`` with an unknown biome ("unknown", as a connector sends during a dimension
        change) replaced by the last biome named in the same dimension, else the dimension's usual
        one, so it is neither counted as a biome visited nor put in a prompt."""
        biome, dimension = state.scene.biome, state.scene.dimension
        if biome.strip().lower() not in UNKNOWN_BIOMES:
            self._known_biome = (dimension, biome)
            return state
        if self._known_biome is not None and self._known_biome[0] == dimension:
            fill = self._known_biome[1]
        else:
            fill = DIMENSION_BIOMES.get(dimension, "plains")
        return msgspec.structs.replace(state, scene=msgspec.structs.replace(state.scene, biome=fill))

    def observe(self, state: SceneState, t: float) -> None:
        """Fold a state into the window's events (every message of a live source passes here)."""
        state = self.known(state)
        self.lowest_health = min(self.lowest_health, state.health.value)
        prev = self._previous
        if prev is not None and state.health.value < prev.health.value:
            self.damage_taken += prev.health.value - state.health.value
        self._previous = state
        if state.scene.biome not in self.biomes:
            self.biomes.append(state.scene.biome)
        hit = state.attacked
        if hit is not None and hit.attacker and hit.damage > 0 and hit.attacker not in self.attackers:
            self.attackers.append(hit.attacker)
        if in_combat(state):
            self.combat_seen = True
            self._last_combat = t

    def add(self, t: float, state: SceneState, *, observed: bool = False) -> None:
        """One sample. ``observed`` means :meth:`observe` already saw this state."""
        if not observed:
            self.observe(state, t)
        state = self.known(state)
        self.samples += 1
        self.latest = state
        if self._reference is None:
            self._reference = (state, self.combat_at(t))
        words = scene_words(state, self.combat_at(t))
        if words != self._words:
            self._words, self._words_since = words, t

    def combat_at(self, t: float) -> bool:
        return self._last_combat is not None and t - self._last_combat <= COMBAT_HOLD_S

    def sharp_change(self, t: float) -> str | None:
        """The reason to end the segment now, if the scene changed sharply since the last one."""
        latest = self.latest
        if self._reference is None or latest is None or t - self.start < MIN_TRANSITION_GAP:
            return None
        playing, playing_combat = self._reference
        combat = self.combat_at(t)
        if combat and not playing_combat:
            return "combat_start"
        if playing_combat and not combat:
            return "combat_end"
        if latest.scene.dimension != playing.scene.dimension:
            return "dimension"
        was = playing.health.value / playing.health.max
        now = latest.health.value / latest.health.max
        if was >= HEALTH_ALARM > now:
            return "health_drop"
        return None

    def close(self, t: float, trigger: str) -> Window | None:
        """End the current segment; None if it holds no sample."""
        if self.latest is None:
            self._reset(t)
            return None
        seg = self.peek(t, trigger)
        self._reference = (seg.latest, seg.combat)
        self._reset(t)
        return seg

    def peek(self, t: float, trigger: str) -> Window:
        """The window so far as a segment, without ending it (the ``start`` prelude)."""
        assert self.latest is not None
        change = changed_at = None
        if self._reference is not None and self._words is not None:
            playing, playing_combat = self._reference
            change = scene_change(scene_words(playing, playing_combat), self._words)
            if change is not None:
                changed_at = self._words_since
            elif trigger not in ("interval", "start", "end"):  # a sharp change words cannot show
                change, changed_at = trigger.replace("_", " "), t
        seg = Window(
            index=self.index,
            start=self.start,
            end=t,
            samples=self.samples,
            latest=self.latest,
            combat=self.combat_at(t),
            combat_seen=self.combat_seen,
            lowest_health=self.lowest_health,
            damage_taken=round(self.damage_taken, 6),
            biomes=list(self.biomes),
            attackers=list(self.attackers),
            trigger=trigger,
            change=change,
            changed_at=changed_at,
        )
        self.index += 1
        return seg


class Acquisition:
    """Runs the sampler thread and hands segments to one consumer."""

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 10.0,
        sample_period: float = 1.0,
        clock: Clock | None = None,
        transitions: bool = True,
        prelude: bool = False,
        max_queued: int = 2,
    ) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValueError(
                f"interval must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} s, got {interval:g}"
            )
        if not 0.05 <= sample_period <= interval:
            raise ValueError(f"sample period must be between 0.05 s and the interval, got {sample_period:g}")
        if source.live and isinstance(clock, FastClock):
            raise ValueError(f"{source.uri} is live: it cannot run faster than real time (drop --fast)")
        self.source = source
        self.interval = interval
        self.sample_period = sample_period
        self.clock: Clock = clock or RealClock()
        self.transitions = transitions
        self.prelude = prelude
        self.dropped_segments = 0
        self._fast = isinstance(self.clock, FastClock)
        self._queue: queue.Queue[Window | None] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: SceneState | None = None
        self._lock = threading.Lock()

    @property
    def latest(self) -> SceneState | None:
        with self._lock:
            return self._latest

    def start(self) -> None:
        self.source.start()
        self._thread = threading.Thread(target=self._run, name="metabgm-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # Unblock a sampler waiting on a full queue.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.close()
        # Wake a consumer blocked in next_segment().
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def next_segment(self, timeout: float | None = None) -> Window | None:
        """The next segment; None once the source is finished or acquisition stopped.

        Raises ``queue.Empty`` when ``timeout`` passes first.
        """
        if self._stop.is_set() and self._queue.empty():
            return None
        item = self._queue.get(timeout=timeout)
        if item is None:
            self._stop.set()
        return item

    def _hand_off(self, seg: Window | None) -> None:
        while not self._stop.is_set():
            try:
                # Fast (virtual) time waits for the consumer; real time never waits.
                self._queue.put(seg, block=self._fast, timeout=0.1 if self._fast else None)
                return
            except queue.Full:
                if self._fast:
                    continue
                # Real time: the consumer is behind. Keep the freshest state, drop the oldest.
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if old is not None:
                    self.dropped_segments += 1
                    log.warning("consumer is behind: dropped segment %d", old.index)

    def _run(self) -> None:
        agg = Aggregator(self.clock.now())
        live = self.source if isinstance(self.source, LiveSource) else None
        next_sample = self.clock.now()
        try:
            while not self._stop.is_set():
                self.clock.sleep_until(next_sample, self._stop)
                if self._stop.is_set():
                    break
                # Windows are measured on the sampling schedule, not on when the thread woke up,
                # so jitter never moves a sample across a boundary.
                now = next_sample
                next_sample += self.sample_period
                drained = live.drain() if live is not None else []
                for t_msg, msg in drained:
                    agg.observe(msg, now - (time.monotonic() - t_msg))
                state = self.source.sample(now)
                if state is not None:
                    agg.add(now, state, observed=bool(drained))
                    with self._lock:
                        self._latest = state
                    if self.prelude and agg.index == 0:
                        self._hand_off(agg.peek(now, "start"))
                trigger = agg.sharp_change(now) if self.transitions else None
                if trigger is None and now - agg.start >= self.interval - 1e-9:
                    trigger = "interval"
                if trigger is not None:
                    seg = agg.close(now, trigger)
                    if seg is not None:
                        self._hand_off(seg)
                if self.source.finished:
                    seg = agg.close(now, "end")
                    if seg is not None and seg.samples > 0 and seg.end > seg.start:
                        self._hand_off(seg)
                    break
        except Exception:
            log.exception("sampler thread failed; acquisition stops")
        finally:
            self._hand_off(None)
