"""The embedded procedural synthesizer: a music description in, a stereo segment out.

No weights: :mod:`.musicparse` reads tempo, key, mode, instruments, dynamics and mood; this
module plans a bar at a time (a chord progression, a bass line, a melody grown from a motif,
drums when rhythm is asked for) as :class:`Note` events, and :mod:`.voices` renders them into a
reverberant room, through a spectral tilt, a DC blocker and a gentle limiter.

What it plays carries the words the way a listener (or librosa, tests/test_listening.py) hears
them: below 84 BPM nothing but drums plays between the beats and notes are long; from 140 BPM
every beat is played alike (a backbeat would be heard as half the tempo); some voice always marks
the beat (a kit that hits every beat, a struck accompaniment, or a plucked bass); with loud drums
the held chords, the melody and the bass step back; brightness moves the register and tilts the
spectrum; progressions start on the tonic and return to it, and drums are tuned to the key, so the
key and mode asked are the ones heard; the master gain sets the loudness the dynamics ask for
whatever the arrangement; "solo" is that instrument alone, and a lone melody gets chords and a bass.

Continuity (the paper's melodic anchor) is a :class:`SynthAnchor`: key, mode, tempo, beat
position, the motif, the progression, the last voicings, and the notes themselves:

- ``carry``: notes begun before the boundary that still sound (or still ring in the room). The
  next segment renders them again, at the same absolute samples with the same seeds, so the
  notes and the reverb continue exactly where they were.
- ``pending``: notes already planned for the rest of the bar the boundary falls in. When the next
  description keeps key, mode, metre and tempo, the next segment plays them and takes over at the
  next bar line, so the bar in progress is finished as planned; when the description changes
  them, the new music starts at once on a fresh downbeat (sustained notes from before are
  released), which is what a scene change wants.

Because of that, a segment's tail and the next segment's head are nearly the same signal where
the music continues, and the mixer's correlation-aware crossfade joins them without a bump or
a click. The motif is varied at every segment (and at phrase starts), never restarted.

Everything random is drawn from a generator seeded by (seed, segment index, description), so the
same (description, anchor, seed) always gives the same samples.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import msgspec
import numpy as np
from msgspec import Struct

from metabgm_edge import music_words as mw
from metabgm_edge.audio.dsp import crossfade
from metabgm_edge.audio.interface import CHANNELS, SAMPLE_RATE, AudioChunk, AudioRequest, interleave
from metabgm_edge.audio.procedural.musicparse import INSTRUMENTS, MusicSpec, parse_description
from metabgm_edge.audio.procedural.theory import (
    MINOR_LIKE,
    MODES,
    Chord,
    choose_progression,
    chord_scale,
    mutate_motif,
    new_motif,
    parse_numeral,
    pitch_class_name,
    relative_tonic,
    steps_to_midi,
    voice_chord,
)
from metabgm_edge.audio.procedural.voices import (
    DRUM_HZ,
    DRUMS,
    Room,
    limit,
    note_extent,
    remove_dc,
    render_note,
    tilt,
)

__all__ = ["Note", "ProceduralSynth", "SynthAnchor"]

log = logging.getLogger(__name__)

SR: Final = SAMPLE_RATE
PREROLL_S: Final = 2.0
PHRASE_BARS: Final = 4
MAX_SECONDS: Final = 600.0
JOIN_S: Final = 0.5
"""Crossfade inside a segment streamed in two pieces (a short head first, then the rest)."""
SPEED_RUNS: Final = 2  # timed renders in realtime_factor, after the warm-up

_TONICS_MAJOR: Final = (0, 2, 3, 5, 7, 9)  # C D Eb F G A
_TONICS_MINOR: Final = (9, 2, 4, 0, 7)  # A D E C G
_MELODY_PREF: Final = (
    "voice", "flute", "brass", "synth", "piano", "epiano", "guitar", "harp", "bells", "strings", "choir",
    "organ", "cello",
)  # fmt: skip
_MELODY_RANGE: Final = {
    "flute": (67, 86), "piano": (62, 84), "epiano": (62, 81), "guitar": (57, 79), "brass": (55, 74),
    "synth": (62, 84), "bells": (67, 86), "strings": (62, 84), "choir": (60, 77), "harp": (60, 84),
    "organ": (60, 79), "cello": (50, 69), "pad": (60, 79), "voice": (57, 76),
}  # fmt: skip
_CHORD_RANGE: Final = {
    "pad": (48, 72), "strings": (50, 74), "choir": (50, 71), "piano": (48, 72), "epiano": (50, 72),
    "guitar": (45, 67), "organ": (48, 72), "brass": (48, 69), "harp": (48, 76), "bells": (67, 84),
    "synth": (57, 81), "cello": (38, 57), "flute": (62, 79), "pizz": (52, 76), "voice": (52, 69),
}  # fmt: skip
_SUSTAINED: Final = frozenset({"pad", "strings", "choir", "organ", "cello", "flute", "voice"})
_STRUCK: Final = ("piano", "epiano", "guitar", "harp", "pizz", "bells", "synth")
"""Harmony voices that articulate each note (so they can carry the pulse), in order of preference."""
_CHORDAL: Final = frozenset({"piano", "epiano", "guitar", "harp", "organ"})
"""Instruments that play their own chords when alone."""
_SECTIONS: Final = _CHORDAL | {"strings", "choir", "brass", "synth"}
"""Instruments that play both the tune and the chords in a band or an orchestra."""
_HARMONY_PANS: Final = (-0.35, 0.35, -0.15)
_EVEN_BEATS_FROM: Final = 140.0
"""From this tempo (BPM) every beat is played alike (a backbeat on 2 and 4 would be heard as the
beat of music half as fast)."""
_BEAT_ONLY_BELOW: Final = 84.0
"""Below this tempo (BPM) nothing but drums plays between the beats: a slow piece has a slow pulse."""
_ACCOMPANYING: Final = ("piano", "epiano", "guitar", "harp", "organ", "pad", "synth", "strings")
"""What can play the chords under a lone melody, in the order a genre's instruments name them."""


