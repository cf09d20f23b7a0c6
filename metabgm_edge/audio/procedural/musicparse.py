"""Reads a music description ("slow, soft piano and strings in D minor, 72 BPM, dreamy") into
the few numbers the procedural synthesizer plays from.

The words and what they mean come from :mod:`metabgm_edge.music_words`, the vocabulary the
composer writes with. The reader matches word forms, not phrases: it finds every tempo, dynamics,
mood, genre, timbre, space, rhythm and instrument word, notes what stands before it (a negation,
"very", "slightly") and what follows ("tempo", "quality"), and weighs the evidence:

- tempo: a stated BPM; else the tempo words (a word next to "tempo" or "pace" counts double),
  nudged within their range by the genre and moods ("fast" metal is faster than "fast" pop);
  moods and genre alone give only a hint;
- mode: a named key or mode ("in a minor key", "minor chords"); else the valence of the moods,
  genre and timbre leans major or minor;
- energy, dynamics, brightness (timbre words, moods and valence), space;
- instruments in order of mention, those refused ("no drums", "instrumental" refuses voices),
  the melody instrument, "solo" (that instrument alone), drums and the genre's kit.

Explicit facts (a BPM, a key, a named mode, an instrument) are kept apart from hints, so the
synthesizer keeps the previous segment's key and tempo unless the description really changes
them. Unknown words are ignored; an empty description gives a neutral spec. Pure functions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from msgspec import Struct

from metabgm_edge import music_words as mw

__all__ = ["INSTRUMENTS", "MusicSpec", "parse_description"]

INSTRUMENTS: Final = mw.VOICES
"""The voices the synthesizer has (drums included)."""


class MusicSpec(Struct, frozen=True, kw_only=True):
    """What a description asks for. ``None`` means "not said": keep the anchor's value."""

    tempo: float | None = None
    """From an explicit BPM or tempo words."""
    tempo_hint: float | None = None
    """Suggested by moods or a genre (weaker than ``tempo``)."""
    tonic: int | None = None
    """Pitch class 0..11 of an explicitly named key."""
    mode: str | None = None
    """A named mode: major, minor, dorian, phrygian, lydian, mixolydian."""
    mode_hint: str | None = None
    """major/minor suggested by the valence of moods, genre and timbre (dark, sad, happy...)."""
    valence: float | None = None
    """-1 sad .. +1 happy, from moods, genre and timbre words."""
    meter: int | None = None
    instruments: tuple[str, ...] = ()
    """Voices in order of mention (genre defaults appended when few were named)."""
    named_instruments: tuple[str, ...] = ()
    """Only the voices the description names itself."""
    melody: str | None = None
    """The instrument the description puts on the melody ("flute melody", "lead guitar")."""
    excluded: tuple[str, ...] = ()
    drums: bool | None = None
    """True: rhythm asked for; False: refused ("no drums"); None: not said."""
    kit: str | None = None
    """The genre's drum kit (standard, electronic, orchestral, soft, hand), if a genre says."""
    drum_weight: float = 0.0
    """How much the description leans on the beat (drum and rhythm words, "thumping drums")."""
    dynamics: float | None = None
    energy: float | None = None
    brightness: float | None = None
    space: float | None = None
    solo: bool = False
    """One instrument alone: no accompaniment, bass or drums."""
    sevenths: bool = False
    pentatonic: bool = False
    arc: float = 0.0
    """+1 building / crescendo, -1 fading / diminuendo, 0 steady."""
    styles: tuple[str, ...] = ()
    """Playing-style words: arpeggiated, staccato, sustained, plucked, pizzicato..."""
    genre: str | None = None


# --- the lexicon as token sequences -------------------------------------------------------------

_KINDS: Final = ("instrument", "tempo", "dynamics", "mood", "genre", "timbre", "space", "rhythm")
_TOKEN_RE = re.compile(r"[a-z0-9&][a-z0-9&\-']*|[.;:!?,()]")
_CLAUSE_BREAK: Final = frozenset(".;:!?,()")


def _lexicon() -> dict[tuple[str, ...], list[tuple[str, str]]]:
    tables: dict[str, object] = {
        "instrument": mw.INSTRUMENT_WORDS, "tempo": mw.TEMPO_WORDS, "dynamics": mw.DYNAMICS,
        "mood": mw.MOODS, "genre": mw.GENRES, "timbre": mw.TIMBRE_WORDS, "space": mw.SPACE_WORDS,
        "rhythm": dict.fromkeys(mw.RHYTHM_WORDS | mw.NO_RHYTHM_WORDS),
    }  # fmt: skip
    out: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for kind, table in tables.items():
        for phrase in table:  # type: ignore[attr-defined]
            out.setdefault(tuple(phrase.split()), []).append((kind, phrase))
    return out


