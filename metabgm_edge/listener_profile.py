"""Listener profile: the personalization the paper's title promises.

A small TOML or JSON file::

    name = "calm-explorer"
    prefer_genres = ["ambient", "folk"]
    avoid_genres = ["metal"]
    prefer_instruments = ["piano", "flute"]
    avoid_instruments = ["drums"]
    intensity = 0.3   # 0 gentle .. 1 intense; scales dynamics and tempo

It conditions stage 2 for every text backend: the composer rules read it directly, an LLM gets it
as one line appended to the prompt, and the final description is checked against the avoid lists.
"""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path
from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

from metabgm_edge.errors import MetabgmError

# What a listener who avoids an instrument also means: its players, its ways of playing, its kin.
# (A family name avoided removes all of its terms; any other term only its own word forms.)
FAMILIES: Final[dict[str, tuple[str, ...]]] = {
    "drums": (
        "drum", "drumming", "drummer", "drumbeat", "drum kit", "drumkit", "drumline", "drumroll",
        "percussion", "percussive", "percussionist", "snare", "kick drum", "bass drum", "hi-hat", "hihat",
        "cymbal", "tom-tom", "timpani", "taiko", "tabla", "bongo", "conga", "djembe", "tambourine", "shaker",
        "breakbeat",
    ),
    "strings": (
        "string", "string quartet", "string section", "string ensemble", "string orchestra", "violin",
        "violinist", "viola", "violist", "cello", "cellist", "violoncello", "fiddle", "fiddler",
        "double bass", "contrabass", "pizzicato", "bowed",
    ),
    "violin": ("violinist", "fiddle", "fiddler"),
    "cello": ("cellist", "violoncello"),
    "piano": (
        "pianist", "grand piano", "electric piano", "upright piano", "e-piano", "rhodes", "keys", "keyboard",
    ),
    "guitar": ("guitarist", "strumming", "strummed", "acoustic guitar", "electric guitar", "riff"),
    "synth": (
        "synthesizer", "synthesiser", "synthesized", "synthy", "synth pad", "synth lead", "arpeggiator",
    ),
    "brass": (
        "trumpet", "trumpeter", "horn", "french horn", "trombone", "trombonist", "tuba", "bugle", "cornet",
        "flugelhorn", "fanfare",
    ),
    "choir": (
        "choral", "chorus", "chant", "chanting", "vocal", "vocalist", "voice", "singer", "singing", "sung",
        "hum",
    ),
    "vocals": ("vocal", "vocalist", "voice", "singer", "singing", "sung", "choir", "choral", "chant", "rap"),
    "bells": ("bell", "chime", "glockenspiel", "celesta", "music box", "tubular bells", "carillon"),
    "flute": ("flutist", "flautist", "piccolo", "recorder", "pan flute", "panpipe", "whistle"),
    "bass": ("bassline", "bass line", "bassist", "sub-bass", "sub bass", "upright bass", "bass guitar"),
    "organ": ("organist", "hammond", "pipe organ"),
    "harp": ("harpist",),
    "pad": ("synth pad", "ambient pad"),
}  # fmt: skip
SAME: Final[dict[str, str]] = {
    "percussion": "drums", "drum": "drums", "drumming": "drums", "string": "strings", "violins": "violin",
    "singing": "vocals", "voice": "vocals", "voices": "vocals", "vocal": "vocals", "singer": "vocals",
    "synthesizer": "synth", "synthesiser": "synth", "synths": "synth", "keys": "piano", "horns": "brass",
    "chimes": "bells", "bell": "bells", "choirs": "choir",
}  # fmt: skip
"""Avoided words that name a family by another word."""
AUDIO_NAMES: Final = frozenset(
    {"drums", "strings", "cello", "piano", "guitar", "synth", "brass", "choir", "bells", "flute", "bass",
     "organ", "harp", "pad", "vocals"}
)  # fmt: skip
"""Families an audio backend is told to leave out by name ("without drums")."""

Word = Annotated[str, Meta(min_length=1, max_length=32)]
Words = Annotated[list[Word], Meta(max_length=16)]


