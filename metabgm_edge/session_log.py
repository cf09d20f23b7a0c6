"""The session log: what a ``play`` session records per segment and in total.

``play --log F.jsonl`` writes one :class:`SegmentRecord` per line; ``report`` and ``bench`` read
them (and :class:`SessionStats`) without importing the scheduler that writes them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from metabgm_edge.state import SceneState


class SegmentRecord(msgspec.Struct, kw_only=True):
    """One line of the session log (``--log F.jsonl``)."""

    index: int
    start: float
    end: float
    trigger: str
    combat: bool
    state: SceneState
    window: dict[str, Any]
    """The segment's aggregates: samples, lowest_health, damage_taken, biomes, attackers."""
    characterized: dict[str, Any]
    narrative: str | None
    description: str
    text_backend: str
    audio_backend: str
    timings: dict[str, float]
    """Seconds: characterize, narrative, description (or direct), audio, total."""
    deadline: float
    """Session time by which the audio had to be queued."""
    queued_at: float
    """Session time at which it was queued."""
    missed_deadline: bool
    fallbacks: list[str]
    join: str
    """How it entered the music: start, append, transition, extend."""
    audio_seconds: float
    """Seconds of music made for it: the segment and its extension to the next bar line."""
    heard_at: float | None = None
    """Session time at which its audio begins to be heard (its join, the start of the crossfade)."""
    audible_at: float | None = None
    """Session time at which it is as loud as the music before it (half the crossfade later)."""
    lead: float | None = None
    """The margin planned between the window's close and its music (learned from stage times)."""
    lead_needed: float | None = None
    """Measured: how early after the window closed its music could have started without any of
    its chunks coming late (text time + time to each chunk - the audio before that chunk)."""
    change: str | None = None
    """What changed since the segment before ("night", "rain", "combat"), if the scene did."""
    changed_at: float | None = None
    """Session time of the first sample that saw the change."""
    lag: float | None = None
    """Scene change to audible: ``audible_at - changed_at`` (None when nothing changed)."""
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    """Live messages rejected during this window, by reason."""
    late: bool = False
    """Its music came after its join point had been heard (it joined later, on the beat)."""


class SessionStats(msgspec.Struct, kw_only=True):
    segments: int = 0
    seconds: float = 0.0
    deadline_misses: int = 0
    fallbacks: dict[str, int] = msgspec.field(default_factory=dict)
    transitions: int = 0
    extensions: int = 0
    starvations: int = 0
    """Times the mixer ran dry and faded out (should be 0)."""
    underruns: int = 0
    """Ring-buffer underruns seen by the sink (should be 0)."""
    device_underflows: int = 0
    sink: str = ""
    source: dict[str, Any] = msgspec.field(default_factory=dict)
    stage_seconds: dict[str, list[float]] = msgspec.field(default_factory=dict)
    audio_realtime_factor: float = 0.0
    """Seconds of audio the audio backend renders per second here (measured before a real-time run)."""
    audio_policy: str = "stream"
    """How the audio plays: ``stream`` (keeps up), ``synth`` or ``queue`` (too slow: ``--if-slow``)."""
    transition_latency: list[float] = msgspec.field(default_factory=list)
    """Seconds from a sharp change being sampled to its audio being as loud as the music before."""
    change_lag: dict[str, list[float]] = msgspec.field(default_factory=dict)
    """Scene change to audible, seconds, for every change: {"sharp": [...], "gradual": [...]}."""
    close_lag: dict[str, list[float]] = msgspec.field(default_factory=dict)
    """Window close to audible, seconds, per kind of segment: {"sharp": [...], "gradual": [...]}."""
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    """Live messages rejected during the session, by reason."""
    received: int = 0
    """Live messages received (valid or not)."""


class SessionSummary(msgspec.Struct, kw_only=True):
    """The last line of a session log: the session's totals (``report`` skips it)."""

    summary: SessionStats
