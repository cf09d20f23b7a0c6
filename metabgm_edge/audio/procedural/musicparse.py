"""Reads a short music description ("slow, soft piano and strings in D minor, 72 BPM, dreamy")
into the few numbers the procedural synthesizer plays from.

Explicit facts (a BPM, a tempo word, a key, a named mode, an instrument) are kept apart from
hints (a mood that suggests minor or a faster tempo), so the synthesizer can keep the previous
segment's key and tempo unless the description really changes them. Unknown words are ignored;
an empty description gives a neutral spec. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from msgspec import Struct

__all__ = ["INSTRUMENTS", "MusicSpec", "parse_description"]

# Canonical instruments the synthesizer has voices for.
INSTRUMENTS: Final = (
    "piano",
    "epiano",
    "strings",
    "cello",
    "pad",
    "bass",
    "drums",
    "flute",
    "guitar",
    "choir",
    "brass",
    "bells",
    "synth",
    "harp",
    "organ",
)

# Phrases (longest first when matching) -> canonical instrument.
_INSTRUMENT_WORDS: Final[dict[str, str]] = {
    "electric piano": "epiano",
    "e-piano": "epiano",
    "rhodes": "epiano",
    "wurlitzer": "epiano",
    "grand piano": "piano",
    "piano": "piano",
    "pianos": "piano",
    "keys": "piano",
    "keyboard": "piano",
    "keyboards": "piano",
    "harpsichord": "piano",
    "strings": "strings",
    "string": "strings",
    "string section": "strings",
    "violin": "strings",
    "violins": "strings",
    "viola": "strings",
    "violas": "strings",
    "fiddle": "strings",
    "orchestra": "strings",
    "cello": "cello",
    "cellos": "cello",
    "double bass": "bass",
    "contrabass": "bass",
    "synth pad": "pad",
    "pad": "pad",
    "pads": "pad",
    "drone": "pad",
    "drones": "pad",
    "droning": "pad",
    "bass": "bass",
    "bassline": "bass",
    "bass line": "bass",
    "upright bass": "bass",
    "sub bass": "bass",
    "drums": "drums",
    "drum": "drums",
    "drum kit": "drums",
    "percussion": "drums",
    "kick": "drums",
    "snare": "drums",
    "hi-hat": "drums",
    "hi-hats": "drums",
    "hihat": "drums",
    "cymbals": "drums",
    "taiko": "drums",
    "timpani": "drums",
    "tabla": "drums",
    "bongos": "drums",
    "congas": "drums",
    "shaker": "drums",
    "tambourine": "drums",
    "hand percussion": "drums",
    "steel drums": "drums",
    "flute": "flute",
    "flutes": "flute",
    "woodwind": "flute",
    "woodwinds": "flute",
    "whistle": "flute",
    "piccolo": "flute",
    "recorder": "flute",
    "ocarina": "flute",
    "pan flute": "flute",
    "clarinet": "flute",
    "oboe": "flute",
    "bassoon": "flute",
    "saxophone": "flute",
    "sax": "flute",
    "harmonica": "flute",
    "guitar": "guitar",
    "guitars": "guitar",
    "acoustic guitar": "guitar",
    "electric guitar": "guitar",
    "lute": "guitar",
    "mandolin": "guitar",
    "banjo": "guitar",
    "ukulele": "guitar",
    "oud": "guitar",
    "sitar": "guitar",
    "koto": "guitar",
    "choir": "choir",
    "choral": "choir",
    "voices": "choir",
    "vocals": "choir",
    "vocal": "choir",
    "chant": "choir",
    "chanting": "choir",
    "humming": "choir",
    "brass": "brass",
    "horn": "brass",
    "horns": "brass",
    "french horn": "brass",
    "trumpet": "brass",
    "trumpets": "brass",
    "trombone": "brass",
    "trombones": "brass",
    "tuba": "brass",
    "fanfare": "brass",
    "bells": "bells",
    "bell": "bells",
    "chimes": "bells",
    "chime": "bells",
    "glockenspiel": "bells",
    "celesta": "bells",
    "music box": "bells",
    "xylophone": "bells",
    "vibraphone": "bells",
    "marimba": "bells",
    "kalimba": "bells",
    "mallets": "bells",
    "synth": "synth",
    "synths": "synth",
    "synthesizer": "synth",
    "synthesizers": "synth",
    "arpeggiator": "synth",
    "chiptune": "synth",
    "harp": "harp",
    "harps": "harp",
    "organ": "organ",
    "accordion": "organ",
    "bagpipes": "organ",
}

_TEMPO_WORDS: Final[dict[str, float]] = {
    "very slow": 56,
    "slow tempo": 68,
    "slow": 68,
    "slowly": 68,
    "largo": 52,
    "adagio": 66,
    "leisurely": 74,
    "unhurried": 72,
    "laid-back": 80,
    "laid back": 80,
    "andante": 84,
    "moderate tempo": 96,
    "moderate": 96,
    "moderately": 96,
    "medium tempo": 98,
    "medium": 98,
    "mid-tempo": 100,
    "midtempo": 100,
    "moderato": 104,
    "walking pace": 92,
    "upbeat": 118,
    "uptempo": 124,
    "up-tempo": 124,
    "lively": 120,
    "brisk": 124,
    "allegro": 132,
    "fast tempo": 136,
    "fast": 136,
    "fast-paced": 140,
    "quick": 132,
    "rapid": 148,
    "driving": 128,
    "very fast": 160,
    "frantic": 160,
    "presto": 168,
    "racing": 152,
}

# mood word -> (energy, tempo hint, mode hint, brightness)
_MOODS: Final[dict[str, tuple[float, float | None, str | None, float | None]]] = {
    "calm": (0.2, 72, None, None),
    "calming": (0.2, 72, None, None),
    "peaceful": (0.2, 74, "major", 0.6),
    "serene": (0.18, 70, "major", 0.6),
    "tranquil": (0.15, 68, None, 0.55),
    "soothing": (0.2, 72, None, 0.5),
    "relaxing": (0.22, 76, None, 0.5),
    "relaxed": (0.25, 80, None, 0.5),
    "meditative": (0.12, 64, None, 0.45),
    "dreamy": (0.2, 72, None, 0.55),
    "ethereal": (0.18, 68, None, 0.6),
    "lullaby": (0.1, 64, "major", 0.5),
    "cozy": (0.25, 80, "major", 0.5),
    "warm": (0.3, None, None, 0.45),
    "gentle": (0.25, None, None, None),
    "mysterious": (0.35, 80, "minor", 0.35),
    "mystical": (0.3, 76, None, 0.5),
    "eerie": (0.3, 72, "minor", 0.25),
    "haunting": (0.3, 70, "minor", 0.3),
    "spooky": (0.35, 84, "minor", 0.25),
    "creepy": (0.35, 76, "minor", 0.2),
    "ominous": (0.45, 76, "minor", 0.15),
    "sinister": (0.5, 84, "minor", 0.15),
    "gloomy": (0.25, 66, "minor", 0.2),
    "sad": (0.2, 66, "minor", 0.35),
    "melancholic": (0.22, 68, "minor", 0.35),
    "melancholy": (0.22, 68, "minor", 0.35),
    "sombre": (0.2, 64, "minor", 0.3),
    "somber": (0.2, 64, "minor", 0.3),
    "sorrowful": (0.18, 62, "minor", 0.3),
    "wistful": (0.25, 72, None, 0.4),
    "nostalgic": (0.3, 78, None, 0.45),
    "lonely": (0.18, 66, "minor", 0.35),
    "solemn": (0.25, 66, "minor", 0.35),
    "sentimental": (0.3, 74, None, 0.45),
    "romantic": (0.3, 76, "major", 0.5),
    "emotional": (0.35, 76, None, 0.45),
    "happy": (0.55, 108, "major", 0.7),
    "cheerful": (0.55, 110, "major", 0.75),
    "joyful": (0.6, 112, "major", 0.75),
    "playful": (0.5, 108, "major", 0.7),
    "whimsical": (0.4, 100, "major", 0.7),
    "uplifting": (0.55, 104, "major", 0.7),
    "hopeful": (0.4, 92, "major", 0.65),
    "bright": (0.5, None, "major", 0.8),
    "sunny": (0.5, 104, "major", 0.8),
    "magical": (0.35, 88, None, 0.65),
    "lively": (0.65, 118, "major", 0.7),
    "spirited": (0.65, 120, None, 0.65),
    "adventurous": (0.6, 112, None, 0.6),
    "majestic": (0.55, 88, "major", 0.6),
    "triumphant": (0.75, 112, "major", 0.7),
    "heroic": (0.75, 116, "major", 0.65),
    "epic": (0.8, 120, None, 0.5),
    "exciting": (0.7, 122, None, 0.6),
    "energetic": (0.75, 124, None, 0.6),
    "hypnotic": (0.45, 100, None, 0.4),
    "tense": (0.7, 112, "minor", 0.3),
    "suspenseful": (0.6, 100, "minor", 0.3),
    "urgent": (0.8, 132, "minor", 0.35),
    "anxious": (0.65, 112, "minor", 0.3),
    "restless": (0.6, 112, None, 0.4),
    "fearful": (0.6, 104, "minor", 0.25),
    "scary": (0.55, 96, "minor", 0.2),
    "menacing": (0.75, 108, "minor", 0.2),
    "dangerous": (0.75, 120, "minor", 0.25),
    "threatening": (0.75, 112, "minor", 0.2),
    "dark": (0.45, None, "minor", 0.15),
    "fiery": (0.8, 126, "minor", 0.4),
    "dramatic": (0.7, 104, "minor", 0.4),
    "powerful": (0.8, None, None, 0.5),
    "intense": (0.85, 128, None, 0.45),
    "aggressive": (0.9, 136, "minor", 0.35),
    "chaotic": (0.9, 140, "minor", 0.3),
    "fierce": (0.9, 136, "minor", 0.35),
    "battle": (0.9, 136, "minor", 0.4),
    "combat": (0.9, 136, "minor", 0.4),
    "action": (0.85, 132, None, 0.5),
}

_DYNAMICS: Final[dict[str, float]] = {
    "very soft": 0.15,
    "very quiet": 0.15,
    "soft": 0.3,
    "softly": 0.3,
    "quiet": 0.25,
    "quietly": 0.25,
    "gentle": 0.35,
    "gently": 0.35,
    "delicate": 0.3,
    "subtle": 0.3,
    "hushed": 0.2,
    "faint": 0.2,
    "mellow": 0.4,
    "calm": 0.35,
    "light": 0.4,
    "moderate volume": 0.5,
    "medium volume": 0.5,
    "loud": 0.8,
    "loudly": 0.8,
    "intense": 0.85,
    "powerful": 0.85,
    "heavy": 0.8,
    "strong": 0.75,
    "bold": 0.75,
    "forceful": 0.85,
    "booming": 0.85,
    "thunderous": 0.9,
    "full": 0.7,
    "big": 0.75,
    "very loud": 0.95,
    "punchy": 0.75,
    "thumping": 0.75,
}

# genre -> (instruments, energy, tempo hint, space)
_GENRES: Final[dict[str, tuple[tuple[str, ...], float | None, float | None, float | None]]] = {
    "ambient": (("pad", "bells", "piano"), 0.15, 70, 0.85),
    "new age": (("pad", "bells", "flute"), 0.15, 70, 0.8),
    "drone": (("pad", "cello"), 0.1, 60, 0.85),
    "minimalist": (("piano", "bells"), 0.25, 84, 0.55),
    "lullaby": (("bells", "harp", "pad"), 0.1, 64, 0.6),
    "meditation": (("pad", "bells"), 0.1, 60, 0.85),
    "classical": (("piano", "strings"), 0.4, 92, 0.5),
    "baroque": (("piano", "strings"), 0.45, 100, 0.4),
    "chamber": (("strings", "cello", "piano"), 0.3, 84, 0.45),
    "orchestral": (("strings", "brass", "cello"), 0.6, 96, 0.6),
    "cinematic": (("strings", "brass", "choir", "cello"), 0.6, 92, 0.7),
    "soundtrack": (("strings", "piano", "pad"), 0.5, 92, 0.6),
    "film score": (("strings", "brass", "piano"), 0.55, 92, 0.65),
    "symphonic": (("strings", "brass", "cello"), 0.65, 100, 0.6),
    "choral": (("choir", "organ"), 0.3, 72, 0.75),
    "gospel": (("choir", "organ", "piano"), 0.5, 88, 0.5),
    "folk": (("guitar", "flute", "strings"), 0.4, 96, 0.35),
    "celtic": (("flute", "harp", "guitar"), 0.5, 108, 0.4),
    "medieval": (("flute", "guitar", "harp"), 0.4, 96, 0.45),
    "country": (("guitar", "bass", "drums"), 0.5, 104, 0.3),
    "acoustic": (("guitar", "piano"), None, None, 0.35),
    "ballad": (("piano", "strings"), 0.25, 72, 0.5),
    "waltz": (("strings", "piano"), 0.4, 96, 0.5),
    "jazz": (("epiano", "bass", "drums"), 0.45, 100, 0.35),
    "lo-fi": (("epiano", "bass", "drums"), 0.35, 80, 0.35),
    "lofi": (("epiano", "bass", "drums"), 0.35, 80, 0.35),
    "chill": (("epiano", "pad", "bass"), 0.3, 84, 0.45),
    "chillhop": (("epiano", "bass", "drums"), 0.35, 84, 0.35),
    "blues": (("guitar", "organ", "bass"), 0.4, 84, 0.35),
    "soul": (("epiano", "bass", "drums"), 0.5, 96, 0.35),
    "funk": (("guitar", "bass", "drums"), 0.65, 108, 0.25),
    "pop": (("piano", "synth", "bass", "drums"), 0.55, 112, 0.4),
    "rock": (("guitar", "bass", "drums"), 0.75, 124, 0.35),
    "indie": (("guitar", "bass", "drums"), 0.5, 108, 0.4),
    "punk": (("guitar", "bass", "drums"), 0.9, 160, 0.25),
    "metal": (("guitar", "bass", "drums"), 0.95, 150, 0.3),
    "electronic": (("synth", "pad", "bass", "drums"), 0.6, 120, 0.45),
    "synthwave": (("synth", "pad", "bass", "drums"), 0.6, 108, 0.5),
    "techno": (("synth", "bass", "drums"), 0.8, 128, 0.4),
    "house": (("synth", "pad", "bass", "drums"), 0.7, 122, 0.4),
    "trance": (("synth", "pad", "bass", "drums"), 0.75, 136, 0.55),
    "edm": (("synth", "bass", "drums"), 0.85, 128, 0.4),
    "industrial": (("synth", "bass", "drums"), 0.85, 120, 0.4),
    "dubstep": (("synth", "bass", "drums"), 0.9, 140, 0.4),
    "chiptune": (("synth", "bass", "drums"), 0.65, 132, 0.2),
    "video game": (("synth", "bass", "drums"), 0.6, 120, 0.35),
    "8-bit": (("synth", "bass", "drums"), 0.65, 132, 0.2),
    "retro": (("synth", "bass"), 0.55, 112, 0.35),
    "hip-hop": (("epiano", "bass", "drums"), 0.6, 90, 0.3),
    "reggae": (("guitar", "organ", "bass", "drums"), 0.5, 80, 0.35),
    "latin": (("guitar", "bass", "drums"), 0.65, 112, 0.35),
    "world": (("flute", "guitar", "drums"), 0.45, 96, 0.45),
    "tribal": (("drums", "flute", "pad"), 0.7, 108, 0.45),
    "march": (("brass", "drums"), 0.7, 112, 0.4),
    "opera": (("choir", "strings"), 0.6, 88, 0.6),
    "experimental": (("pad", "synth", "bells"), 0.4, 88, 0.7),
    "horror": (("pad", "cello", "bells"), 0.4, 72, 0.8),
    "fantasy": (("strings", "harp", "flute"), 0.45, 92, 0.6),
}

_RHYTHM_WORDS: Final = (
    "rhythm",
    "rhythmic",
    "rhythmically",
    "beat",
    "beats",
    "groove",
    "grooves",
    "groovy",
    "pulse",
    "pulsing",
    "pulsating",
    "percussive",
    "backbeat",
    "four on the floor",
    "four-on-the-floor",
    "dance",
    "danceable",
    "marching",
    "syncopated",
    "driving",
    "stomping",
    "thumping",
    "steady rhythm",
)
_SPACE_WORDS: Final[dict[str, float]] = {
    "spacious": 0.85,
    "vast": 0.85,
    "cavernous": 0.95,
    "cathedral": 0.95,
    "hall": 0.75,
    "reverberant": 0.8,
    "reverb": 0.7,
    "echoing": 0.8,
    "echo": 0.75,
    "distant": 0.8,
    "atmospheric": 0.75,
    "airy": 0.7,
    "wide": 0.65,
    "ethereal": 0.85,
    "dreamy": 0.7,
    "intimate": 0.2,
    "dry": 0.1,
    "close": 0.25,
    "tight": 0.2,
}
_MODES: Final = ("major", "minor", "dorian", "phrygian", "lydian", "mixolydian", "aeolian", "ionian")
_NEGATIONS: Final = ("no", "without", "not", "lacking", "minus", "sans", "free of", "absence of", "zero")
_NOTE_PC: Final[dict[str, int]] = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}

_BPM_RE = re.compile(
    r"(\d{2,3}(?:\.\d+)?)\s*(?:-\s*\d{2,3}\s*)?(?:bpm|beats per minute|beats a minute)\b", re.I
)
_KEY_RE = re.compile(
    r"\b(?:key of\s+)?([A-Ga-g])\s*(#|♯|-sharp|\s+sharp|b|♭|-flat|\s+flat)?\s*"
    r"(major|minor|maj|min|dorian|phrygian|lydian|mixolydian|aeolian|ionian|m)?\b"
)
_WORD_RE = re.compile(r"[a-z0-9][a-z0-9\-']*")


class MusicSpec(Struct, frozen=True, kw_only=True):
    """What a description asks for. ``None`` means "not said": keep the anchor's value."""

    tempo: float | None = None
    """From an explicit BPM or a tempo word."""
    tempo_hint: float | None = None
    """Suggested by moods or a genre (weaker than ``tempo``)."""
    tonic: int | None = None
    """Pitch class 0..11 of an explicitly named key."""
    mode: str | None = None
    """A named mode: major, minor, dorian, phrygian, lydian, mixolydian."""
    mode_hint: str | None = None
    """major/minor suggested by mood words (dark, bright, sad, happy...)."""
    meter: int | None = None
    instruments: tuple[str, ...] = ()
    """Canonical instruments in order of mention (genre defaults appended when few were named)."""
    named_instruments: tuple[str, ...] = ()
    """Only the instruments the description names itself."""
    melody: str | None = None
    """The instrument the description puts on the melody ("flute melody", "lead guitar")."""
    excluded: tuple[str, ...] = ()
    drums: bool | None = None
    """True: rhythm asked for; False: refused ("no drums"); None: not said."""
    dynamics: float | None = None
    energy: float | None = None
    brightness: float | None = None
    space: float | None = None
    solo: bool = False
    sevenths: bool = False
    pentatonic: bool = False
    arc: float = 0.0
    """+1 building / crescendo, -1 fading / diminuendo, 0 steady."""
    styles: tuple[str, ...] = ()
    """Playing-style words near instruments: arpeggiated, staccato, sustained, plucked, pizzicato..."""
    genre: str | None = None