_LEXICON: Final = _lexicon()
_LONGEST: Final = max(len(k) for k in _LEXICON)


@dataclass
class _Hit:
    kind: str
    key: str
    index: int
    """Index of the first token."""
    end: int
    clause: int
    degree: float = 1.0
    negated: bool = False


_STYLES: Final = (
    "arpeggiated", "staccato", "sustained", "plucked", "pizzicato", "strummed", "legato", "sparse",
    "syncopated", "repetitive", "flowing", "tremolo", "swing", "swung", "walking",
)  # fmt: skip
_SEVENTHS: Final = frozenset({"jazz", "jazzy", "lush", "lo-fi", "lofi", "soul", "neo-soul", "sophisticated",
                              "smooth", "chill", "chillhop", "bossa", "r&b", "rnb"})  # fmt: skip
_PENTATONIC: Final = frozenset({"celtic", "folk", "world", "chiptune"})
_MODE_NAMES: Final = ("major", "minor", "dorian", "phrygian", "lydian", "mixolydian", "aeolian", "ionian")
_MODE_CONTEXT: Final = frozenset({"key", "keys", "scale", "scales", "chord", "chords", "tonality", "mode",
                                  "progression", "progressions", "harmony", "harmonies", "melody",
                                  "melodies", "composition", "third", "feel", "sound", "tune", "triad",
                                  "triads", "arpeggio", "arpeggios", "riff", "riffs"})  # fmt: skip
_NOTE_PC: Final[dict[str, int]] = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_BPM_RE = re.compile(
    r"(\d{2,3}(?:\.\d+)?)\s*(?:(?:-|to|–)\s*(\d{2,3}(?:\.\d+)?)\s*)?(?:bpm|beats per minute|beats a minute)\b"
)
_TEMPO_OF_RE = re.compile(r"\btempo (?:of|is|at|around|about) (?:about |around |roughly )?(\d{2,3})\b")
_KEY_RE = re.compile(
    r"\b(?:key of\s+)?([A-Ga-g])\s*(#|♯|-sharp|\s+sharp|b|♭|-flat|\s+flat)?\s*"
    r"(major|minor|maj|min|dorian|phrygian|lydian|mixolydian|aeolian|ionian|m)?\b"
)
_LEAD_PATTERNS: Final = (
    re.compile(
        r"\b([a-z\-]+(?: [a-z\-]+)?) (?:melody|melodies|lead|leads|solo|solos|tune|theme|line|riff|riffs)\b"
    ),
    re.compile(
        r"\b(?:melody|melodies|lead|solo|tune|theme)s? (?:is |are )?(?:on|by|from|played by|of|played on) "
        r"(?:an? |the )?([a-z\-]+(?: [a-z\-]+)?)"
    ),
    re.compile(r"\blead ([a-z\-]+)"),
)
_STRICT_TEMPO_CONTEXT: Final = frozenset({"tempo", "tempos", "pace", "paced", "speed", "bpm"})
_PLAIN_TEMPO_WORDS: Final = frozenset(k for k, v in mw.TEMPO_WORDS.items() if not v.contextual)
_VOCAL_WORDS: Final = frozenset(p for p, v in mw.INSTRUMENT_WORDS.items() if v == "voice")
_QUALITY_NOUNS: Final = frozenset({"quality", "fidelity", "resolution", "budget"})


def _tokens(text: str) -> tuple[list[str], list[int]]:
    """Word tokens and, for each, the clause it is in (clauses end at punctuation)."""
    words: list[str] = []
    clauses: list[int] = []
    clause = 0
    for tok in _TOKEN_RE.findall(text):
        if tok in _CLAUSE_BREAK:
            clause += 1
            continue
        words.append(tok)
        clauses.append(clause)
    return words, clauses


def _hits(words: list[str], clauses: list[int]) -> list[_Hit]:
    """Longest lexicon matches, left to right, each with its degree and negation."""
    out: list[_Hit] = []
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            entry = _LEXICON.get(tuple(words[i : i + n]))
            if entry is None or clauses[i + n - 1] != clauses[i]:
                continue
            negated, degree = _modifiers(words, clauses, i, i + n)
            out.extend(_Hit(kind, key, i, i + n, clauses[i], degree, negated) for kind, key in entry)
            if n > 1:  # "soft rock" is a genre and soft, "heavy metal" a genre and heavy
                for j in range(i, i + n):
                    for kind, key in _LEXICON.get((words[j],), ()):
                        if kind in ("dynamics", "tempo") and all(k != kind for k, _ in entry):
                            out.append(_Hit(kind, key, j, j + 1, clauses[j], degree, negated))
            i += n
            break
        else:
            i += 1
    return out