class Profile(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: str = "default"
    prefer_genres: Words = msgspec.field(default_factory=list)
    avoid_genres: Words = msgspec.field(default_factory=list)
    prefer_instruments: Words = msgspec.field(default_factory=list)
    avoid_instruments: Words = msgspec.field(default_factory=list)
    intensity: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_PROFILE

    def avoided(self) -> list[str]:
        """Every term the listener avoids: the words given, and for an instrument its family's
        terms (avoiding "drums" also avoids "drumming", "drummer", "percussion"; "strings" also
        "string quartet", "violin")."""
        return list(_expanded(tuple(w.lower() for w in self.avoid_genres), tuple(
            w.lower() for w in self.avoid_instruments)))  # fmt: skip

    def avoided_families(self) -> list[str]:
        """The instrument families the listener avoids, by the names audio backends read."""
        out: list[str] = []
        for word in self.avoid_instruments:
            family = _family(word)
            if family in AUDIO_NAMES and family not in out:
                out.append(family)
            if family == "strings" and "cello" not in out:
                out.append("cello")  # a string instrument the synthesizer plays on its own
        return out

    def matcher(self) -> re.Pattern[str] | None:
        """A pattern that finds any avoided term in a text, in any of its word forms."""
        return _matcher(tuple(self.avoided()))

    def audio_description(self, description: str) -> str:
        """``description`` as the audio backend should read it: the avoided instrument families
        named as left out ("... Without drums, without strings."), so that a backend that adds
        instruments of its own accord (a genre's drums, a description's synonym) leaves them out."""
        families = self.avoided_families()
        if not families:
            return description
        return f"{description.rstrip()} " + ", ".join(f"without {f}" for f in families).capitalize() + "."

    def prompt_line(self) -> str:
        """One sentence for an LLM's stage-2 prompt; empty for the default profile."""
        if self.is_default:
            return ""
        parts: list[str] = []
        if self.prefer_genres:
            parts.append("prefers " + ", ".join(self.prefer_genres))
        if self.prefer_instruments:
            parts.append("likes " + ", ".join(self.prefer_instruments))
        avoid = [*self.avoid_genres, *self.avoid_instruments]
        if avoid:
            parts.append("never use " + ", ".join(avoid))
        level = "gentle" if self.intensity < 0.34 else "intense" if self.intensity > 0.66 else "moderate"
        parts.append(f"wants {level} intensity")
        return "The listener " + "; ".join(parts) + "."


DEFAULT_PROFILE = Profile()


def _stem(word: str) -> str:
    word = " ".join(word.lower().replace("_", " ").split())
    if word in SAME:
        return SAME[word]
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("es", "e"), ("s", "")):
        if len(word) > 4 and word.endswith(suffix) and not word.endswith(("ss", "us", "is")):
            candidate = word[: -len(suffix)] + keep
            if candidate in FAMILIES or candidate in SAME:
                return SAME.get(candidate, candidate)
    return word


def _family(word: str) -> str:
    stem = _stem(word)
    if stem in FAMILIES:
        return stem
    if stem + "s" in FAMILIES:
        return stem + "s"
    return stem


@functools.cache
def _expanded(genres: tuple[str, ...], instruments: tuple[str, ...]) -> tuple[str, ...]:
    terms: list[str] = []
    for word in genres:
        terms.append(word)
    for word in instruments:
        family = _family(word)
        terms.append(word)
        if family in FAMILIES:
            terms += [family, *FAMILIES[family]]
    return tuple(dict.fromkeys(t for t in terms if t.strip()))


def forms(term: str) -> str:
    """A regular expression for ``term`` in its word forms: plural, -ing / -er / -ist (with a doubled
    final consonant), and any spacing or hyphen between the words of a phrase."""
    words = re.findall(r"[a-z0-9#+]+", term.lower())
    if not words:
        return ""
    *head, last = words
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    base = re.escape(last)
    endings = r"(?:s|es|ies|ing|ings|ed|er|ers|ist|ists|beats?)?"
    double = re.escape(last[-1]) if last[-1:].isalpha() and last[-1] not in "aeiouy" else ""
    tail = rf"{base}(?:{double}(?:ing|er|ers))?{endings}" if double else rf"{base}{endings}"
    if last.endswith("y"):
        tail = rf"(?:{tail}|{re.escape(last[:-1])}ies)"
    sep = r"[\s\-]*"
    body = sep.join([*(re.escape(w) for w in head), tail])
    return rf"(?<![a-z0-9]){body}(?![a-z0-9])"


@functools.cache
def _matcher(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    patterns = [p for p in (forms(t) for t in sorted(terms, key=len, reverse=True)) if p]
    return re.compile("|".join(patterns), re.IGNORECASE) if patterns else None


def load_profile(path: str | Path | None) -> Profile:
    if path is None:
        return DEFAULT_PROFILE
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetabgmError(f"cannot read profile {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix != ".json" else msgspec.json.decode(raw)
        return msgspec.convert(data, Profile)
    except (tomllib.TOMLDecodeError, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MetabgmError(f"invalid profile {path}: {exc}") from None