class Note(Struct, array_like=True, frozen=True):
    """One sound: ``start`` and ``length`` (the held part) in absolute samples of the stream."""

    voice: str
    midi: float
    start: int
    length: int
    vel: float
    pan: float
    seed: int


class SynthAnchor(Struct, frozen=True, kw_only=True):
    """The music at a segment boundary (what the next segment needs to continue it)."""

    kind: ClassVar[str] = "synth"
    version: int = 1
    segment: int
    """Index of the segment that starts here."""
    sample_offset: int
    """Absolute sample of the stream where the next segment starts."""
    beat: float
    """Beat position (from the start of the stream) at ``sample_offset``."""
    tempo: float
    meter: int
    tonic: int
    mode: str
    energy: float
    gain: float
    brightness: float
    space: float
    drums: str | None
    instruments: tuple[str, ...]
    progression: str
    progression_bar: int
    phrase_bar: int
    next_bar: int
    """First bar the next segment plans (the bars before it are in ``pending``)."""
    motif: tuple[tuple[int, float, float], ...]
    voicings: dict[str, tuple[int, ...]] = {}
    last_melody: int | None = None
    last_bass: int | None = None
    carry: tuple[Note, ...] = ()
    pending: tuple[Note, ...] = ()
    description: str = ""

    @property
    def key(self) -> str:
        return f"{pitch_class_name(self.tonic)} {self.mode}"

    def summary(self) -> str:
        """One line for logs: where the music is and what plays."""
        drums = f", {self.drums} drums" if self.drums else ""
        return (
            f"segment {self.segment}: {self.key}, {self.tempo:.0f} BPM in {self.meter}, "
            f"beat {self.beat:.2f}, "
            f"energy {self.energy:.2f}{drums}, {'+'.join(self.instruments)}"
        )

    def bar_seconds(self) -> float:
        """One bar, in seconds (the optional BarGrid capability of audio.interface)."""
        return self.meter * 60.0 / self.tempo

    def beats_per_bar(self) -> int:
        return self.meter

    def seconds_to_bar(self) -> float:
        """Seconds from this point to the next bar line (0 on one)."""
        beats = (-self.beat) % self.meter
        return 0.0 if beats < 1e-6 or self.meter - beats < 1e-6 else beats * 60.0 / self.tempo

    def to_bytes(self) -> bytes:
        """JSON bytes (what a WAV's metadata chunk stores for ``render --continue-from``)."""
        return msgspec.json.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> SynthAnchor:
        """Inverse of :meth:`to_bytes`; ValueError naming the problem otherwise."""
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"not a valid synth anchor: {exc}") from None


@dataclass
class _Style:
    """What this segment plays, resolved from the description and the anchor."""

    tempo: float
    meter: int
    tonic: int
    mode: str
    energy: float
    dynamics: float
    brightness: float
    space: float
    melody: str
    harmony: list[str]
    bass: str | None
    drums: str | None
    instruments: tuple[str, ...]
    sevenths: bool = False
    pentatonic: bool = False
    staccato: bool = False
    arpeggiated: bool = False
    arc: float = 0.0
    pulse: str | None = None
    """The harmony voice that plays on every beat ("bass" when none can; None: drums do)."""
    register: int = 0
    """Semitones the melody and chords move up (bright music) or down (dark music)."""
    drum_level: float = 1.0
    duck: float = 0.0
    """0..1: how far the held chords (by half), the melody (by 40 %) and the bass (by a third) step
    back from loud drums."""

    @property
    def sub(self) -> int:
        """Notes per beat the pitched voices may use: 1 in slow music, 2 otherwise."""
        return 1 if self.tempo < _BEAT_ONLY_BELOW else 2


@dataclass
class _PlanState:
    progression: str
    progression_bar: int
    phrase_bar: int
    motif: tuple[tuple[int, float, float], ...]
    voicings: dict[str, tuple[int, ...]] = field(default_factory=dict)
    last_melody: int | None = None
    last_bass: int | None = None

    def copy(self) -> _PlanState:
        return _PlanState(
            self.progression, self.progression_bar, self.phrase_bar, self.motif, dict(self.voicings),
            self.last_melody, self.last_bass,
        )  # fmt: skip


