"""Reverse generation (the paper's Section III-A): a musician's caption -> a scene it would score.

The matching is rule-based and documented here, so the composer can be the teacher:

1. :func:`features` reads the caption's tempo (slow / medium / fast, or BPM), moods, genre and
   instruments (:mod:`.captions`).
2. Each :data:`ARCHETYPES` entry is a kind of scene (a peaceful day in the woods, a night alone,
   a storm, a cave, a fight, the Nether, the End, snow, the sea, desert heat, a jungle, a mountain
   vista, a haunted wood) with the words that suit it and the tempi it takes. A caption scores one
   point per matching word (two for a mood, since mood decides a scene most) and one for a
   matching tempo; the best archetype wins, ties broken by a seeded draw; a caption that matches
   none gets a peaceful day.
3. A scene of that archetype is drawn from the scenario grid (:mod:`.scenes`) under its
   constraints, from the caption's own split, so caption and scene are never in two splits.

The teacher then writes the scene's narrative: the stage-1 request carries the matched scene's
characterized data (what the composer reads) and a prompt with the caption (what an LLM teacher
reads, ``prompts/reverse.txt``), so an LLM can fit its story to the music. The pair's output is
the caption condensed to at most 20 words (:func:`.captions.condense`); its references for
``eval`` are the caption's sentences.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Final

from metabgm_edge.dataset.captions import Caption, MusicWords, read_music
from metabgm_edge.dataset.scenes import Constraints

_NIGHT = ("night", "dusk")
_SURFACE_CALM = (
    "plains",
    "sunflower_plains",
    "forest",
    "birch_forest",
    "flower_forest",
    "meadow",
    "cherry_grove",
)


@dataclass(frozen=True)
class Archetype:
    name: str
    words: frozenset[str]
    tempi: frozenset[str]
    """slow / medium / fast: the tempi that suit it."""
    want: Constraints


def _a(name: str, words: str, tempi: str, want: Constraints) -> Archetype:
    return Archetype(name, frozenset(words.split()), frozenset(tempi.split()), want)


ARCHETYPES: Final[tuple[Archetype, ...]] = (
    _a("peaceful_day", "calm calming relaxing relaxed soothing peaceful gentle happy cheerful warm cozy "
       "folk acoustic country pastoral sunny bright lullaby guitar flute harp", "slow medium",
       Constraints(biomes=_SURFACE_CALM, phases=("day", "dawn"), weathers=("clear",), hostiles=("none",))),
    _a("lively_day", "happy joyful cheerful playful lively energetic spirited uplifting exciting fun "
       "pop funk reggae latin dance groovy funky upbeat whimsical ukulele banjo", "medium fast",
       Constraints(biomes=("plains", "sunflower_plains", "savanna", "beach", "flower_forest", "meadow"),
                   phases=("day",), weathers=("clear",), hostiles=("none",),
                   moves=("walking", "running", "riding"))),
    _a("night_alone", "sad melancholic melancholy lonely nostalgic wistful sentimental emotional romantic "
       "dreamy tender ballad piano soft", "slow medium",
       Constraints(biomes=("plains", "forest", "taiga", "birch_forest", "meadow", "river"), phases=_NIGHT,
                   weathers=("clear",), hostiles=("none", "far"))),
    _a("storm", "dramatic tense sombre somber gloomy melancholic brooding stormy intense suspenseful "
       "cinematic strings cello timpani", "medium slow",
       Constraints(biomes=("taiga", "forest", "dark_forest", "plains", "swamp", "windswept_hills"),
                   weathers=("rain", "thunder"), hostiles=("none", "far"))),
    _a("cave", "eerie mysterious suspenseful haunting dark ominous tense creepy ambient drone "
       "experimental minimalist echoing reverberant", "slow",
       Constraints(biomes=("dripstone_caves", "lush_caves", "deep_dark"), hostiles=("none", "far"))),
    _a("combat", "aggressive intense energetic powerful heavy distorted fast urgent chaotic fierce "
       "metal rock punk dubstep industrial drums epic battle", "fast",
       Constraints(phases=("night", "dusk"), hostiles=("close", "attacked"),
                   biomes=("plains", "forest", "taiga", "desert", "snowy_plains", "swamp", "dark_forest"))),
    _a("nether", "dark sinister menacing ominous heavy fiery dramatic intense industrial hellish "
       "doom organ choir brass", "slow medium",
       Constraints(biomes=("nether_wastes", "crimson_forest", "warped_forest", "soul_sand_valley",
                           "basalt_deltas"))),
    _a("the_end", "ethereal mystical spacey otherworldly hypnotic trance electronic synth ambient "
       "meditative cosmic futuristic techno", "slow medium",
       Constraints(biomes=("the_end", "end_highlands"))),
    _a("snow", "serene tranquil peaceful calm lonely wistful ethereal delicate bells piano "
       "glockenspiel music box classical christmas", "slow",
       Constraints(biomes=("snowy_plains", "ice_spikes", "snowy_taiga", "frozen_peaks"), weathers=("snow",),
                   hostiles=("none", "far"))),
    _a("sea", "relaxing dreamy chill smooth soothing reggae tropical lounge calm flowing "
       "saxophone steel drums", "slow medium",
       Constraints(biomes=("ocean", "warm_ocean", "beach", "river", "deep_ocean"), hostiles=("none",))),
    _a("desert_heat", "exotic middle eastern arabic indian world oud sitar tabla darbuka duduk hot "
       "mysterious hypnotic", "medium slow",
       Constraints(biomes=("desert", "badlands", "savanna"), phases=("day", "dusk"),
                   hostiles=("none", "far"))),
    _a("jungle", "tribal percussion bongos congas african world marimba rhythmic adventurous exotic "
       "shaker tambourine", "medium fast",
       Constraints(biomes=("jungle", "bamboo_jungle", "mangrove_swamp"), hostiles=("none", "far"))),
    _a("vista", "epic orchestral cinematic triumphant heroic majestic soaring uplifting inspiring "
       "hopeful adventurous powerful horn brass orchestra", "medium slow",
       Constraints(biomes=("jagged_peaks", "stony_peaks", "frozen_peaks", "windswept_hills", "meadow",
                           "cherry_grove"), phases=("day", "dawn", "dusk"), weathers=("clear",),
                   hostiles=("none",))),
    _a("haunted_wood", "scary spooky creepy sinister horror haunting eerie suspenseful fearful gloomy "
       "dissonant", "slow medium",
       Constraints(biomes=("dark_forest", "swamp", "mangrove_swamp"), phases=_NIGHT,
                   hostiles=("far", "close"))),
)  # fmt: skip
ARCHETYPE_BY_NAME: Final = {a.name: a for a in ARCHETYPES}
DEFAULT_ARCHETYPE: Final = "peaceful_day"


@dataclass(frozen=True)
class Features:
    words: frozenset[str]
    moods: frozenset[str]
    tempo: str | None
    """slow / medium / fast."""


def _tempo_class(music: MusicWords) -> str | None:
    word = music.tempo_word
    if word is None:
        return None
    if word.isdigit():
        bpm = int(word)
        return "slow" if bpm < 85 else "medium" if bpm < 120 else "fast"
    return word if word in ("slow", "medium", "fast") else None


def features(caption: Caption, music: MusicWords | None = None) -> Features:
    music = music or read_music(caption)
    text = " ".join([caption.caption, *caption.aspects]).lower()
    words = frozenset(re.findall(r"[a-z]+", text))
    moods = frozenset(w for m in music.moods for w in m.split())
    return Features(words=words, moods=moods, tempo=_tempo_class(music))


def score(archetype: Archetype, feats: Features) -> int:
    points = len(archetype.words & feats.words) + len(archetype.words & feats.moods)
    if feats.tempo and feats.tempo in archetype.tempi:
        points += 1
    return points


def match(caption: Caption, rng: random.Random, music: MusicWords | None = None) -> Archetype:
    """The archetype that suits the caption best (see the module's rules)."""
    feats = features(caption, music)
    scored = [(score(a, feats), a) for a in ARCHETYPES]
    best = max(s for s, _ in scored)
    if best <= 1:
        return ARCHETYPE_BY_NAME[DEFAULT_ARCHETYPE]
    return rng.choice([a for s, a in scored if s == best])