def _phrase_hits(text: str, table: dict[str, object]) -> list[tuple[int, str]]:
    """(position, phrase) for every phrase of ``table`` found as whole words, longest first,
    without overlaps."""
    hits: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for phrase in sorted(table, key=len, reverse=True):
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            hits.append((s, phrase))
    hits.sort()
    return hits


def _negated(text: str, pos: int) -> bool:
    before = text[max(0, pos - 24) : pos]
    words = _WORD_RE.findall(before)[-3:]
    joined = " ".join(words)
    return any(w in _NEGATIONS for w in words) or any(n in joined for n in ("free of", "absence of"))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def parse_description(description: str) -> MusicSpec:
    """Parse a music description. Never raises; odd input gives a neutral spec."""
    raw = str(description or "")[:2000]
    text = raw.lower().replace("’", "'")
    text = re.sub(r"\s+", " ", text)
    words = set(_WORD_RE.findall(text))

    tempo: float | None = None
    m = _BPM_RE.search(text)
    if m:
        tempo = min(200.0, max(40.0, float(m.group(1))))
    else:
        tempo_hits = [p for _, p in _phrase_hits(text, _TEMPO_WORDS)]  # type: ignore[arg-type]
        if tempo_hits:
            tempo = _TEMPO_WORDS[tempo_hits[0]]

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
        for name in _MODES:
            if re.search(rf"\b{name}\b", text):
                mode = {"aeolian": "minor", "ionian": "major"}.get(name, name)
                break

    meter = None
    if "waltz" in words or re.search(r"\b(3/4|6/8|three-four|triple meter|triple time)\b", text):
        meter = 3
    elif re.search(r"\b(4/4|common time|four-four)\b", text):
        meter = 4

    # Instruments, in order of mention, with negation.
    instruments: list[str] = []
    excluded: list[str] = []
    for pos, phrase in _phrase_hits(text, _INSTRUMENT_WORDS):  # type: ignore[arg-type]
        name = _INSTRUMENT_WORDS[phrase]
        if _negated(text, pos):
            if name not in excluded:
                excluded.append(name)
        elif name not in instruments:
            instruments.append(name)
    if re.search(r"\b(no|without) (vocals?|voices?|singing|singers?)\b", text) or "instrumental" in words:
        excluded.append("choir")
        instruments = [i for i in instruments if i != "choir"]
    if "electronic" in words and not instruments:
        instruments.append("synth")
    instruments = [i for i in instruments if i not in excluded]

    melody = None
    mm = re.search(r"\b([a-z\-]+(?: [a-z\-]+)?) (?:melody|melodies|lead|solo|tune|theme|line)\b", text)
    mm2 = re.search(
        r"\b(?:melody|lead|solo|tune|theme)s? (?:on|by|from|played by|of) "
        r"(?:an? |the )?([a-z\-]+(?: [a-z\-]+)?)",
        text,
    )
    for cand in (mm, mm2):
        if cand:
            for phrase in (cand.group(1), cand.group(1).split()[-1]):
                if phrase in _INSTRUMENT_WORDS and _INSTRUMENT_WORDS[phrase] not in ("drums", "bass"):
                    melody = _INSTRUMENT_WORDS[phrase]
                    break
        if melody:
            break
    if melody is None:
        lm = re.search(r"\blead (\w+)", text)
        if lm and lm.group(1) in _INSTRUMENT_WORDS:
            melody = _INSTRUMENT_WORDS[lm.group(1)]

    # Rhythm / drums.
    drums: bool | None = None
    if "drums" in excluded or re.search(r"\b(no|without) (rhythm|beat|beats|percussion|drums?)\b", text):
        drums = False
    elif "drums" in instruments or any(
        re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", text) for w in _RHYTHM_WORDS
    ):
        drums = True
    if re.search(r"\b(beatless|drumless|arrhythmic|free time|rubato|no rhythm)\b", text):
        drums = False

    energies: list[float] = []
    tempo_hints: list[float] = []
    mode_hints: list[str] = []
    bright: list[float] = []
    for w in words:
        if w in _MOODS:
            e, t, mh, b = _MOODS[w]
            energies.append(e)
            if t is not None:
                tempo_hints.append(t)
            if mh is not None:
                mode_hints.append(mh)
            if b is not None:
                bright.append(b)

    dyn_hits = [p for _, p in _phrase_hits(text, _DYNAMICS)]  # type: ignore[arg-type]
    dynamics = _mean([_DYNAMICS[p] for p in dyn_hits])

    genre = None
    genre_space: float | None = None
    for pos, g in _phrase_hits(text, _GENRES):  # type: ignore[arg-type]
        if _negated(text, pos):
            continue
        genre = g
        _, g_energy, g_tempo, genre_space = _GENRES[g]
        if g_energy is not None:
            energies.append(g_energy)
        if g_tempo is not None:
            tempo_hints.append(g_tempo)
        break

    named = tuple(instruments)
    if genre is not None and len(instruments) < 2:
        for inst in _GENRES[genre][0]:
            if inst not in instruments and inst not in excluded and not (inst == "drums" and drums is False):
                instruments.append(inst)
        if "drums" in _GENRES[genre][0] and drums is None and "drums" not in excluded:
            drums = True

    space_vals = [v for w, v in _SPACE_WORDS.items() if re.search(rf"\b{w}\b", text)]
    space = _mean(space_vals) if space_vals else genre_space

    mode_hint = None
    if mode_hints:
        mode_hint = max(set(mode_hints), key=lambda h: (mode_hints.count(h), h == "minor"))
    if "dark" in words and "bright" not in words:
        mode_hint = "minor"

    if tempo is not None:
        energies.append(min(1.0, max(0.0, (tempo - 60) / 90)))
    if dynamics is not None:
        energies.append(dynamics)
    energy = _mean(energies)

    arc = 0.0
    if re.search(r"\b(building|builds|crescendo|swelling|rising|growing)\b", text):
        arc = 1.0
    elif re.search(r"\b(fading|fades|diminuendo|receding|dying away|winding down)\b", text):
        arc = -1.0

    styles = tuple(
        s
        for s in (
            "arpeggiated",
            "staccato",
            "sustained",
            "plucked",
            "pizzicato",
            "strummed",
            "legato",
            "sparse",
            "syncopated",
            "repetitive",
            "flowing",
            "tremolo",
            "swing",
            "swung",
        )
        if s in words
    )

    return MusicSpec(
        tempo=tempo,
        tempo_hint=_mean(tempo_hints),
        tonic=tonic,
        mode=mode,
        mode_hint=mode_hint,
        meter=meter,
        instruments=tuple(instruments),
        named_instruments=named,
        melody=melody if melody in instruments else None,
        excluded=tuple(dict.fromkeys(excluded)),
        drums=drums,
        dynamics=dynamics,
        energy=energy,
        brightness=_mean(bright),
        space=space,
        solo=bool(re.search(r"\b(solo|unaccompanied|alone)\b", text)) and len(named) == 1,
        sevenths=bool(
            words
            & {
                "jazz",
                "jazzy",
                "lush",
                "lo-fi",
                "lofi",
                "soul",
                "neo-soul",
                "sophisticated",
                "smooth",
                "chill",
                "chillhop",
                "bossa",
            }
        ),
        pentatonic="pentatonic" in words or genre in ("celtic", "folk", "world", "chiptune"),
        arc=arc,
        styles=styles,
        genre=genre,
    )