class ProceduralSynth:
    """The default audio backend (``name = "synth"``): :meth:`stream` is the audio interface."""

    name = "synth"
    kind = "synth"
    sample_rate = SAMPLE_RATE
    channels = CHANNELS
    batches = False
    """Each segment is a few numpy passes: nothing to share between segments, nothing to batch."""

    def __init__(self, channels: int = CHANNELS) -> None:
        if channels not in (1, 2):
            raise ValueError(f"the synthesizer plays mono or stereo, not {channels} channels")
        self.channels = channels
        """2 (its own stereo room), or 1: the same music mixed down, to stand in for a mono model."""
        self._room = Room()
        self._speed: float | None = None

    # -- the audio interface --------------------------------------------------------------------
    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        """One chunk, or with ``request.first_chunk`` a short head first and then the rest (the
        rest continues from the head's anchor; the two are crossfaded inside the segment)."""
        for chunk in self._stream(request):
            if self.channels == 1:
                chunk = AudioChunk(audio=chunk.audio.mean(axis=1, keepdims=True, dtype=np.float32),
                                   last=chunk.last, anchor=chunk.anchor)  # fmt: skip
            yield chunk

    def _stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        anchor = request.anchor
        if anchor is not None and not isinstance(anchor, SynthAnchor):
            log.info(
                "not a synth anchor (%s): starting fresh", getattr(anchor, "kind", type(anchor).__name__)
            )
            anchor = None
        head = float(request.first_chunk)
        if head > 0.0 and head + 1.0 < request.seconds:
            first, middle = self._render(request.description, head, anchor, tail=JOIN_S, seed=request.seed)
            cut = first.shape[0] - round(JOIN_S * SR)
            yield AudioChunk(audio=first[:cut])
            rest, end = self._render(
                request.description, request.seconds - head, middle, tail=request.tail, seed=request.seed
            )
            k = first.shape[0] - cut
            joined = crossfade(first[cut:], rest[:k])
            yield AudioChunk(audio=np.concatenate([joined, rest[k:]]), last=True, anchor=end)
            return
        audio, end = self._render(request.description, request.seconds, anchor, tail=request.tail,
                                  seed=request.seed)  # fmt: skip
        yield AudioChunk(audio=audio, last=True, anchor=end)

    def stream_batch(self, requests: Sequence[AudioRequest]) -> Iterator[list[AudioChunk | None]]:
        return interleave([self.stream(r) for r in requests])

    def anchor_from_bytes(self, data: bytes) -> SynthAnchor:
        return SynthAnchor.from_bytes(data)

    def realtime_factor(self) -> float:
        """Measured once: a short warm-up render (the first one fills caches and is several times
        slower), then the faster of two 1 s renders, so that one preemption by another process
        does not condemn the synthesizer for the whole session."""
        if self._speed is None:
            description = "calm piano and strings at 90 BPM"
            self._render(description, 0.25, None, seed=0)
            best = math.inf
            for _ in range(SPEED_RUNS):
                t0 = time.perf_counter()
                self._render(description, 1.0, None, seed=0)
                best = min(best, time.perf_counter() - t0)
            self._speed = 1.0 / max(best, 1e-6)
        return self._speed

    # -- rendering one piece --------------------------------------------------------------------
    def _render(
        self,
        description: str,
        seconds: float,
        anchor: SynthAnchor | None,
        *,
        tail: float = 0.0,
        seed: int = 0,
    ) -> tuple[np.ndarray, SynthAnchor]:
        """Render ``seconds + tail`` seconds; the anchor returned describes the music at ``seconds``."""
        seconds = float(seconds)
        tail = float(tail)
        if not math.isfinite(seconds) or not 0.0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
        if not math.isfinite(tail) or not 0.0 <= tail <= 30.0:
            raise ValueError(f"tail must be in [0, 30] seconds, got {tail}")
        description = str(description or "")[:2000]
        frames = max(1, round(seconds * SR))
        tail_frames = round(tail * SR)
        spec = parse_description(description)
        segment = anchor.segment if anchor else 0
        rng = np.random.default_rng(
            [int(seed) & 0xFFFFFFFF, segment & 0xFFFFFFFF, zlib.crc32(description.encode())]
        )
        st = self._resolve(spec, anchor, rng)
        notes, s0, beat0, next_state, pending_next, next_bar = self._plan(
            st, anchor, frames, tail_frames, rng
        )
        audio, gain_end = self._render_notes(st, anchor, notes, s0, frames, tail_frames)

        boundary = s0 + frames
        beat1 = beat0 + frames * st.tempo / (60.0 * SR)
        pre = int(PREROLL_S * SR)
        carry = tuple(
            n
            for n in notes
            if n.start < boundary and n.start + note_extent(n.voice, n.midi, n.length) > boundary - pre
        )
        next_anchor = SynthAnchor(
            segment=segment + 1,
            sample_offset=boundary,
            beat=beat1,
            tempo=st.tempo,
            meter=st.meter,
            tonic=st.tonic,
            mode=st.mode,
            energy=st.energy,
            gain=gain_end,
            brightness=st.brightness,
            space=st.space,
            drums=st.drums,
            instruments=st.instruments,
            progression=next_state.progression,
            progression_bar=next_state.progression_bar,
            phrase_bar=next_state.phrase_bar,
            next_bar=next_bar,
            motif=next_state.motif,
            voicings=next_state.voicings,
            last_melody=next_state.last_melody,
            last_bass=next_state.last_bass,
            carry=carry,
            pending=pending_next,
            description=description,
        )
        return audio, next_anchor

    # -- resolving the description against the anchor ------------------------------------------
    def _resolve(self, spec: MusicSpec, anchor: SynthAnchor | None, rng: np.random.Generator) -> _Style:
        # Tempo: explicit wins; a mood hint only moves an established tempo when far from it.
        if spec.tempo is not None:
            tempo = spec.tempo
        elif anchor is not None:
            tempo = anchor.tempo
            if spec.tempo_hint is not None and abs(spec.tempo_hint - tempo) > 24:
                tempo = spec.tempo_hint
        else:
            tempo = spec.tempo_hint if spec.tempo_hint is not None else 88.0
        tempo = float(np.clip(tempo, 40.0, 200.0))

        # Mode and key.
        if spec.mode is not None and spec.mode in MODES:
            mode = spec.mode
        elif anchor is not None:
            mode = anchor.mode
            if spec.mode_hint is not None and (spec.mode_hint == "minor") != (anchor.mode in MINOR_LIKE):
                mode = spec.mode_hint
        else:
            mode = spec.mode_hint or ("major" if rng.random() < 0.6 else "minor")
        if spec.tonic is not None:
            tonic = spec.tonic
        elif anchor is not None:
            tonic = relative_tonic(anchor.tonic, anchor.mode, mode)
        else:
            pool = _TONICS_MINOR if mode in MINOR_LIKE else _TONICS_MAJOR
            tonic = pool[int(rng.integers(len(pool)))]
        meter = spec.meter or (anchor.meter if anchor else 4)

        energy = spec.energy if spec.energy is not None else (anchor.energy if anchor else 0.4)
        energy = float(np.clip(energy + 0.1 * spec.arc, 0.0, 1.0))
        dynamics = spec.dynamics if spec.dynamics is not None else 0.3 + 0.5 * energy
        brightness = (
            spec.brightness if spec.brightness is not None else (anchor.brightness if anchor else 0.5)
        )
        space = spec.space if spec.space is not None else (anchor.space if anchor else 0.45)

        # Instruments: the description's, else the anchor's, else defaults by energy.
        if spec.instruments:
            instruments = spec.instruments
        elif anchor is not None:
            instruments = anchor.instruments
        else:
            instruments = ("piano", "pad", "bass") if energy < 0.45 else ("piano", "strings", "bass")
        instruments = tuple(i for i in instruments if i not in spec.excluded and i in INSTRUMENTS)
        melodic = [i for i in instruments if i not in ("bass", "drums", "pad")]
        if spec.melody and spec.melody in instruments:
            melody = spec.melody
        else:
            melody = next((i for i in _MELODY_PREF if i in melodic), "")
        if not melody:
            melody = "bells" if space > 0.6 else "synth" if _electronic(spec.genre) else "piano"
        harmony = [i for i in instruments if i not in ("bass", "drums", melody)]
        bass: str | None = "bass"
        if "cello" in harmony and "bass" not in instruments:
            harmony.remove("cello")
            bass = "cello"
        solo = spec.solo and not harmony
        if solo:  # that instrument alone: it accompanies itself if it can, nothing else joins
            harmony = [melody] if melody in _CHORDAL else []
            bass = None
        elif "bass" in spec.excluded:
            bass = None
        if not harmony and not solo:  # a band's guitar or a pianist plays its own chords too
            harmony = [melody if melody in _SECTIONS else self._accompaniment(spec, melody, energy)]
        staccato = bool({"staccato", "pizzicato"} & set(spec.styles))
        if staccato and "strings" in harmony and energy >= 0.45:
            harmony[harmony.index("strings")] = "pizz"
        harmony = harmony[:3]

        # Drums: asked for, refused, or as before.
        if solo and "drums" not in spec.named_instruments:
            want_drums = False
        elif spec.drums is not None:
            want_drums = spec.drums
        elif spec.named_instruments:
            want_drums = "drums" in spec.named_instruments
        elif anchor is not None:
            want_drums = anchor.drums is not None
        else:
            want_drums = False
        kit = self._kit(spec, instruments, energy) if want_drums else None

        # Who plays on every beat when the drums do not (or with them, in slow music).
        pulse = next((v for v in _STRUCK if v in harmony), None)
        if pulse is None and bass is not None:
            pulse = "bass"
        register = round(float(np.clip((brightness - 0.5) * 18.0, -7.0, 7.0)))
        drum_level = 0.85 + 0.45 * spec.drum_weight + 1.2 * max(0.0, energy - 0.5)
        # With drums in loud music the held chords and the melody step back so the beat is heard.
        duck = min(1.0, 3.0 * (energy - 0.4)) if kit is not None and energy > 0.4 else 0.0

        playing = tuple(
            dict.fromkeys([melody, *harmony, *([bass] if bass else []), *(["drums"] if kit else [])])
        )
        return _Style(
            tempo=tempo,
            meter=int(meter),
            tonic=int(tonic) % 12,
            mode=mode,
            energy=energy,
            dynamics=float(np.clip(dynamics, 0.0, 1.0)),
            brightness=float(np.clip(brightness, 0.0, 1.0)),
            space=float(np.clip(space, 0.0, 1.0)),
            melody=melody,
            harmony=harmony,
            bass=bass,
            drums=kit,
            instruments=playing,
            sevenths=spec.sevenths,
            pentatonic=spec.pentatonic,
            staccato=staccato,
            arpeggiated="arpeggiated" in spec.styles,
            arc=spec.arc,
            pulse=pulse,
            register=register,
            drum_level=float(drum_level),
            duck=float(duck),
        )

    @staticmethod
    def _accompaniment(spec: MusicSpec, melody: str, energy: float) -> str:
        """The chords under a melody instrument named alone ("a flute in C major")."""
        genre = mw.GENRES.get(spec.genre or "")
        choice = (
            next((i for i in genre.instruments if i in _ACCOMPANYING and i != melody), None)
            if genre
            else None
        )
        if choice is None:
            if _electronic(spec.genre) or melody == "synth":
                choice = "synth"
            else:
                choice = "guitar" if melody in ("voice", "flute") and energy >= 0.5 else "piano"
        if choice == melody:
            choice = "piano" if melody != "piano" else "strings"
        return choice

    @staticmethod
    def _kit(spec: MusicSpec, instruments: tuple[str, ...], energy: float) -> str:
        if spec.kit is not None:
            if spec.kit == "soft" and energy >= 0.65:
                return "standard"
            return spec.kit
        if _electronic(spec.genre) or ("synth" in instruments and energy >= 0.5):
            return "electronic"
        band = {"guitar", "epiano", "synth", "voice", "organ", "piano"} & set(instruments)
        if {"brass", "strings", "choir", "cello"} & set(instruments) and not band and energy >= 0.55:
            return "orchestral"
        return "soft" if energy < 0.4 else "standard"

    # -- planning -------------------------------------------------------------------------------
    def _plan(
        self,
        st: _Style,
        anchor: SynthAnchor | None,
        frames: int,
        tail_frames: int,
        rng: np.random.Generator,
    ) -> tuple[list[Note], int, float, _PlanState, tuple[Note, ...], int]:
        """Notes for the window; the segment's start sample and beat; the planning state after
        the last bar the tail reaches into, the notes planned from the boundary to that bar's end
        (pending) and the next bar to plan."""
        spb = SR * 60.0 / st.tempo
        meter = st.meter
        compatible = (
            anchor is not None
            and anchor.tonic == st.tonic
            and anchor.mode == st.mode
            and anchor.meter == meter
            and abs(anchor.tempo - st.tempo) / anchor.tempo < 0.03
        )
        notes: list[Note] = []
        if anchor is None:
            s0, beat0 = 0, 0.0
            first_bar = 0
            state = _PlanState(
                choose_progression(rng, st.mode, st.energy, calm=st.tempo < 72),
                0,
                0,
                new_motif(rng, meter, st.energy, st.sub),
            )
        elif compatible:
            st.tempo = anchor.tempo  # keep the grid exactly
            spb = SR * 60.0 / st.tempo
            s0, beat0 = anchor.sample_offset, anchor.beat
            first_bar = max(anchor.next_bar, _bar_of(beat0, meter) + 1)
            notes.extend(anchor.carry)
            notes.extend(anchor.pending)
            state = _PlanState(
                anchor.progression, anchor.progression_bar, anchor.phrase_bar,
                mutate_motif(rng, anchor.motif, meter, st.energy, st.sub), dict(anchor.voicings),
                anchor.last_melody, anchor.last_bass,
            )  # fmt: skip
        else:
            # A changed key, mode, metre or tempo: a fresh downbeat at the boundary. Held notes of
            # the old music are released there; percussion and plucks ring out as they would.
            s0 = anchor.sample_offset
            first_bar = _bar_of(anchor.beat, anchor.meter) + 1
            beat0 = float(first_bar * meter)
            for n in anchor.carry:
                if n.voice not in DRUMS and n.start + n.length > s0:
                    n = msgspec.structs.replace(n, length=max(0, s0 - n.start))
                notes.append(n)
            progression = (
                anchor.progression
                if anchor.mode == st.mode
                else choose_progression(rng, st.mode, st.energy, calm=st.tempo < 72)
            )
            state = _PlanState(
                progression, first_bar, first_bar, mutate_motif(rng, anchor.motif, meter, st.energy, st.sub),
                dict(anchor.voicings), anchor.last_melody, anchor.last_bass,
            )  # fmt: skip

        def sample_at(beat: float) -> int:
            return s0 + round((beat - beat0) * spb)

        boundary = s0 + frames
        # The bar holding the tail's last sample: planned here, and pending for the next segment
        # so that this tail and the next head play the same notes.
        last_bar = _bar_of(beat0 + (frames + max(tail_frames, 1) - 1) / spb, meter)
        pending_end = sample_at((last_bar + 1) * meter)
        plan_end = pending_end
        snapshot: _PlanState | None = None
        bar = first_bar
        while sample_at(bar * meter) < plan_end:
            if bar > first_bar and (bar - state.phrase_bar) % PHRASE_BARS == 0 and rng.random() < 0.5:
                state.motif = mutate_motif(rng, state.motif, meter, st.energy, st.sub)
            notes.extend(self._plan_bar(st, state, bar, sample_at, spb, s0, rng))
            if bar == last_bar:
                snapshot = state.copy()
            bar += 1
        if snapshot is None:  # the tail ends inside bars pending from before
            snapshot = state.copy()
        pending = tuple(n for n in notes if boundary <= n.start < pending_end)
        return notes, s0, beat0, snapshot, pending, max(bar, last_bar + 1)

    def _plan_bar(
        self,
        st: _Style,
        state: _PlanState,
        bar: int,
        sample_at: Any,
        spb: float,
        s0: int,
        rng: np.random.Generator,
    ) -> list[Note]:
        meter = st.meter
        numerals = state.progression.split()
        hr = 2 if meter * 60.0 / st.tempo < 1.4 else 1  # bars per chord: a chord lasts 1.4 s or more
        cycle = len(numerals) * hr
        if bar - state.progression_bar >= cycle:
            cycles = (bar - state.progression_bar) // cycle
            state.progression_bar += cycles * cycle
            if rng.random() < 0.35:
                state.progression = choose_progression(
                    rng, st.mode, st.energy, avoid=state.progression, calm=st.tempo < 72
                )
                state.progression_bar = bar
                numerals = state.progression.split()
                cycle = len(numerals) * hr
        pos = bar - state.progression_bar
        chord = parse_numeral(numerals[(pos // hr) % len(numerals)], st.mode, sevenths=st.sevenths)
        next_chord = parse_numeral(numerals[((pos // hr) + 1) % len(numerals)], st.mode, sevenths=st.sevenths)
        chord_start = pos % hr == 0
        bar_beat = bar * meter
        bip = (bar - state.phrase_bar) % PHRASE_BARS
        events: list[tuple[str, float, float, float, float, float]] = []  # voice, midi, beat, dur, vel, pan
        vel_scale = 0.8 + 0.35 * st.energy

        # Melody.
        events.extend(self._melody(st, state, chord, bip, bar_beat, vel_scale, rng))
        # Harmony.
        for i, voice in enumerate(st.harmony):
            pan = _HARMONY_PANS[i % len(_HARMONY_PANS)]
            events.extend(
                self._harmony(st, state, voice, chord, chord_start, hr, bar_beat, pan, vel_scale, rng)
            )
        # Bass.
        if st.bass is not None:
            events.extend(self._bass(st, state, chord, next_chord, chord_start, hr, bar_beat, vel_scale, rng))
        # Drums.
        if st.drums is not None:
            events.extend(self._drums(st, bip, bar_beat, rng))

        out = []
        jitter_ms = 5.0 if st.energy < 0.5 else 3.0
        for voice, midi, beat, dur, vel, pan in events:
            jit = (
                0.0
                if beat == bar_beat
                else float(np.clip(rng.normal(0, jitter_ms / 2), -jitter_ms, jitter_ms))
            )
            if voice in DRUMS:
                jit *= 0.5
            start = max(s0, sample_at(beat) + round(jit * SR / 1000.0))
            length = max(1, round(dur * spb))
            vel = float(np.clip(vel * (1.0 + rng.normal(0, 0.05)), 0.05, 1.5))
            out.append(
                Note(voice, float(midi), int(start), int(length), vel, float(pan), int(rng.integers(1 << 31)))
            )
        return out

    def _melody(
        self,
        st: _Style,
        state: _PlanState,
        chord: Chord,
        bip: int,
        bar_beat: float,
        vel_scale: float,
        rng: np.random.Generator,
    ) -> list[tuple[str, float, float, float, float, float]]:
        voice = st.melody
        lo, hi = _MELODY_RANGE.get(voice, (60, 84))
        lo, hi = lo + st.register, hi + st.register
        scale = chord_scale(st.tonic, st.mode, chord, pentatonic=st.pentatonic)
        n = len(scale)
        tones = {(chord.root + i) % 12 for i in chord.intervals}
        tone_idx = [i for i, pc in enumerate(scale) if pc in tones] or [0]
        root_idx = int(np.argmin([(pc - chord.root) % 12 for pc in scale]))
        motif = list(state.motif)
        if bip == 1:
            shift = int(rng.choice([-1, 1, 2]))
            motif = [(s + shift, o, d) for s, o, d in motif]
        elif bip == 2 and rng.random() < 0.4:
            motif = list(mutate_motif(rng, state.motif, st.meter, st.energy, st.sub))
        elif bip == 3:  # cadence: the motif's opening, then a long chord tone
            first = motif[0]
            end = float(st.meter)
            if st.energy < 0.35 or len(motif) == 1:
                motif = [(first[0], first[1], end - first[1])]
            else:
                second_on = motif[1][1]
                motif = [
                    (first[0], first[1], second_on - first[1]),
                    (first[0] + 1, second_on, end - second_on),
                ]
        base_midi = 48 + st.tonic
        target = state.last_melody if state.last_melody is not None else (lo + hi) // 2
        target = min(hi, max(lo, target))
        best = None
        for octave in range(-2, 6):
            base = root_idx + octave * n
            steps = np.array([base + s for s, _, _ in motif])
            midis = steps_to_midi(steps, scale, base_midi)
            cost = abs(int(midis[0]) - target) + 4 * int(np.sum((midis < lo) | (midis > hi)))
            if best is None or cost < best[0]:
                best = (cost, base)
        base = best[1] if best else root_idx
        strong = 2.0 if st.meter == 4 else 3.0
        out = []
        for j, (s, onset, dur) in enumerate(motif):
            step = base + s
            if onset % strong == 0 or (bip == 3 and j == len(motif) - 1):  # strong beats: chord tones,
                # the root when it is about as near (the key's tonic is heard on the tonic chord)
                cands = [k + o * n for k in tone_idx for o in range(-3, 8)]
                step = min(cands, key=lambda c, s=step: (abs(c - s) + (0.0 if c % n == root_idx else 0.8), c))
            midi = int(steps_to_midi(np.array([step]), scale, base_midi)[0])
            while midi > hi:
                midi -= 12
            while midi < lo:
                midi += 12
            accent = 0.1 if onset == 0 else 0.04 if onset % 1 == 0 else -0.06
            legato = 0.98 if voice in _SUSTAINED or voice == "brass" else 0.92
            vel = (0.72 + accent - (0.08 if bip == 3 and j > 0 else 0.0)) * vel_scale * (1.0 - 0.4 * st.duck)
            out.append((voice, midi, bar_beat + onset, dur * legato, vel, 0.05))
            state.last_melody = midi
        return out

    def _harmony(
        self,
        st: _Style,
        state: _PlanState,
        voice: str,
        chord: Chord,
        chord_start: bool,
        hr: int,
        bar_beat: float,
        pan: float,
        vel_scale: float,
        rng: np.random.Generator,
    ) -> list[tuple[str, float, float, float, float, float]]:
        meter = st.meter
        pcs = chord.pitch_classes(st.tonic)
        lo, hi = _CHORD_RANGE.get(voice, (48, 72))
        shift = st.register // 2
        lo, hi = lo + shift, hi + shift
        nvoices = 4 if voice in ("pad", "strings", "choir", "organ") else 2 if voice == "cello" else 3
        voicing = voice_chord(pcs, lo, hi, state.voicings.get(voice), nvoices)
        state.voicings[voice] = voicing
        e = st.energy
        fast = st.tempo >= 118
        out: list[tuple[str, float, float, float, float, float]] = []
        v = (0.3 if nvoices >= 4 else 0.42) * vel_scale  # an accompaniment, under the melody
        pulsing = st.pulse == voice
        if voice == "strings" and st.duck >= 0.5:  # a driving ostinato (short bows) under loud drums
            for onset in range(meter):
                for m in voicing:
                    vv = v * (1.0 - 0.4 * st.duck) * (1.0 if onset == 0 else 0.85)
                    out.append(("spicc", m, bar_beat + onset, 0.5, vv, pan))
            return out
        if voice in _SUSTAINED or (voice == "brass" and e < 0.7):
            if chord_start:
                for m in voicing:
                    out.append((voice, m, bar_beat, hr * meter * 1.0, v * (1.0 - 0.5 * st.duck), pan))
            return out
        if voice == "brass":  # stabs on the beats
            onsets = range(meter) if e >= 0.8 else range(0, meter, 2)
            for onset in onsets:
                for m in voicing:
                    out.append((voice, m, bar_beat + onset, 0.8, v * (1.0 if onset == 0 else 0.8), pan))
            return out
        if voice == "pizz":
            step = 0.5 if (e >= 0.7 and fast) else 1.0
            for k in range(int(meter / step)):
                m = voicing[k % len(voicing)] if k % 2 else voicing[0]
                out.append((voice, m, bar_beat + k * step, step * 0.5, v * (1.0 if k % 2 == 0 else 0.8), pan))
            return out
        arpeggio = (
            voice in ("harp", "synth", "bells")
            or st.arpeggiated
            or (voice in ("piano", "epiano") and e < 0.45)
        )
        if arpeggio:
            notes = [*voicing, voicing[0] + 12]
            order = [0, 1, 2, 3, 2, 1, 2, 3] if len(notes) >= 4 else [0, 1, 2, 1]
            # One note per beat in slow and middling music, eighths only when fast and lively.
            step = 0.5 if (fast and (e >= 0.5 or voice in ("harp", "synth"))) else 1.0
            if voice == "bells" and not pulsing:
                step = 2.0 if e < 0.5 else 1.0
            count = round(meter / step)
            for k in range(count):
                m = notes[order[k % len(order)] % len(notes)]
                onset = k * step
                ring = (meter - onset) if voice in ("piano", "epiano", "harp") else step * 0.6
                on_beat = onset % 1 == 0
                out.append(
                    (voice, m, bar_beat + onset, ring, v * (1.0 if k == 0 else 0.85 if on_beat else 0.7), pan)
                )
            return out
        if voice == "guitar":
            if fast and e >= 0.7:
                pattern: tuple[float, ...] = tuple(x * 0.5 for x in range(2 * meter))
            elif fast and e >= 0.45 and meter == 4:
                pattern = (0, 1, 1.5, 2, 3)
            else:
                pattern = tuple(float(b) for b in range(meter))
            for j, onset in enumerate(pattern):
                nxt = pattern[j + 1] if j + 1 < len(pattern) else meter
                up = onset % 1 != 0
                strum = list(reversed(voicing)) if up else list(voicing)
                for i, m in enumerate(strum):
                    delay = i * 0.012 * st.tempo / 60.0  # 12 ms per string, in beats
                    vv = v * (0.7 if up else 1.0 if onset == 0 else 0.85)
                    out.append((voice, m, bar_beat + onset + delay, (nxt - onset) * 0.95, vv, pan))
            return out
        # Piano / e-piano / organ comping with block chords, one per beat.
        for onset in range(meter):
            for m in voicing:
                out.append((voice, m, bar_beat + onset, 0.95, v * (1.0 if onset == 0 else 0.78), pan))
        if st.bass is None:  # left hand
            out.append((voice, voicing[0] - 12, bar_beat, float(meter), v, pan))
        return out

    def _bass(
        self,
        st: _Style,
        state: _PlanState,
        chord: Chord,
        next_chord: Chord,
        chord_start: bool,
        hr: int,
        bar_beat: float,
        vel_scale: float,
        rng: np.random.Generator,
    ) -> list[tuple[str, float, float, float, float, float]]:
        voice = st.bass or "bass"
        meter = st.meter
        root_pc = (st.tonic + chord.root) % 12
        lo, hi = (36, 50) if voice == "bass" else (36, 52)
        target = state.last_bass if state.last_bass is not None else 41
        cands = [m for m in range(lo, hi + 1) if m % 12 == root_pc]
        root = min(cands, key=lambda m: abs(m - target))
        state.last_bass = root
        fifth = root + 7 if root + 7 <= hi + 5 else root - 5
        e = st.energy
        v = (0.5 if voice == "bass" else 0.38) * vel_scale * (1.0 - 0.35 * st.duck)
        out: list[tuple[str, float, float, float, float, float]] = []
        # Nobody else marks the beat, or the music is fast and has no drums to mark it.
        pulsing = st.drums is None and (st.pulse == "bass" or st.tempo >= _EVEN_BEATS_FROM)
        if pulsing and voice == "bass":
            voice = "pbass"  # plucked: its attack marks the beat
        if voice == "cello" or (e < 0.3 and not pulsing):
            if chord_start:
                out.append((voice, root, bar_beat, hr * meter * 0.98, v, 0.0))
            return out
        if e < 0.3 or (e < 0.55 and pulsing):  # a plucked root on every beat: the pulse
            pluck = "pbass" if voice == "bass" else voice
            for k in range(meter):
                m = fifth if (k == 2 and meter == 4 and e >= 0.3) else root
                out.append((pluck, m, bar_beat + k, 0.85, v * (1.0 if k == 0 else 0.85), 0.0))
            return out
        if e < 0.55:
            if meter == 4:
                out += [
                    (voice, root, bar_beat, 1.9, v, 0.0),
                    (voice, fifth, bar_beat + 2, 1.9, v * 0.85, 0.0),
                ]
            else:
                out.append((voice, root, bar_beat, 2.9, v, 0.0))
            return out
        if e < 0.75 or st.sub == 1:
            nxt_pc = (st.tonic + next_chord.root) % 12
            nxt = min((m for m in range(lo - 2, hi + 3) if m % 12 == nxt_pc), key=lambda m: abs(m - root))
            scale = {(st.tonic + p) % 12 for p in MODES[st.mode]}
            # A step of the scale into the next chord's root (a chromatic one would blur the key).
            approach = next(
                (nxt + d for d in ((-1, -2) if nxt > root else (1, 2)) if (nxt + d) % 12 in scale), nxt
            )
            line = [root, root, fifth, approach][:meter] if meter == 4 else [root, fifth, root]
            dur = 0.55 if st.duck >= 0.5 else 0.9  # under loud drums the bass leaves room for the kick
            for k, m in enumerate(line):
                out.append((voice, m, bar_beat + k, dur, v * (1.0 if k == 0 else 0.85), 0.0))
            return out
        for k in range(meter * 2):
            m = root + 12 if k % 2 else root
            out.append((voice, m, bar_beat + 0.5 * k, 0.42, v * (1.0 if k % 2 == 0 else 0.7), 0.0))
        return out

    def _drums(
        self, st: _Style, bip: int, bar_beat: float, rng: np.random.Generator
    ) -> list[tuple[str, float, float, float, float, float]]:
        """Every kit marks every beat; between the beats only hats and shakers, and those only
        when the music is not slow (in slow music they would be heard as the beat)."""
        kit, e, meter, tempo = st.drums, st.energy, st.meter, st.tempo
        slow = tempo < _BEAT_ONLY_BELOW
        hits: list[tuple[str, float, float, float]] = []  # name, beat offset, vel, pan
        if kit == "soft":
            kick, back, tick = "kick_soft", "brush", "shaker"
        elif kit == "orchestral":  # a big drum on the beat; a bass drum's punch when it gets loud
            kick, back, tick = ("kick" if e >= 0.6 else "tom_low"), "snare", "shaker"
        elif kit == "hand":
            kick, back, tick = "tom_low", "tom_high", "shaker"
        else:
            kick, back, tick = "kick", "snare", "hat"
        if meter == 3:
            hits += [(kick, 0, 0.95, 0.0), (back, 1, 0.55, 0.05), (back, 2, 0.5, 0.05)]
            if not slow:
                hits += [(tick, b + 0.5, 0.35, 0.3) for b in range(3)]
        else:
            four = kit == "electronic" or (kit in ("orchestral", "standard") and tempo >= 132 and e >= 0.7)
            kicks = range(4) if four or tempo >= _EVEN_BEATS_FROM else (0, 2)
            hits += [(kick, b, 0.95 if b == 0 else 0.85, 0.0) for b in kicks]
            if tempo >= _EVEN_BEATS_FROM:  # fast: every beat alike, or the ear halves the tempo
                hits += [(back, float(b), 0.7, 0.05) for b in range(4)]
                hits += [(tick, float(b), 0.4, 0.3) for b in range(4)]
            else:
                hits += [(back, 1, 0.8, 0.05), (back, 3, 0.85, 0.05)]
            if kit == "orchestral" and e >= 0.6:
                hits += [("tom_low", 0, 0.4, -0.15)]
            # The tick: on every beat in slow music, between the beats otherwise.
            if tempo >= _EVEN_BEATS_FROM:
                pass
            elif slow:
                hits += [(tick, float(b), 0.4, 0.3) for b in range(4)]
            elif kit == "electronic":
                hits += [(tick, b + 0.5, 0.55, 0.25) for b in range(4)]
                hits += [(tick, float(b), 0.3, 0.25) for b in range(4)]
            else:
                loud = 1.0 + max(0.0, e - 0.55)  # the ticks drive loud music
                hits += [(tick, 0.5 * k, (0.45 if k % 2 == 0 else 0.3) * loud, 0.3) for k in range(8)]
        if bip == PHRASE_BARS - 1 and e >= 0.55 and meter == 4 and kit != "soft" and not slow:
            # A fill into the next phrase, on the beat grid's last beat only.
            hits = [h for h in hits if h[1] < 3]
            hits += [(back, 3, 0.8, 0.05), ("tom_high", 3.5, 0.55, 0.2), (kick, 3, 0.7, 0.0)]
        if bip == 0 and e >= 0.7 and kit != "soft":  # a crash opens each phrase of loud music
            hits.append(("crash", 0, 0.7, -0.25))
        scale = (0.55 + 0.5 * e) * st.drum_level
        return [(name, _drum_pitch(name, st.tonic), bar_beat + off, 0.1, vel * scale, pan)
                for name, off, vel, pan in hits]  # fmt: skip

    # -- rendering ------------------------------------------------------------------------------
    def _render_notes(
        self,
        st: _Style,
        anchor: SynthAnchor | None,
        notes: list[Note],
        s0: int,
        frames: int,
        tail_frames: int,
    ) -> tuple[np.ndarray, float]:
        pre = int(PREROLL_S * SR) if anchor is not None and anchor.carry else 0
        w0 = s0 - pre
        end = s0 + frames + tail_frames + _MARGIN  # the margin keeps filter edges out of the output
        n = end - w0
        dry = np.zeros((2, n), dtype=np.float32)
        send = np.zeros(n, dtype=np.float32)
        for note in notes:
            if note.start >= end:
                continue
            render_note(
                note.voice,
                note.midi,
                note.start,
                note.length,
                note.vel,
                note.pan,
                note.seed,
                dry,
                send,
                w0,
                brightness=st.brightness,
            )
        if pre:  # notes that began before the pre-roll enter with a short fade
            fade = min(pre, int(0.05 * SR))
            dry[:, :fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)[None, :]
            send[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
        rt60 = 0.9 + 2.4 * st.space
        wet = self._room.apply(send, rt60) * np.float32(0.3 + 0.55 * st.space)
        mix = remove_dc(tilt(dry + wet, st.brightness))

        # Master gain: the loudness the dynamics ask for, whatever the arrangement (drums, a lone
        # flute, a full band), measured on this segment's body; glide there from the previous
        # segment's gain.
        body = mix[:, pre : pre + frames]
        level = float(np.sqrt(np.mean(np.square(body, dtype=np.float64)))) if body.size else 0.0
        target = float(np.clip(loudness(st.dynamics) / max(level, 1e-4), _GAIN_MIN, _GAIN_MAX))
        g0 = anchor.gain if anchor is not None else target
        if st.arc:
            target *= 1.0 + 0.15 * st.arc
            glide = frames
        else:
            glide = min(frames, int(1.5 * SR))
        gain = np.full(n, target, dtype=np.float32)
        gain[:pre] = g0
        ramp = np.linspace(g0, target, glide, dtype=np.float32)
        gain[pre : pre + glide] = ramp
        mix *= gain[None, :]
        mix, _ = limit(mix, threshold=0.8)
        out = np.ascontiguousarray(mix[:, pre : pre + frames + tail_frames].T)
        np.clip(out, -0.98, 0.98, out=out)
        gain_end = float(gain[min(pre + frames, n - 1)])
        return out, gain_end


_GAIN_MIN: Final = 0.05
_GAIN_MAX: Final = 4.0


def loudness(dynamics: float) -> float:
    """The RMS level (full scale 1) a dynamics level 0..1 is rendered at: soft 0.10, loud 0.20."""
    return 0.045 + 0.195 * float(np.clip(dynamics, 0.0, 1.0))


_MARGIN: Final = 4096


def _electronic(genre: str | None) -> bool:
    """A genre played on machines (its kit is the electronic one)."""
    entry = mw.GENRES.get(genre or "")
    return entry is not None and entry.kit == "electronic"


def _drum_pitch(name: str, tonic: int) -> float:
    """A pitched drum tuned to the key's tonic or fifth, whichever is nearer its own pitch (an
    untuned kick adds a pitch class of its own to every key); 0 for unpitched drums."""
    hz = DRUM_HZ.get(name)
    if hz is None:
        return 0.0
    natural = 69.0 + 12.0 * math.log2(hz / 440.0)
    cands = [
        m for m in range(int(natural) - 12, int(natural) + 13) if m % 12 in (tonic % 12, (tonic + 7) % 12)
    ]
    return float(min(cands, key=lambda m: abs(m - natural)))


def _bar_of(beat: float, meter: int) -> int:
    return math.floor(beat / meter + 1e-9)
