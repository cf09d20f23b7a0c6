"""Music theory helpers for the procedural synthesizer: scales, chords, progressions, voicing,
motifs and their variations. Pure functions on small tuples; randomness comes from the caller's
``numpy.random.Generator`` so everything is reproducible.
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np

__all__ = [
    "MODES",
    "PROGRESSIONS",
    "Chord",
    "choose_progression",
    "chord_scale",
    "mutate_motif",
    "new_motif",
    "parse_numeral",
    "pitch_class_name",
    "relative_tonic",
    "voice_chord",
]

MODES: Final[dict[str, tuple[int, ...]]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
MINOR_LIKE: Final = frozenset({"minor", "dorian", "phrygian"})

# Roman numerals are relative to the *mode's* scale degrees: in minor, VI is the major chord on
# the sixth degree of the minor scale; case gives the quality.
# Every progression starts on the tonic chord and most return to it within the cycle, so that a
# 10 s segment (a few bars) says its key and mode: no progression dwells on the relative key
# (vi in major, III in minor) or on the dominant.
PROGRESSIONS: Final[dict[str, tuple[str, ...]]] = {
    "major": ("I IV V I", "I ii V I", "I V IV I", "I IV I V", "I V I IV", "I vi IV I", "I IV vi I",
              "I vi ii V", "I iii IV I"),
    "minor": ("i iv V i", "i VI V i", "i ii° V i", "i iv i V", "i VI iv i", "i VII VI i",
              "i iv VI V"),
    "dorian": ("i IV i IV", "i VII IV i", "i ii III IV", "i IV VII i"),
    "phrygian": ("i II i VII", "i II VII i", "i vii II i"),
    "lydian": ("I II I II", "I II vi V", "I II iii II"),
    "mixolydian": ("I VII IV I", "I v IV I", "I VII IV IV", "I IV v I"),
}  # fmt: skip
# Calmer progressions (slow harmonic motion) preferred at low energy.
CALM_PROGRESSIONS: Final[dict[str, tuple[str, ...]]] = {
    "major": ("I IV I IV", "I IV I V", "I V I IV", "I V IV I"),
    "minor": ("i iv i iv", "i iv i V", "i VI iv i", "i iv VI i"),
}

_NUMERALS: Final = {"i": 0, "ii": 1, "iii": 2, "iv": 3, "v": 4, "vi": 5, "vii": 6}
_NUMERAL_RE = re.compile(r"^(b|#)?([ivIV]+)(°|o|dim|\+|7|maj7|sus2|sus4)?$")
_NOTE_NAMES: Final = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def pitch_class_name(pc: int) -> str:
    return _NOTE_NAMES[pc % 12]


class Chord:
    """A chord as a root (semitones above the tonic) and intervals above the root."""

    __slots__ = ("degree", "intervals", "root")

    def __init__(self, root: int, intervals: tuple[int, ...], degree: int) -> None:
        self.root = root % 12
        self.intervals = intervals
        self.degree = degree

    def pitch_classes(self, tonic: int) -> tuple[int, ...]:
        return tuple((tonic + self.root + i) % 12 for i in self.intervals)

    def __repr__(self) -> str:
        return f"Chord(root={self.root}, intervals={self.intervals})"


def parse_numeral(numeral: str, mode: str, *, sevenths: bool = False) -> Chord:
    """``"VI"`` in minor -> the major chord on the minor scale's 6th degree."""
    m = _NUMERAL_RE.match(numeral.strip())
    if not m:
        raise ValueError(f"not a roman numeral chord: {numeral!r}")
    acc, body, suffix = m.groups()
    degree = _NUMERALS[body.lower()]
    scale = MODES[mode]
    root = scale[degree] + (-1 if acc == "b" else 1 if acc == "#" else 0)
    if suffix in ("°", "o", "dim"):
        intervals: tuple[int, ...] = (0, 3, 6)
    elif suffix == "sus2":
        intervals = (0, 2, 7)
    elif suffix == "sus4":
        intervals = (0, 5, 7)
    elif body.isupper():
        intervals = (0, 4, 7)
    else:
        intervals = (0, 3, 7)
    if suffix == "7" or (sevenths and suffix is None):
        if intervals == (0, 4, 7):
            # Dominant seventh on V (a fifth above the tonic), major seventh elsewhere.
            intervals = (0, 4, 7, 10) if root == 7 else (0, 4, 7, 11)
        elif intervals == (0, 3, 7):
            intervals = (0, 3, 7, 10)
    elif suffix == "maj7":
        intervals = (0, 4, 7, 11)
    return Chord(root, intervals, degree)


