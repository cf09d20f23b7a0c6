"""Is a text a music description? The "music-ness" figure of ``metabgm-edge eval``.

A description counts when it names at least a tempo, an instrument and a mood, and ends as a
sentence (it was not cut at the 20-word limit and ends with ``.``, ``!`` or ``?``). The word lists
are the musicians' own: the tempo, instrument and mood terms of the MusicCaps vocabulary table
(``vocabulary.json``), plus a few common words it lacks (listed below), plural forms, and a tempo
given as a number of BPM. Matching is on whole words, case-insensitive.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from metabgm_edge.text.vocabulary import load_vocabulary

EXTRA_TEMPO: Final = (
    "upbeat", "downtempo", "brisk", "leisurely", "quick", "slow-paced", "fast-paced", "andante",
    "allegro", "adagio", "largo", "lento", "presto", "moderato", "tempo",
)  # fmt: skip
"""Words the vocabulary table lacks. Dynamics (soft, gentle, loud) are not moods. "tempo" alone
counts: "a steady tempo", "the tempo rises"."""
EXTRA_INSTRUMENTS: Final = (
    "drum", "percussion", "orchestra", "ensemble", "keys", "electric piano", "violins", "woodwinds",
    "horns", "chimes", "kalimba", "celesta", "koto", "guitars", "bass guitar", "strings",
)  # fmt: skip
EXTRA_MOODS: Final = (
    "groovy", "chill", "soulful", "melancholy", "somber", "moody", "tender", "mournful", "tense",
    "anxious", "sorrowful", "joyous", "festive", "passionate", "funky",
)  # fmt: skip
BPM: Final = re.compile(r"\b\d{2,3}\s*bpm\b", re.IGNORECASE)


@dataclass(frozen=True)
class Musicness:
    tempo: bool
    instrument: bool
    mood: bool
    sentence: bool

    @property
    def ok(self) -> bool:
        return self.tempo and self.instrument and self.mood and self.sentence


def _pattern(terms: set[str]) -> re.Pattern[str]:
    alternatives = sorted({re.escape(t).replace(r"\ ", r"[\s-]+") for t in terms}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")(?:s|es)?\b", re.IGNORECASE)


@functools.cache
def lexicon() -> dict[str, re.Pattern[str]]:
    vocab = load_vocabulary().categories
    return {
        "tempo": _pattern(set(vocab.get("tempo", {})) | set(EXTRA_TEMPO)),
        "instrument": _pattern(set(vocab.get("instruments", {})) | set(EXTRA_INSTRUMENTS)),
        "mood": _pattern(set(vocab.get("moods", {})) | set(EXTRA_MOODS)),
    }


def names_tempo(text: str) -> bool:
    return bool(BPM.search(text) or lexicon()["tempo"].search(text))


def names_instrument(text: str) -> bool:
    return bool(lexicon()["instrument"].search(text))


def names_mood(text: str) -> bool:
    return bool(lexicon()["mood"].search(text))


def ends_as_sentence(text: str, *, cut: bool = False) -> bool:
    """Ends with . ! or ? (after closing quotes) and was not cut at the word limit."""
    return not cut and text.rstrip().rstrip("\"')]").endswith((".", "!", "?"))


def musicness(text: str, *, cut: bool = False) -> Musicness:
    return Musicness(
        tempo=names_tempo(text),
        instrument=names_instrument(text),
        mood=names_mood(text),
        sentence=ends_as_sentence(text, cut=cut),
    )
