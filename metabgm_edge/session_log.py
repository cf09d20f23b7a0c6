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
    """How it entered the music: start, append, transition."""
    audio_seconds: float


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
    """Seconds from a sharp change being sampled to its audio entering the output."""