def _modifiers(words: list[str], clauses: list[int], start: int, end: int) -> tuple[bool, float]:
    negated = False
    degree = 1.0
    for j in range(max(0, start - 3), start):
        if clauses[j] != clauses[start]:
            continue
        w = words[j]
        if w in mw.NEGATIONS or w.endswith("n't"):
            negated = True
        elif w in mw.BOOSTERS and j >= start - 2:
            degree *= mw.BOOSTERS[w]
    after = words[end : end + 3]
    if any(w in ("absent", "missing") for w in after) or after[:2] in (["is", "not"], ["are", "not"]):
        negated = True
    return negated, degree


def _near(words: list[str], start: int, end: int, vocabulary: frozenset[str], span: int = 2) -> bool:
    return any(w in vocabulary for w in words[max(0, start - span) : start] + words[end : end + span])


def _wmean(pairs: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else None


def _push(value: float, degree: float, centre: float) -> float:
    """A word said "very" moves further from the neutral centre; "slightly" stays closer."""
    return centre + (value - centre) * degree


# --- the reader ---------------------------------------------------------------------------------


def parse_description(description: str) -> MusicSpec:
    """Parse a music description. Never raises; odd input gives a neutral spec."""
    raw = str(description or "")[:2000]
    text = re.sub(r"\s+", " ", raw.lower().replace("’", "'").replace("/", " "))
    words, clauses = _tokens(text)
    hits = _hits(words, clauses)
    by_kind: dict[str, list[_Hit]] = {k: [] for k in _KINDS}
    for h in hits:
        by_kind[h.kind].append(h)

    genre_hit = next((h for h in by_kind["genre"] if not h.negated), None)
    genre = mw.GENRES[genre_hit.key] if genre_hit else None
    moods = [(h, mw.MOODS[h.key]) for h in by_kind["mood"]]

    tempo, tempo_hint = _tempo(text, words, by_kind["tempo"], moods, genre)
    tonic, mode = _key(raw, text, words)
    meter = _meter(text, words)

    instruments, excluded, named, melody, solo = _instruments(
        text, words, clauses, by_kind["instrument"], genre
    )

    # Rhythm and drums.
    rhythm = [h for h in by_kind["rhythm"] if not h.negated and h.key in mw.RHYTHM_WORDS]
    refused = "drums" in excluded or any(
        (h.negated and h.key in mw.RHYTHM_WORDS) or h.key in mw.NO_RHYTHM_WORDS for h in by_kind["rhythm"]
    )
    drums: bool | None = None
    if refused or (solo and "drums" not in named):
        drums = False
    elif "drums" in named or rhythm or (genre is not None and "drums" in genre.instruments):
        drums = True
    drum_weight = 0.0
    if drums:
        drum_words = [
            h for h in by_kind["instrument"] if mw.INSTRUMENT_WORDS[h.key] == "drums" and not h.negated
        ]
        loud_drums = sum(
            1
            for h in drum_words
            for d in by_kind["dynamics"]
            if d.end == h.index and mw.DYNAMICS[d.key] >= 0.7
        )
        drum_weight = min(1.0, 0.25 * len(drum_words) + 0.15 * len(rhythm) + 0.3 * loud_drums)

    # Dynamics, energy, valence, brightness.
    dyn = [(_push(mw.DYNAMICS[h.key], h.degree, 0.5), 1.0) for h in by_kind["dynamics"] if not h.negated]
    dyn += [(0.5, 0.5) for h in by_kind["dynamics"] if h.negated]
    dynamics = _wmean(dyn)
    energies: list[tuple[float, float]] = []
    valences: list[tuple[float, float]] = []
    bright: list[tuple[float, float]] = []
    for h, m in moods:
        if h.negated:
            valences.append((-0.4 * m.valence, 0.5))
            continue
        energies.append((min(1.0, max(0.0, _push(m.energy, h.degree, 0.5))), 1.0))
        valences.append((max(-1.0, min(1.0, m.valence * h.degree)), 0.5 + abs(m.valence)))
        if m.brightness is not None:
            bright.append((m.brightness, 1.0))
    for h in by_kind["timbre"]:
        nxt = words[h.end] if h.end < len(words) else ""
        if h.negated or nxt in _QUALITY_NOUNS or nxt in mw.NOT_TIMBRE_BEFORE:
            continue
        value = _push(mw.TIMBRE_WORDS[h.key], h.degree, 0.5)
        bright.append((min(1.0, max(0.0, value)), 1.5))
        valences.append(((value - 0.5) * 0.6, 0.5))
    if genre is not None:
        energies.append((genre.energy, 1.5))
        valences.append((genre.valence, 0.6))
    if dynamics is not None:
        energies.append((dynamics, 2.0))
    if tempo is not None:
        energies.append((min(1.0, max(0.0, 0.15 + (tempo - 60) / 120)), 0.7))
    energy = _wmean(energies)
    valence = _wmean(valences)
    if valence is not None:
        bright.append((0.5 + 0.35 * valence, 1.0))
    brightness = _wmean(bright)
    mode_hint = None
    if valence is not None and abs(valence) >= 0.12:
        mode_hint = "minor" if valence < 0 else "major"

    space_vals = [mw.SPACE_WORDS[h.key] for h in by_kind["space"] if not h.negated]
    space = sum(space_vals) / len(space_vals) if space_vals else (genre.space if genre else None)

    arc = 0.0
    if re.search(r"\b(building|builds|build-up|buildup|crescendo|swelling|rising|growing)\b", text):
        arc = 1.0
    elif re.search(r"\b(fading|fades|fade-out|diminuendo|receding|dying away|winding down)\b", text):
        arc = -1.0
    wordset = set(words)
    styles = tuple(s for s in _STYLES if s in wordset)
    return MusicSpec(
        tempo=tempo,
        tempo_hint=tempo_hint,
        tonic=tonic,
        mode=mode,
        mode_hint=mode_hint,
        valence=valence,
        meter=meter,
        instruments=instruments,
        named_instruments=named,
        melody=melody,
        excluded=excluded,
        drums=drums,
        kit=genre.kit if genre is not None else None,
        drum_weight=drum_weight,
        dynamics=dynamics,
        energy=energy,
        brightness=brightness,
        space=space,
        solo=solo,
        sevenths=bool(wordset & _SEVENTHS),
        pentatonic="pentatonic" in wordset or (genre_hit is not None and genre_hit.key in _PENTATONIC),
        arc=arc,
        styles=styles,
        genre=genre_hit.key if genre_hit else None,
    )  # fmt: skip


def _tempo(
    text: str, words: list[str], hits: list[_Hit], moods: list[tuple[_Hit, mw.Mood]], genre: mw.Genre | None
) -> tuple[float | None, float | None]:
    """(tempo from a BPM or tempo words, tempo hinted by genre and moods)."""
    hints: list[tuple[float, float]] = []
    if genre is not None:
        hints.append((math.log(genre.tempo), 1.0))
    for h, m in moods:
        if m.tempo is not None and not h.negated:
            hints.append((math.log(_push(m.tempo, h.degree, 100.0)), 0.5))
    hint = _wmean(hints)
    tempo_hint = round(math.exp(hint), 1) if hint is not None else None

    m = _BPM_RE.search(text) or _TEMPO_OF_RE.search(text)
    if m:
        values = [float(g) for g in m.groups() if g]
        return min(200.0, max(40.0, sum(values) / len(values))), tempo_hint

    found: list[tuple[float, float]] = []
    lo, hi = 200.0, 40.0
    for h in hits:
        word = mw.TEMPO_WORDS[h.key]
        strict = _near(words, h.index, h.end, _STRICT_TEMPO_CONTEXT) or _near(
            words, h.index, h.end, _PLAIN_TEMPO_WORDS, 3
        )
        near = strict or _near(words, h.index, h.end, mw.TEMPO_CONTEXT)
        if h.negated or (word.contextual and not strict):
            continue
        centre = 100.0
        typical = word.typical
        if h.degree != 1.0:  # "very fast" beyond "fast"; "slightly slow" nearer the middle
            typical = _push(typical, h.degree, centre)
        found.append((math.log(typical), 3.0 if near else 1.5))
        lo, hi = min(lo, word.lo), max(hi, word.hi)
    if not found:
        return None, tempo_hint
    words_mean = _wmean(found)
    assert words_mean is not None
    weight = sum(w for _, w in found)
    if hint is not None:  # the genre and moods place it within the words' range
        hint_weight = min(0.35 * weight, sum(w for _, w in hints))
        words_mean = (words_mean * weight + hint * hint_weight) / (weight + hint_weight)
    tempo = min(hi, max(lo, math.exp(words_mean)))
    return round(min(200.0, max(40.0, tempo)), 1), tempo_hint


def _key(raw: str, text: str, words: list[str]) -> tuple[int | None, str | None]:
    tonic: int | None = None
    mode: str | None = None
    for km in _KEY_RE.finditer(raw):
        letter, accidental, quality = km.group(1), km.group(2), km.group(3)
        start = km.start()
        prefix = raw[max(0, start - 8) : start].lower()
        explicit = "key of" in km.group(0).lower() or "key of" in prefix
        if letter.islower() and not explicit:
            continue  # "a minor key" is the article, not the note A
        if quality is None and not explicit:
            continue
        if quality == "m" and accidental is None and not explicit and letter.upper() == "B":
            continue
        pc = _NOTE_PC[letter.lower()]
        acc = (accidental or "").strip().lower()
        if acc in ("#", "♯", "-sharp", "sharp"):
            pc += 1
        elif acc in ("b", "♭", "-flat", "flat"):
            pc -= 1
        tonic = pc % 12
        q = (quality or "major").lower()
        mode = {"maj": "major", "min": "minor", "m": "minor", "aeolian": "minor", "ionian": "major"}.get(q, q)
        break
    if mode is None:
        named: set[str] = set()
        for i, w in enumerate(words):
            if w not in _MODE_NAMES:
                continue
            before = words[max(0, i - 2) : i]
            after = words[i + 1 : i + 2]
            musical = (
                w not in ("major", "minor")  # dorian, lydian... mean nothing else
                or (after and after[0] in _MODE_CONTEXT)
                or (before[-1:] == ["in"] or before[-2:] in (["in", "a"], ["in", "the"]))
            )
            if musical:
                named.add({"aeolian": "minor", "ionian": "major"}.get(w, w))
        if len(named) == 1:
            mode = named.pop()
    return tonic, mode


def _meter(text: str, words: list[str]) -> int | None:
    if "waltz" in words or re.search(r"\b(3/4|6/8|three-four|triple meter|triple time|12/8)\b", text):
        return 3
    if re.search(r"\b(4/4|common time|four-four)\b", text):
        return 4
    return None


def _instruments(
    text: str, words: list[str], clauses: list[int], hits: list[_Hit], genre: mw.Genre | None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str | None, bool]:
    """(instruments, excluded, named, melody, solo)."""
    instruments: list[str] = []
    excluded: list[str] = []
    wordset = set(words)
    instrumental = "instrumental" in wordset or "instrumentals" in wordset
    for h in hits:
        name = mw.INSTRUMENT_WORDS[h.key]
        if h.negated:
            if name not in excluded:
                excluded.append(name)
        elif instrumental and h.key in _VOCAL_WORDS:
            continue  # "an instrumental": any singing word is about its absence
        elif name not in instruments:
            instruments.append(name)
    if instrumental and "voice" not in excluded:
        excluded.append("voice")
    instruments = [i for i in instruments if i not in excluded]
    named = tuple(instruments)

    # One instrument alone: "solo piano", "unaccompanied cello", "only a guitar" ("a guitar solo" is
    # a lead part in a band, not a guitar alone).
    alone = bool(wordset & {"unaccompanied", "alone", "lone"}) or bool(
        re.search(r"\bsolo (?:piece|performance|recital|recording|instrumental)\b", text)
    )
    for h in hits:
        before = words[max(0, h.index - 3) : h.index]
        if (before[-2:] and "solo" in before[-2:]) or any(w in ("only", "just") for w in before):
            alone = True
    pitched = [i for i in named if i != "drums"]
    solo = alone and len(pitched) == 1 and len(named) == 1

    if genre is not None and not solo and len(instruments) < 2:
        for inst in genre.instruments:
            if inst not in instruments and inst not in excluded:
                instruments.append(inst)

    melody = None
    for pattern in _LEAD_PATTERNS:
        for cand in pattern.finditer(text):
            for phrase in (cand.group(1), cand.group(1).split()[-1]):
                voice = mw.INSTRUMENT_WORDS.get(phrase)
                if voice is not None and voice not in ("drums", "bass") and voice not in excluded:
                    melody = voice
                    break
            if melody:
                break
        if melody:
            break
    instruments = [i for i in instruments if i not in excluded]
    return (
        tuple(instruments),
        tuple(dict.fromkeys(excluded)),
        named,
        melody if melody in instruments else None,
        solo,
    )
