"""Musicians' captions in the MusicCaps columns, and what a caption says about the music.

:func:`read_captions` reads a CSV with MusicCaps' columns (``ytid``, ``caption``,
``aspect_list``; the others are kept but not needed). :func:`read_music` pulls out of one caption
what reverse generation needs, all in the musicians' own words: the tempo ("slow tempo", "120
BPM"), the moods, a genre, and up to three instrument phrases ("sustained strings", "mellow piano
melody"), preferring the short phrases of the aspect list. Vocals, recording quality and noise
are left out: a game's background music is played by instruments. :func:`condense` writes those
words as one music description of at most 20 words, the target a model learns to write.
"""

from __future__ import annotations

import ast
import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from metabgm_edge.dataset.pairs import DatasetError
from metabgm_edge.text.musicness import lexicon
from metabgm_edge.text.vocabulary import load_vocabulary

REQUIRED_COLUMNS: Final = ("ytid", "caption", "aspect_list")
MAX_FIELD: Final = 20_000
"""A caption is a paragraph; a longer field is a broken or hostile file."""
MAX_WORDS: Final = 20

_TEMPO = re.compile(
    r"\b(?:(slow|medium|moderate|mid|fast|quick|up|down)[\s-]?tempo|(\d{2,3})\s*bpm|(uptempo|downtempo|upbeat)"
    r"|(slow|fast|quick)[\s-]?(?:paced?|song|piece|track|rhythm|beat|groove))\b",
    re.IGNORECASE,
)
_VOCAL = re.compile(
    r"\b(vocal\w*|voice\w*|sing\w*|singer|rap\w*|choir|chant\w*|lyrics?|spoken|speech)\b", re.I
)
_NOISE = re.compile(
    r"\b(quality|recording|noise|noisy|mono|stereo|audio|amateur|live performance|crowd|clapping|"
    r"sound effects?|background|mix|mixed|poor|static|hiss|no voice|instrumental)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Caption:
    ytid: str
    caption: str
    aspects: tuple[str, ...]

    def sentences(self) -> list[str]:
        """The caption's sentences: the references ``eval`` scores against."""
        return [s.strip() for s in _SENTENCE.split(self.caption) if len(s.split()) >= 3]


@dataclass(frozen=True)
class MusicWords:
    tempo: str | None
    """As a phrase after "at": "a slow tempo", "120 BPM", "an uptempo pace"."""
    tempo_word: str | None
    """slow / medium / fast / bpm number, for matching."""
    moods: tuple[str, ...]
    genre: str | None
    instruments: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return bool(self.tempo and self.moods and self.instruments)


def read_captions(path: str | Path) -> list[Caption]:
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read captions {path}: {exc.strerror or exc}") from None
    out: list[Caption] = []
    with fh:
        try:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetError(
                    f"{path}: not a MusicCaps-style CSV: missing column(s) {', '.join(missing)} "
                    f"(needs {', '.join(REQUIRED_COLUMNS)})"
                )
            seen: set[str] = set()
            for row in reader:
                ytid = (row.get("ytid") or "").strip()
                caption = " ".join((row.get("caption") or "").split())
                if not ytid or not caption or ytid in seen:
                    continue
                if len(caption) > MAX_FIELD or len(row.get("aspect_list") or "") > MAX_FIELD:
                    raise DatasetError(f"{path}:{reader.line_num}: a field is over {MAX_FIELD} characters")
                seen.add(ytid)
                out.append(Caption(ytid, caption, _aspects(row.get("aspect_list") or "")))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: cannot parse the CSV: {exc}") from None
    if not out:
        raise DatasetError(f"{path}: no captions (rows with ytid and caption)")
    return out


def _aspects(text: str) -> tuple[str, ...]:
    """MusicCaps writes the aspect list as a Python list literal; anything else gives ()."""
    try:
        value = ast.literal_eval(text) if text.strip().startswith("[") else []
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return ()
    if not isinstance(value, list):
        return ()
    return tuple(" ".join(str(a).split()).lower() for a in value if isinstance(a, str) and a.strip())[:64]


def _tempo(text: str) -> tuple[str, str] | None:
    """(phrase after "at", slow/medium/fast or the BPM) for the first tempo the text names."""
    found = _TEMPO.search(text)
    if not found:
        return None
    word, bpm, single, paced = found.groups()
    if bpm:
        value = int(bpm)
        return (f"{value} BPM", str(value)) if 30 <= value <= 240 else None
    if single:
        single = single.lower()
        return {
            "uptempo": ("an uptempo pace", "fast"),
            "upbeat": ("an upbeat tempo", "fast"),
            "downtempo": ("a downtempo pace", "slow"),
        }[single]
    if paced:
        norm = "fast" if paced.lower() in ("fast", "quick") else "slow"
        return (f"a {paced.lower()} pace", norm)
    word = word.lower()
    norm = {"mid": "medium", "moderate": "medium", "quick": "fast", "up": "fast", "down": "slow"}.get(
        word, word
    )
    phrase = {"up": "an uptempo pace", "down": "a downtempo pace", "mid": "a mid tempo"}.get(word)
    return (phrase or f"a {word} tempo", norm)


_AFTER_INSTRUMENT: Final = frozenset(
    (
        "melody",
        "melodies",
        "line",
        "lines",
        "lead",
        "chords",
        "chord",
        "harmony",
        "harmonies",
        "riff",
        "riffs",
        "arpeggio",
        "arpeggios",
        "notes",
        "strumming",
        "strums",
        "groove",
        "beat",
        "beats",
        "solo",
        "licks",
        "pattern",
        "patterns",
        "part",
        "parts",
        "rhythm",
    )
)
"""Words a musician puts after an instrument that keep the phrase about how it plays."""


def _instrument_phrases(caption: Caption) -> tuple[str, ...]:
    inst = lexicon()["instrument"]
    found: list[tuple[str, str]] = []  # (phrase, instrument word)

    def add(phrase: str) -> None:
        phrase = " ".join(phrase.split())
        match = inst.search(phrase)
        if (
            not match
            or _VOCAL.search(phrase)
            or _NOISE.search(phrase)
            or re.search(r"[&/]| and |^(?:no|without) ", phrase)
        ):
            return
        if not set(phrase[match.end() :].split()) <= _AFTER_INSTRUMENT:
            return  # "guitar song", "strings sample", "piano backing track"
        base = match.group(0).lower().rstrip("s")
        if any(b == base for _, b in found) or len(phrase.split()) > 4:
            return
        found.append((phrase, base))

    for aspect in caption.aspects:
        add(aspect)
    descriptors = set(load_vocabulary().categories.get("descriptors", {}))
    text = caption.caption.lower()
    for match in inst.finditer(text):  # "a mellow piano melody" -> "mellow piano"
        before = re.findall(r"[a-z-]+", text[: match.start()])[-2:]
        words = [w for w in before if w in descriptors]
        add(" ".join([*words[-1:], match.group(0)]))
    return tuple(p for p, _ in found[:3])


def _genre(caption: Caption) -> str | None:
    """A genre the aspect list names ("ballad", "folk music"), or the caption as "a folk song"."""
    genres = set(load_vocabulary().categories.get("genres", {})) - {"instrumental", "acoustic", "soundtrack"}
    for aspect in caption.aspects:
        name = re.sub(r"\s+(?:music|song|songs|track|piece)$", "", aspect)
        if name in genres:
            return name
    text = caption.caption.lower()
    for genre in sorted(genres, key=len, reverse=True):
        if re.search(rf"\b{re.escape(genre)}\s+(?:song|music|piece|track|tune)\b", text):
            return genre
    return None


def read_music(caption: Caption) -> MusicWords:
    tempo = _tempo(" ; ".join(caption.aspects)) or _tempo(caption.caption)
    mood_re = lexicon()["mood"]
    moods: list[str] = []
    for source in (*caption.aspects, caption.caption.lower()):
        for match in mood_re.finditer(source):
            word = match.group(0).lower()
            if word not in moods:
                moods.append(word)
    genre = _genre(caption)
    return MusicWords(
        tempo=tempo[0] if tempo else None,
        tempo_word=tempo[1] if tempo else None,
        moods=tuple(moods[:2]),
        genre=genre,
        instruments=_instrument_phrases(caption),
    )


TEMPLATES: Final = (
    "{A_moods} {genre} at {tempo}, with {inst}.",
    "{Moods} {genre} at {tempo} featuring {inst}.",
    "This {moods} {genre} moves at {tempo}, with {inst}.",
    "With {inst}, {a_moods} {genre} at {tempo}.",
    "At {tempo}, {a_moods} {genre} for {inst}.",
)


_PIECE_GENRES: Final = frozenset({"ballad", "lullaby", "waltz", "march", "opera"})
"""Genres that name a piece themselves: "a sad ballad", not "a sad ballad piece"."""


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def condense(music: MusicWords, rng: random.Random) -> str | None:
    """One description of at most 20 words from the caption's words; None if it lacks one of tempo,
    mood and instrument."""
    if not music.complete:
        return None
    template = rng.choice(TEMPLATES)
    insts = list(music.instruments)
    moods = list(music.moods)
    genre = "piece"
    if music.genre and len(music.genre.split()) == 1:
        genre = music.genre if music.genre in _PIECE_GENRES else f"{music.genre} piece"
    while True:
        mood_text = " and ".join(moods) if template.startswith("{Moods}") else ", ".join(moods)
        inst = _join(insts)
        article = "an" if mood_text[0] in "aeiou" else "a"
        text = template.format(
            moods=mood_text,
            Moods=mood_text.capitalize(),
            genre=genre,
            tempo=music.tempo,
            inst=inst,
            a_moods=f"{article} {mood_text}",
            A_moods=f"{article.capitalize()} {mood_text}",
        )
        text = " ".join(text.split())
        if len(text.split()) <= MAX_WORDS:
            return text
        if len(insts) > 1:
            insts.pop()
        elif len(moods) > 1:
            moods.pop()
        elif genre != "piece":
            genre = "piece"
        else:
            return None
