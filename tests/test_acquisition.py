"""Acquisition: sampling, aggregation over a window, sharp changes, thread-safe hand-off."""

from __future__ import annotations

import threading

import pytest

from metabgm_edge.acquisition import Acquisition, Aggregator, FastClock
from metabgm_edge.sources import LiveSource, Source
from metabgm_edge.state import SceneState, state_from_dict


class Scripted(Source):
    """Plays a list of (from_time, state dict) steps."""

    def __init__(self, steps: list[tuple[float, dict]], end: float | None = None) -> None:
        super().__init__()
        self.uri = "test:scripted"
        self.steps = [(t, state_from_dict(d)) for t, d in steps]
        self.end = end
        self.now = 0.0

    def sample(self, now: float) -> SceneState | None:
        self.now = now
        current = None
        for t, state in self.steps:
            if t <= now:
                current = state
        return current

    @property
    def finished(self) -> bool:
        return self.end is not None and self.now >= self.end


def segments(source: Source, **kw) -> list:
    acq = Acquisition(source, clock=FastClock(), **kw)
    acq.start()
    out = []
    while (seg := acq.next_segment(timeout=10)) is not None:
        out.append(seg)
    acq.stop()
    return out


def test_segments_follow_the_interval_and_end_with_the_source() -> None:
    segs = segments(Scripted([(0, {})], end=35.0), interval=10.0)
    assert [(s.start, s.end, s.trigger) for s in segs] == [
        (0.0, 10.0, "interval"), (10.0, 20.0, "interval"), (20.0, 30.0, "interval"), (30.0, 35.0, "end"),
    ]  # fmt: skip
    assert [s.index for s in segs] == [0, 1, 2, 3]
    # The sample on a boundary closes its segment: the first one also holds the sample at t=0.
    assert [s.samples for s in segs] == [11, 10, 10, 5]


def test_window_aggregates_what_happened() -> None:
    steps = [
        (0, {"scene": {"biome": "forest"}, "health": {"value": 20}}),
        (2, {"scene": {"biome": "river"}, "health": {"value": 12}}),
        (4, {"scene": {"biome": "river"}, "health": {"value": 15}}),
        (6, {"scene": {"biome": "plains"}, "health": {"value": 9},
             "attacked": {"damage": 6, "attacker": "spider", "seconds_ago": 30}}),
    ]  # fmt: skip
    seg = segments(Scripted(steps, end=10.0), interval=10.0)[0]
    assert seg.biomes == ["forest", "river", "plains"]
    assert seg.lowest_health == 9
    assert seg.damage_taken == pytest.approx(8 + 6)
    assert seg.attackers == ["spider"]
    assert seg.latest.scene.biome == "plains"
    assert not seg.combat  # the hit was 30 s ago


def test_combat_starts_a_segment_at_once_and_ends_after_the_hold() -> None:
    zombie = {"hostiles": [{"name": "zombie", "distance": 3}]}
    segs = segments(Scripted([(0, {}), (14, zombie), (23, {})], end=40.0), interval=10.0)
    triggers = [(s.end, s.trigger, s.combat) for s in segs]
    assert (14.0, "combat_start", True) in triggers
    # combat ends once the hold (5 s) has passed with no hostile near: at 23 + 5 = 28 s
    assert (29.0, "combat_end", False) in triggers or (28.0, "combat_end", False) in triggers


def test_dimension_change_and_health_alarm_cut_the_segment() -> None:
    steps = [(0, {}), (4, {"scene": {"dimension": "the_nether"}}),
             (9, {"scene": {"dimension": "the_nether"}, "health": {"value": 4}})]  # fmt: skip
    segs = segments(Scripted(steps, end=20.0), interval=10.0)
    expected = [(4.0, "dimension"), (9.0, "health_drop"), (19.0, "interval")]
    assert [(s.end, s.trigger) for s in segs][:3] == expected


def test_transitions_can_be_turned_off() -> None:
    steps = [(0, {}), (4, {"scene": {"dimension": "the_nether"}})]
    segs = segments(Scripted(steps, end=20.0), interval=10.0, transitions=False)
    assert {s.trigger for s in segs} <= {"interval", "end"}


def test_no_segment_before_the_first_state() -> None:
    segs = segments(Scripted([(12, {})], end=25.0), interval=10.0)
    assert segs[0].start >= 10.0 and segs[0].samples >= 1


def test_hand_off_between_threads_keeps_every_segment_in_order() -> None:
    src = Scripted([(0, {})], end=2000.0)
    acq = Acquisition(src, interval=2.0, sample_period=0.5, clock=FastClock())
    got: list[int] = []

    def consume() -> None:
        while (seg := acq.next_segment(timeout=10)) is not None:
            got.append(seg.index)

    consumer = threading.Thread(target=consume)
    acq.start()
    consumer.start()
    consumer.join(timeout=60)
    acq.stop()
    assert got == list(range(1000))


class SteppingClock:
    """Real-time semantics (not FastClock) but each sleep only advances virtual time."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float, stop: threading.Event) -> None:
        stop.wait(0.001)
        self.t = max(self.t, t)


def test_real_time_consumer_that_falls_behind_gets_the_freshest_segments() -> None:
    acq = Acquisition(Scripted([(0, {})], end=100.0), interval=2.0, clock=SteppingClock(), max_queued=2)
    acq.start()
    acq._thread.join(timeout=30)  # let the sampler run ahead of a consumer that never reads
    got = []
    while (seg := acq.next_segment(timeout=1)) is not None:
        got.append(seg.index)
    acq.stop()
    assert acq.dropped_segments > 0
    assert got == sorted(got) and got[-1] == 49


class Pushed(LiveSource):
    uri = "test:live"


def test_live_messages_between_samples_count_in_the_window() -> None:
    src = Pushed()
    agg = Aggregator(0.0)
    src._accept(state_from_dict({"health": {"value": 20}}))
    src._accept(state_from_dict({"health": {"value": 5}}))
    src._accept(state_from_dict({"health": {"value": 18}}))
    for t, state in src.drain():
        agg.observe(state, t)
    agg.add(1.0, src.sample(1.0), observed=True)
    seg = agg.close(1.0, "interval")
    assert seg.lowest_health == 5 and seg.damage_taken == 15
    assert src.drain() == []


def test_interval_bounds() -> None:
    with pytest.raises(ValueError, match="between 2 and 60"):
        Acquisition(Scripted([]), interval=1.0)
    with pytest.raises(ValueError, match="live"):
        Acquisition(Pushed(), clock=FastClock())