def choose_progression(
    rng: np.random.Generator, mode: str, energy: float, avoid: str | None = None, *, calm: bool = False
) -> str:
    """A progression for ``mode``; the tonic-heavy calm ones at low energy or when ``calm`` (slow
    music, where a segment holds only a few chords and each must say the key)."""
    options = list(PROGRESSIONS.get(mode, PROGRESSIONS["major"]))
    if (energy < 0.3 or calm) and mode in CALM_PROGRESSIONS:
        options = list(CALM_PROGRESSIONS[mode]) + ([] if calm else options[:3])
    if avoid in options and len(options) > 1:
        options.remove(avoid)
    return options[int(rng.integers(len(options)))]


def relative_tonic(tonic: int, old_mode: str, new_mode: str) -> int:
    """The tonic of the relative key (same notes) when switching between major- and minor-like modes."""
    old_minor = old_mode in MINOR_LIKE
    new_minor = new_mode in MINOR_LIKE
    if old_minor == new_minor:
        return tonic
    return (tonic + (-3 if new_minor else 3)) % 12


def chord_scale(tonic: int, mode: str, chord: Chord, *, pentatonic: bool = False) -> np.ndarray:
    """The 7 (or 5) pitch classes a melody uses over ``chord``: the mode's scale with any scale
    tone a semitone away from a chord tone replaced by that chord tone (so a raised leading tone
    in minor's V is followed by the melody). Sorted pitch classes relative to the tonic."""
    scale = list(MODES[mode])
    tones = {(chord.root + i) % 12 for i in chord.intervals}
    out = []
    for s in scale:
        if s in tones:
            out.append(s)
            continue
        near = [t for t in tones if (t - s) % 12 in (1, 11)]
        out.append(near[0] if near and near[0] not in scale else s)
    if pentatonic:
        # Drop the two scale tones that form semitones with others (4th and 7th in major).
        minor = mode in MINOR_LIKE
        drop = {2, 6} if not minor else {1, 5}
        out = [p for i, p in enumerate(out) if i not in drop]
    return np.array(sorted(set(out)), dtype=np.int64)


def steps_to_midi(steps: np.ndarray, scale: np.ndarray, base_midi: int) -> np.ndarray:
    """Scale steps (0 = ``scale[0]`` at ``base_midi``'s octave) -> MIDI notes."""
    n = len(scale)
    octave, idx = np.divmod(steps, n)
    return base_midi + 12 * octave + scale[idx]


def voice_chord(
    pcs: tuple[int, ...], lo: int, hi: int, previous: tuple[int, ...] | None, voices: int
) -> tuple[int, ...]:
    """Place the chord's pitch classes in [lo, hi] with ``voices`` notes, as close to the previous
    voicing as possible (smooth voice leading); the root is always included."""
    root = pcs[0]
    candidates = []
    for low in range(lo, hi + 1):
        if low % 12 not in pcs:
            continue
        notes = [low]
        pc_order = list(pcs) + list(pcs)
        start = pc_order.index(low % 12)
        k = start + 1
        while len(notes) < voices:
            pc = pc_order[k % len(pcs)]
            n = notes[-1] + 1
            while n % 12 != pc:
                n += 1
            notes.append(n)
            k += 1
        if notes[-1] > hi:
            continue
        if root not in {n % 12 for n in notes}:
            continue
        candidates.append(tuple(notes))
    if not candidates:
        base = lo + ((root - lo) % 12)
        return tuple(base + (12 * (i // len(pcs))) + ((pcs[i % len(pcs)] - root) % 12) for i in range(voices))
    if previous:
        prev = np.array(sorted(previous), dtype=float)
        center = prev.mean()

        def cost(c: tuple[int, ...]) -> float:
            arr = np.array(c, dtype=float)
            if len(arr) == len(prev):
                return float(np.abs(arr - prev).sum())
            return float(abs(arr.mean() - center) * len(arr))

        return min(candidates, key=cost)
    mid = (lo + hi) / 2
    return min(candidates, key=lambda c: abs(float(np.mean(c)) - mid))


# --- motifs ---------------------------------------------------------------------------------
# A motif is a tuple of (scale step, onset beat, duration beats) spanning one bar.

_RHYTHMS: Final[dict[int, dict[str, tuple[tuple[tuple[float, float], ...], ...]]]] = {
    4: {
        "low": (((0, 2), (2, 2)), ((0, 3), (3, 1)), ((0, 1), (1, 1), (2, 2)), ((0, 1.5), (1.5, 0.5), (2, 2)),
                ((0, 2), (2, 1), (3, 1)), ((1, 1), (2, 2))),
        "mid": (((0, 1), (1, 0.5), (1.5, 0.5), (2, 2)), ((0, 0.5), (0.5, 0.5), (1, 1), (2, 1), (3, 1)),
                ((0, 1.5), (1.5, 0.5), (2, 1), (3, 1)), ((0, 1), (1, 1), (2, 1), (3, 1)),
                ((0.5, 0.5), (1, 1), (2, 1.5), (3.5, 0.5)), ((0, 1), (1, 1), (2, 1.5), (3.5, 0.5))),
        "high": (((0, 0.5), (0.5, 0.5), (1, 0.5), (1.5, 0.5), (2, 1), (3, 1)),
                 ((0, 0.75), (0.75, 0.75), (1.5, 0.5), (2, 1), (3, 0.5), (3.5, 0.5)),
                 ((0, 1), (1, 0.5), (1.5, 0.5), (2, 0.5), (2.5, 0.5), (3, 1)),
                 ((0, 0.5), (0.5, 1), (1.5, 0.5), (2, 0.5), (2.5, 1.5))),
        # On the beat only: slow music, where notes between the beats would be heard as the pulse.
        "beat": (((0, 2), (2, 2)), ((0, 3), (3, 1)), ((0, 1), (1, 1), (2, 2)), ((0, 2), (2, 1), (3, 1)),
                 ((0, 1), (1, 1), (2, 1), (3, 1)), ((0, 4),), ((0, 1), (1, 3)), ((0, 1), (1, 2), (3, 1))),
    },
    3: {
        "low": (((0, 2), (2, 1)), ((0, 3),), ((0, 1.5), (1.5, 1.5)), ((0, 1), (1, 2))),
        "mid": (((0, 1), (1, 1), (2, 1)), ((0, 1.5), (1.5, 0.5), (2, 1)), ((0, 2), (2, 0.5), (2.5, 0.5))),
        "high": (((0, 0.5), (0.5, 0.5), (1, 1), (2, 1)), ((0, 1), (1, 0.5), (1.5, 0.5), (2, 1)),
                 ((0, 0.5), (0.5, 0.5), (1, 0.5), (1.5, 0.5), (2, 1))),
        "beat": (((0, 2), (2, 1)), ((0, 3),), ((0, 1), (1, 2)), ((0, 1), (1, 1), (2, 1))),
    },
}  # fmt: skip

Motif = tuple[tuple[int, float, float], ...]


def _band(energy: float, sub: int = 2) -> str:
    """Which rhythms a motif draws from: by energy, and on the beat only when ``sub`` is 1."""
    if sub <= 1:
        return "beat"
    return "low" if energy < 0.35 else "mid" if energy < 0.7 else "high"


def on_grid(motif: Motif, sub: int) -> bool:
    """True when every onset of ``motif`` falls on a multiple of 1/sub beats."""
    return all(abs(o * sub - round(o * sub)) < 1e-6 for _, o, _ in motif)


def _walk(rng: np.random.Generator, n: int) -> list[int]:
    steps = [0]
    for _ in range(n - 1):
        prev = steps[-1]
        if len(steps) >= 2 and abs(steps[-1] - steps[-2]) >= 3:  # after a leap, step back
            move = -int(np.sign(steps[-1] - steps[-2]))
        else:
            move = int(
                rng.choice(
                    [-2, -1, -1, 1, 1, 2, 0, 3, -3], p=[0.1, 0.2, 0.05, 0.2, 0.05, 0.12, 0.1, 0.1, 0.08]
                )
            )
        steps.append(int(np.clip(prev + move, -4, 7)))
    return steps


def _tidy(steps: list[int]) -> list[int]:
    """Keep a motif singable: a span of at most 6 scale steps (outliers move by an octave toward
    the middle, keeping their pitch class) and a register around the chord root."""
    steps = list(steps)
    for _ in range(2 * len(steps)):
        if max(steps) - min(steps) <= 6:
            break
        mid = float(np.median(steps))
        i = max(range(len(steps)), key=lambda k: abs(steps[k] - mid))
        steps[i] += -7 if steps[i] > mid else 7
    if min(steps) < -4:
        steps = [s + (-4 - min(steps)) for s in steps]
    if max(steps) > 7:
        steps = [s - (max(steps) - 7) for s in steps]
    return steps


def new_motif(rng: np.random.Generator, meter: int, energy: float, sub: int = 2) -> Motif:
    patterns = _RHYTHMS.get(meter, _RHYTHMS[4])[_band(energy, sub)]
    rhythm = patterns[int(rng.integers(len(patterns)))]
    steps = _tidy(_walk(rng, len(rhythm)))
    return tuple((s, float(o), float(d)) for s, (o, d) in zip(steps, rhythm, strict=True))


def mutate_motif(rng: np.random.Generator, motif: Motif, meter: int, energy: float, sub: int = 2) -> Motif:
    """One small change, so the next phrase sounds related: transpose, invert, change the ending,
    change the rhythm under the same contour, or swap two inner notes. Always differs from
    ``motif``. With ``sub`` 1 the result has notes on the beat only (a motif from faster music
    gets a beat rhythm under the same contour)."""
    if not motif:
        return new_motif(rng, meter, energy, sub)
    if not on_grid(motif, sub) or max(o + d for _, o, d in motif) > meter + 1e-9:
        return _rerhythm(rng, motif, meter, energy, sub)
    for _ in range(6):
        varied = _mutate_once(rng, motif, meter, energy, sub)
        if varied != motif:
            return varied
    last = motif[-1]
    step = last[0] + (1 if last[0] < 7 else -1)
    return (*motif[:-1], (step, last[1], last[2]))


def _rerhythm(rng: np.random.Generator, motif: Motif, meter: int, energy: float, sub: int) -> Motif:
    """The same contour on a new rhythm from the band for (energy, sub)."""
    steps = [m[0] for m in motif]
    patterns = _RHYTHMS.get(meter, _RHYTHMS[4])[_band(energy, sub)]
    rhythm = list(patterns[int(rng.integers(len(patterns)))])
    idx = np.linspace(0, len(steps) - 1, len(rhythm)).round().astype(int)
    new = _tidy([steps[i] for i in idx])
    return tuple((int(s), float(o), float(d)) for s, (o, d) in zip(new, rhythm, strict=True))


def _mutate_once(rng: np.random.Generator, motif: Motif, meter: int, energy: float, sub: int = 2) -> Motif:
    steps = [m[0] for m in motif]
    rhythm = [(m[1], m[2]) for m in motif]
    op = int(rng.integers(6))
    if op == 0:  # transpose
        shift = int(rng.choice([-2, -1, 1, 2]))
        steps = [s + shift for s in steps]
    elif op == 1:  # invert around the first note
        steps = [steps[0] - (s - steps[0]) for s in steps]
    elif op == 2:  # new ending
        steps[-1] = steps[-1] + int(rng.choice([-2, -1, 1, 2]))
    elif op == 3:  # new rhythm, same contour (resampled to the new length)
        return _rerhythm(rng, motif, meter, energy, sub)
    elif op == 4 and len(steps) >= 3:  # swap two inner notes
        i = int(rng.integers(1, len(steps) - 1))
        j = min(len(steps) - 1, i + 1)
        steps[i], steps[j] = steps[j], steps[i]
    else:  # a neighbour-note ornament on one note
        i = int(rng.integers(len(steps)))
        steps[i] += int(rng.choice([-1, 1]))
    steps = _tidy(steps)
    return tuple((int(s), float(o), float(d)) for s, (o, d) in zip(steps, rhythm, strict=True))
