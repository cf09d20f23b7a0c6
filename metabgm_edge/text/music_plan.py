"""Composer rules: from a scene to a musical plan (tempo, key, instruments, dynamics, mood, genre).

Rules are layered. The setting (biome family, or cave, nether, end) gives a base: tempo, energy,
how minor it leans, instruments with the descriptors that suit them, moods and genres. Then time
of day, weather, temperature, movement and status flags shift it; in combat a combat layer
dominates (drums, staccato strings, fast tempo, minor, loud) and the setting only colours it;
low health makes it urgent. Last, the listener's profile scales tempo and dynamics, removes what
they avoid and brings in what they prefer.

Every word comes from the MusicCaps-derived vocabulary (see :mod:`.vocabulary`). Choices among
close candidates are drawn with a seeded generator, so the same scene and seed give the same plan
and another seed gives a slightly different arrangement of the same character.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final

from metabgm_edge import music_words as mw
from metabgm_edge.listener_profile import Profile
from metabgm_edge.text.scene_view import SceneView
from metabgm_edge.text.vocabulary import Vocabulary

log = logging.getLogger(__name__)

# The words the composer writes for tempo and dynamics, and what they mean, are the shared
# vocabulary's (metabgm_edge.music_words), the one the synthesizer reads. Every other word the
# synthesizer reads as tempo or dynamics is never used as a descriptor or mood, so each
# description carries exactly one of each.
TEMPO_WORDS = mw.WRITTEN_TEMPO
DYNAMICS_WORDS = mw.WRITTEN_DYNAMICS
tempo_word = mw.tempo_word
dynamics_word = mw.dynamics_word
_RESERVED = frozenset(
    {*TEMPO_WORDS, *DYNAMICS_WORDS, "quiet", "powerful", "medium"}
    | {w for w, t in mw.TEMPO_WORDS.items() if " " not in w and not t.contextual}
)

SYNTH_INSTRUMENTS = mw.WRITTEN_INSTRUMENTS
# Descriptors that belong to loud, driving music.
_HOT = frozenset({
    "punchy", "aggressive", "distorted", "heavy", "booming", "thumping",
    "buzzy", "fuzzy", "dissonant", "throbbing", "pulsating", "staccato",
})  # fmt: skip
# Descriptors a listener (and the synthesizer) hears as loud or as quiet: never set against the
# description's dynamics word ("gentle ... booming drums"). Their levels are the shared table's.
_LOUD = frozenset(w for w, level in mw.DYNAMICS.items() if level >= 0.6 and " " not in w)
_QUIET = frozenset(w for w, level in mw.DYNAMICS.items() if level <= 0.45 and " " not in w)
MINOR_ROOTS = ("A", "D", "E", "B", "C", "G", "F")
MAJOR_ROOTS = ("C", "G", "D", "F", "A", "E")
# Descriptors for instruments the rules do not know (a listener's preferred "violin").
_GENERIC_CALM = ("mellow", "warm", "delicate", "airy", "sustained", "lilting")
_GENERIC_MID = ("bright", "melodic", "steady", "layered", "wide")
_GENERIC_HOT = ("punchy", "aggressive", "staccato", "heavy", "distorted")
# How energetic a genre is, to choose which of a listener's preferred genres fits the scene.
_GENRE_ENERGY = {name: genre.energy for name, genre in mw.GENRES.items()}

Instruments = dict[str, tuple[float, tuple[str, ...]]]


@dataclass(frozen=True)
class Layer:
    """One rule's contribution, written in the tables below as
    ``Layer(bpm, energy, minor, instruments, moods, genres)``. Instruments: name -> (weight,
    descriptors that suit it here); moods: word -> weight; genres in order of preference."""

    bpm: float = 0.0
    energy: float = 0.0
    minor: float = 0.0
    instruments: Instruments = field(default_factory=dict)
    moods: dict[str, float] = field(default_factory=dict)
    genres: tuple[str, ...] = ()


def _i(**spec: tuple[float, str]) -> Instruments:
    """_i(piano=(2.0, "mellow arpeggiated")) -> {"piano": (2.0, ("mellow", "arpeggiated"))}."""
    return {name: (weight, tuple(words.split())) for name, (weight, words) in spec.items()}


def _m(words: str, weight: float = 1.0) -> dict[str, float]:
    """Mood weights; a negative weight holds a mood back (night is never "cheerful")."""
    return dict.fromkeys(words.split(), weight)


# Moods by meaning (the shared vocabulary's valence and energy): bright ones are held back at
# night, in rain and in a fight; calm ones in storms and fights.
BRIGHT_MOODS = " ".join(sorted(w for w, m in mw.MOODS.items() if m.valence >= 0.6 and " " not in w))
CALM_MOODS = " ".join(
    sorted(w for w, m in mw.MOODS.items() if m.energy <= 0.3 and m.valence >= -0.2 and " " not in w)
)


# Settings: the base of every plan. bpm/energy/minor here are absolute; other layers add.
SETTINGS: dict[str, Layer] = {
    "plains": Layer(
        84,
        0.42,
        0.25,
        _i(
            piano=(2.2, "mellow simple arpeggiated bright"),
            strings=(1.8, "sustained wide warm"),
            guitar=(1.6, "acoustic plucked lilting"),
            flute=(1.2, "breathy airy"),
        ),
        _m("peaceful uplifting hopeful relaxing cheerful"),
        ("folk", "ambient", "orchestral"),
    ),
    "meadow": Layer(
        86,
        0.42,
        0.2,
        _i(
            flute=(2.2, "breathy airy lilting"),
            harp=(1.8, "arpeggiated plucked"),
            guitar=(1.5, "acoustic plucked"),
            strings=(1.2, "sustained warm"),
        ),
        _m("joyful playful peaceful whimsical cheerful"),
        ("folk", "celtic"),
    ),
    "cherry": Layer(
        78,
        0.35,
        0.25,
        _i(
            harp=(2.2, "arpeggiated plucked mellow"),
            piano=(1.9, "mellow delicate"),
            bells=(1.5, "shimmering chiming"),
            strings=(1.1, "sustained lush"),
        ),
        _m("romantic dreamy serene sentimental peaceful"),
        ("ambient", "classical"),
    ),
    "forest": Layer(
        80,
        0.38,
        0.3,
        _i(
            guitar=(2.0, "acoustic plucked arpeggiated"),
            flute=(1.9, "breathy airy lilting"),
            harp=(1.6, "arpeggiated plucked"),
            piano=(1.3, "mellow simple"),
            strings=(1.2, "sustained warm"),
        ),
        _m("peaceful serene calm relaxing dreamy"),
        ("folk", "ambient", "celtic"),
    ),
    "taiga": Layer(
        76,
        0.36,
        0.5,
        _i(
            flute=(2.0, "breathy hollow airy"),
            cello=(1.8, "sustained bowed"),
            guitar=(1.5, "acoustic plucked"),
            strings=(1.3, "sustained wide"),
        ),
        _m("solemn lonely serene wistful calm"),
        ("folk", "ambient"),
    ),
    "jungle": Layer(
        92,
        0.5,
        0.4,
        _i(
            drums=(2.0, "wooden light syncopated percussive"),
            flute=(1.8, "breathy lilting"),
            harp=(1.4, "plucked arpeggiated"),
            pad=(1.2, "warm lush"),
        ),
        _m("playful mysterious lively adventurous exciting"),
        ("world", "tribal", "ambient"),
    ),
    "swamp": Layer(
        74,
        0.34,
        0.65,
        _i(
            cello=(2.0, "low bowed droning"),
            guitar=(1.7, "muted plucked"),
            bass=(1.4, "deep low"),
            pad=(1.2, "dark droning"),
        ),
        _m("eerie gloomy mysterious sombre haunting"),
        ("blues", "ambient", "drone"),
    ),
    "mountain": Layer(
        80,
        0.48,
        0.4,
        _i(
            strings=(2.2, "wide soaring sustained swelling"),
            brass=(1.8, "wide mellow sustained"),
            choir=(1.5, "wide airy"),
            flute=(1.2, "airy breathy"),
        ),
        _m("epic majestic adventurous triumphant solemn"),
        ("cinematic", "orchestral"),
    ),
    "snow": Layer(
        70,
        0.28,
        0.45,
        _i(
            bells=(2.2, "shimmering twinkling glassy delicate"),
            piano=(1.9, "sparse delicate echoing"),
            flute=(1.5, "breathy airy"),
            strings=(1.3, "sustained subtle"),
            harp=(1.1, "arpeggiated"),
        ),
        _m("serene lonely tranquil wistful calm"),
        ("ambient", "minimalist"),
    ),
    "desert": Layer(
        84,
        0.4,
        0.75,
        _i(
            guitar=(2.0, "plucked acoustic"),
            flute=(1.8, "breathy low hollow"),
            drums=(1.5, "wooden light percussive"),
            pad=(1.3, "warm droning"),
            strings=(1.0, "sustained wide"),
        ),
        _m("mysterious hypnotic meditative warm adventurous"),
        ("ambient", "world"),
    ),
    "badlands": Layer(
        86,
        0.44,
        0.45,
        _i(
            guitar=(2.2, "acoustic plucked muted"),
            bass=(1.5, "steady mellow"),
            drums=(1.3, "light steady"),
            flute=(1.1, "breathy hollow"),
        ),
        _m("adventurous lonely warm nostalgic"),
        ("country", "blues", "folk"),
    ),
    "savanna": Layer(
        90,
        0.46,
        0.3,
        _i(
            guitar=(2.0, "acoustic plucked"),
            drums=(1.7, "wooden light percussive"),
            flute=(1.5, "breathy lilting"),
            bass=(1.2, "mellow steady"),
        ),
        _m("warm relaxed happy adventurous"),
        ("world", "folk"),
    ),
    "beach": Layer(
        82,
        0.4,
        0.2,
        _i(
            guitar=(2.1, "acoustic lilting plucked"),
            piano=(1.6, "mellow bright"),
            pad=(1.4, "warm lush"),
            bass=(1.1, "mellow"),
        ),
        _m("relaxing cozy happy calm relaxed"),
        ("ambient", "folk"),
    ),
    "river": Layer(
        78,
        0.36,
        0.3,
        _i(
            harp=(2.0, "arpeggiated flowing"),
            piano=(1.7, "mellow flowing"),
            flute=(1.5, "breathy airy"),
            strings=(1.3, "sustained warm"),
        ),
        _m("calm serene peaceful soothing"),
        ("ambient", "folk"),
    ),
    "ocean": Layer(
        72,
        0.32,
        0.35,
        _i(
            harp=(2.1, "arpeggiated flowing"),
            pad=(2.0, "wide lush airy"),
            strings=(1.5, "sustained flowing wide"),
            bells=(1.2, "shimmering"),
        ),
        _m("dreamy serene tranquil ethereal calm"),
        ("ambient", "new age"),
    ),
    "mushroom": Layer(
        80,
        0.36,
        0.35,
        _i(
            bells=(2.1, "twinkling chiming shimmering"),
            harp=(1.8, "plucked arpeggiated"),
            synth=(1.4, "mellow airy"),
            pad=(1.2, "lush warm"),
        ),
        _m("whimsical dreamy magical playful"),
        ("ambient", "new age"),
    ),
    "cave": Layer(
        64,
        0.24,
        0.8,
        _i(
            pad=(2.1, "droning dark low"),
            cello=(1.8, "low bowed droning"),
            bells=(1.5, "echoing distant"),
            piano=(1.3, "echoing sparse"),
            bass=(1.2, "deep low"),
        ),
        _m("mysterious eerie suspenseful haunting ominous"),
        ("ambient", "drone"),
    ),
    "lush_cave": Layer(
        70,
        0.3,
        0.45,
        _i(
            harp=(2.0, "plucked arpeggiated"),
            bells=(1.8, "echoing shimmering"),
            pad=(1.6, "lush warm"),
            flute=(1.2, "breathy"),
        ),
        _m("dreamy mystical magical mysterious"),
        ("ambient", "new age"),
    ),
    "deep_dark": Layer(
        56,
        0.18,
        0.95,
        _i(
            pad=(2.2, "droning dark low"),
            cello=(1.9, "low droning bowed"),
            bass=(1.6, "deep throbbing"),
            bells=(1.1, "distant echoing"),
        ),
        _m("ominous eerie tense creepy sinister", 1.3),
        ("drone", "ambient"),
    ),
    "nether": Layer(
        94,
        0.58,
        0.95,
        _i(
            choir=(2.0, "haunting dark wide"),
            bass=(1.9, "distorted booming heavy"),
            drums=(1.7, "booming thumping heavy"),
            brass=(1.5, "low dissonant"),
            synth=(1.1, "dark buzzy"),
        ),
        _m("ominous sinister menacing fiery dark scary", 1.2),
        ("industrial", "cinematic", "drone"),
    ),
    "end": Layer(
        70,
        0.34,
        0.6,
        _i(
            synth=(2.0, "airy shimmering"),
            pad=(1.9, "wide airy"),
            bells=(1.6, "glassy distant"),
            choir=(1.3, "airy wide"),
        ),
        _m("ethereal mystical eerie hypnotic", 1.2),
        ("ambient", "experimental"),
    ),
}

# Nether and end sub-biomes colour the dimension's base.
BIOME_COLOURS: dict[str, Layer] = {
    "soul_sand_valley": Layer(
        -8, -0.1, 0, _i(choir=(1.5, "haunting airy")), _m("haunting lonely eerie", 1.5)
    ),
    "warped_forest": Layer(
        -4, -0.05, 0, _i(synth=(1.6, "airy echoing"), pad=(1.0, "dark")), _m("eerie mystical", 1.4)
    ),
    "crimson_forest": Layer(
        4, 0.05, 0, _i(drums=(1.0, "thumping"), brass=(0.8, "dissonant")), _m("fiery menacing", 1.4)
    ),
    "basalt_deltas": Layer(6, 0.08, 0, _i(drums=(1.4, "booming heavy")), _m("chaotic menacing", 1.4)),
    "dark_forest": Layer(-4, -0.04, 0.35, _i(cello=(1.3, "low bowed")), _m("mysterious eerie", 1.4)),
    "birch_forest": Layer(2, 0.03, -0.1, {}, _m("bright cheerful", 1.2)),
    "flower_forest": Layer(2, 0.03, -0.1, _i(harp=(0.8, "plucked")), _m("whimsical playful", 1.3)),
}

TIME: dict[str, Layer] = {
    "dawn": Layer(
        -2,
        -0.04,
        -0.15,
        _i(flute=(0.8, "airy breathy"), piano=(0.6, "delicate")),
        _m("hopeful serene uplifting", 1.3),
    ),
    "day": Layer(0, 0.05, -0.25, _i(guitar=(0.4, "acoustic")), _m("bright cheerful peaceful", 1.1)),
    "dusk": Layer(
        -4,
        -0.06,
        0.1,
        _i(strings=(0.7, "warm sustained"), piano=(0.5, "mellow")),
        _m("nostalgic wistful warm romantic", 1.4),
    ),
    "night": Layer(
        -8,
        -0.13,
        0.4,
        _i(pad=(1.0, "dark airy"), piano=(0.7, "sparse echoing"), bells=(0.5, "distant")),
        _m("mysterious dreamy lonely haunting", 1.6) | _m(BRIGHT_MOODS, -3.0),
    ),
}

WEATHER: dict[str, Layer] = {
    "clear": Layer(),
    "rain": Layer(
        -4,
        -0.03,
        0.5,
        _i(piano=(1.2, "echoing mellow sparse"), pad=(0.8, "warm")),
        _m("melancholic sad wistful sombre", 2.8) | _m(BRIGHT_MOODS, -3.0) | _m("peaceful relaxing", -1.0),
    ),
    "thunder": Layer(
        8,
        0.3,
        0.45,
        _i(
            drums=(1.9, "booming rumbling thumping"),
            bass=(1.2, "deep rumbling"),
            strings=(1.2, "tremolo dissonant"),
        ),
        _m("dramatic ominous tense", 2.2) | _m(CALM_MOODS, -4.0) | _m(BRIGHT_MOODS, -4.0),
        ("cinematic",),
    ),
    "snow": Layer(
        -2, -0.05, 0.05, _i(bells=(1.3, "shimmering twinkling")), _m("serene lonely tranquil", 1.5)
    ),
}

FEEL: dict[str, Layer] = {
    "freezing": Layer(-2, -0.03, 0.05, _i(bells=(0.6, "glassy")), _m("lonely", 0.8)),
    "hot": Layer(2, 0.02, 0.05, {}, _m("hypnotic warm", 0.8)),
}

MOVEMENT: dict[str, Layer] = {
    "still": Layer(-6, -0.06, 0, {}, _m("calm meditative", 0.8)),
    "sneaking": Layer(
        -4, -0.08, 0.15, _i(strings=(1.0, "pizzicato plucked staccato")), _m("suspenseful tense", 1.2)
    ),
    "running": Layer(
        14, 0.16, 0, _i(drums=(1.6, "steady light rhythmic")), _m("energetic adventurous lively", 1.2)
    ),
    "swimming": Layer(
        -4, -0.04, 0, _i(harp=(1.2, "flowing arpeggiated"), pad=(0.8, "lush")), _m("dreamy", 0.9)
    ),
    "falling": Layer(6, 0.15, 0.2, _i(strings=(1.2, "rising tremolo")), _m("tense dramatic", 1.3)),
    "flying": Layer(
        4, 0.1, -0.1, _i(strings=(1.2, "soaring wide"), choir=(0.8, "airy")), _m("uplifting", 1.2)
    ),
    "riding": Layer(8, 0.08, 0, _i(drums=(1.0, "steady")), _m("adventurous", 1.2)),
}
MOVEMENT["sprinting"] = MOVEMENT["running"]

STATUS: dict[str, Layer] = {
    "on_fire": Layer(
        16,
        0.3,
        0.3,
        _i(drums=(1.4, "syncopated thumping")),
        _m("urgent chaotic fiery", 1.8) | _m(CALM_MOODS, -4.0),
    ),
    "in_lava": Layer(
        18,
        0.32,
        0.3,
        _i(drums=(1.4, "thumping"), bass=(1.0, "distorted")),
        _m("urgent chaotic fiery", 2.0) | _m(CALM_MOODS, -4.0),
    ),
    "sleeping": Layer(
        -16,
        -0.25,
        0,
        _i(harp=(1.4, "lilting plucked"), bells=(1.0, "delicate"), piano=(0.8, "delicate")),
        _m("soothing calm dreamy", 2.0),
        ("lullaby",),
    ),
}

COMBAT = Layer(
    44, 0.4, 0.75,
    _i(drums=(3.0, "punchy thumping booming heavy steady"), strings=(2.5, "staccato tremolo dissonant"),
       bass=(2.2, "distorted pulsating heavy booming"), brass=(1.8, "staccato wide dissonant"),
       synth=(0.8, "aggressive pulsating buzzy")),
    _m("tense aggressive dramatic suspenseful epic menacing energetic", 2.0)
    | _m(BRIGHT_MOODS, -10.0) | _m(CALM_MOODS, -10.0),
    ("cinematic", "orchestral"),
)  # fmt: skip
LOW_HEALTH = Layer(
    12,
    0.18,
    0.1,
    _i(bass=(1.0, "throbbing pulsating")),
    _m("urgent", 4.5) | _m("chaotic fearful restless", 3.0),
)
HURT = Layer(5, 0.07, 0.05, {}, _m("tense urgent", 1.5))
HOSTILE_COLOURS: dict[str, Layer] = {
    "creeper": Layer(0, 0, 0, _i(strings=(0.6, "rising tremolo")), _m("suspenseful tense", 1.2)),
    "skeleton": Layer(4, 0, 0, _i(strings=(0.8, "staccato pizzicato")), _m("tense", 0.8)),
    "stray": Layer(4, 0, 0, _i(strings=(0.8, "staccato")), _m("tense", 0.8)),
    "zombie": Layer(0, 0.02, 0, _i(drums=(0.6, "heavy thumping")), _m("menacing", 0.8)),
    "husk": Layer(0, 0.02, 0, _i(drums=(0.6, "heavy")), _m("menacing", 0.8)),
    "drowned": Layer(0, 0, 0, _i(pad=(0.8, "dark")), _m("eerie", 0.8)),
    "spider": Layer(2, 0, 0, _i(strings=(0.8, "pizzicato staccato")), _m("creepy", 1.2)),
    "cave_spider": Layer(2, 0, 0, _i(strings=(0.8, "pizzicato")), _m("creepy", 1.2)),
    "enderman": Layer(0, 0, 0.1, _i(synth=(1.0, "dissonant filtered")), _m("eerie", 1.3)),
    "witch": Layer(0, 0, 0.1, _i(choir=(0.8, "dark")), _m("sinister mysterious", 1.2)),
    "phantom": Layer(0, 0, 0, _i(synth=(0.8, "airy")), _m("eerie", 1.2)),
    "ghast": Layer(0, 0, 0, _i(choir=(1.2, "haunting")), _m("haunting", 1.4)),
    "blaze": Layer(4, 0.03, 0, _i(brass=(0.6, "dissonant")), _m("fiery", 1.4)),
    "piglin": Layer(0, 0.02, 0, _i(brass=(0.8, "low")), _m("menacing", 0.8)),
    "hoglin": Layer(4, 0.04, 0, _i(drums=(0.8, "booming")), _m("aggressive", 1.0)),
    "slime": Layer(0, -0.02, -0.1, _i(bass=(0.6, "syncopated")), _m("playful", 0.8)),
    "pillager": Layer(0, 0.03, 0, _i(drums=(0.8, "steady")), _m("heroic", 1.0)),
    "vindicator": Layer(2, 0.04, 0, _i(brass=(0.8, "staccato")), _m("heroic", 1.0)),
    "ravager": Layer(4, 0.06, 0, _i(drums=(1.0, "booming")), _m("epic", 1.2)),
    "warden": Layer(-10, 0.1, 0.2, _i(bass=(1.6, "deep throbbing"), drums=(1.2, "booming")),
                    _m("ominous", 2.0)),
    "wither": Layer(6, 0.15, 0.1, _i(choir=(1.8, "dark wide"), brass=(1.2, "wide")), _m("epic dark", 2.0)),
    "ender_dragon": Layer(6, 0.15, 0.1, _i(choir=(2.0, "wide airy"), brass=(1.4, "wide")),
                          _m("epic heroic", 2.0)),
    "elder_guardian": Layer(0, 0.1, 0.1, _i(choir=(1.4, "haunting")), _m("epic ominous", 1.6)),
}  # fmt: skip


@dataclass(frozen=True)
class Voice:
    instrument: str
    descriptor: str | None
    preferred: bool = False


@dataclass(frozen=True)
class Plan:
    bpm: int
    tempo: str
    root: str
    mode: str
    dynamics: str
    energy: float
    voices: tuple[Voice, ...]
    moods: tuple[str, ...]
    genre: str | None
    genre_preferred: bool = False

    @property
    def key(self) -> str:
        return f"{self.root} {self.mode}"


_CALM_MOODS: Final = frozenset(
    {"calm", "calming", "cozy", "dreamy", "lonely", "meditative", "melancholic", "nostalgic", "peaceful",
     "relaxed", "relaxing", "sad", "sentimental", "serene", "soothing", "tranquil", "wistful", "gloomy",
     "sombre"}
)  # fmt: skip
"""Moods of low arousal: they contradict loud or intense dynamics."""
_ROUSING_MOODS: Final = frozenset(
    {"aggressive", "chaotic", "energetic", "exciting", "fiery", "intense", "lively", "spirited", "urgent",
     "triumphant", "heroic", "powerful", "restless", "epic"}
)  # fmt: skip
"""Moods of high arousal: they contradict soft or gentle dynamics."""


class Avoid:
    """The profile's avoid list as a matcher: "drums" also rules out "drum" and "drumming"."""

    def __init__(self, terms: list[str]) -> None:
        patterns = []
        for term in terms:
            words = re.findall(r"[a-z0-9#]+", term.lower())
            if not words:
                continue
            last = words[-1]
            if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us")):
                words[-1] = last[:-1]
            body = r"[\s\-]+".join(re.escape(w) for w in words)
            # Terms under three letters match whole words only: avoiding "a" must not block "ambient".
            tail = "" if len(body) >= 3 else r"(?![a-z0-9])"
            patterns.append(rf"(?<![a-z0-9]){body}{tail}")
        self._re = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None

    def __call__(self, text: str | None) -> bool:
        return bool(text) and self._re is not None and self._re.search(text) is not None


def clean_term(term: str) -> str | None:
    """A listener's preferred word, if it is a plain term of at most two words."""
    words = re.findall(r"[a-z0-9][a-z0-9'\-]*", term.lower())
    text = " ".join(words)
    if not words or len(words) > 2 or len(text) > 24 or text != " ".join(term.lower().split()):
        return None
    return text


def _pick(rng: random.Random, weighted: dict[str, float], k: int, jitter: float) -> list[str]:
    """The k best by weight, each weight shaken by up to ``jitter`` (seeded) first."""
    shaken = {name: w + rng.uniform(0.0, jitter) for name, w in sorted(weighted.items())}
    return sorted(shaken, key=lambda name: (-shaken[name], name))[:k]


def _choose(rng: random.Random, weighted: dict[str, float]) -> str | None:
    names = sorted(weighted)
    if not names:
        return None
    return rng.choices(names, weights=[weighted[n] for n in names])[0]


def _layers(view: SceneView) -> list[tuple[Layer, float]]:
    """The rule layers that apply to this scene, each with a strength."""
    if view.dimension in ("nether", "end"):
        setting = view.dimension
    elif view.family in ("deep_dark", "lush_cave"):
        setting = view.family
    elif view.underground:
        setting = "cave"
    else:
        setting = view.family
    base = SETTINGS.get(setting, SETTINGS["plains"])
    layers: list[tuple[Layer, float]] = [(base, 0.45 if view.combat else 1.0)]
    colour = BIOME_COLOURS.get(view.biome_id)
    if colour is not None and not view.underground:
        layers.append((colour, 0.5 if view.combat else 1.0))
    if view.combat:
        layers.append((COMBAT, 1.0))
        ratio = view.health_ratio
        if ratio is not None and ratio < 0.35:
            layers.append((LOW_HEALTH, 1.0))
        elif ratio is not None and ratio < 0.6:
            layers.append((HURT, 1.0))
        for name, _ in view.hostiles[:3]:
            hostile = HOSTILE_COLOURS.get(name.replace(" ", "_"))
            if hostile is not None:
                layers.append((hostile, 1.0))
        extra = min(max(len(view.hostiles) - 1, 0), 4)  # more enemies, faster and louder
        close = view.nearest is not None and view.nearest < 3
        layers.append((Layer(bpm=2 * extra + (4 if close else 0), energy=0.04 * extra), 1.0))
    surface = view.dimension == "overworld" and not view.underground
    if view.phase in TIME and view.dimension == "overworld":  # no day or night in the Nether or the End
        layers.append((TIME[view.phase], 1.0 if surface else 0.35))
    if view.weather in WEATHER and surface:
        layers.append((WEATHER[view.weather], 1.0))
    if view.feel in FEEL and not view.combat:
        layers.append((FEEL[view.feel], 1.0))
    if view.in_water and setting not in ("ocean", "river"):
        layers.append((MOVEMENT["swimming"], 1.0))
    move = view.movement if view.movement in MOVEMENT else None
    for flag in ("sprinting", "sneaking", "flying"):
        if flag in view.flags and move in (None, "walking", "still"):
            move = flag
    if move is not None and move != "swimming":
        layers.append((MOVEMENT[move], 0.5 if view.combat else 1.0))
    for flag, layer in STATUS.items():
        if flag in view.flags:
            layers.append((layer, 1.0))
    if len(view.biomes_visited) > 1:
        layers.append((Layer(2, 0.03, 0, {}, _m("adventurous", 1.0)), 1.0))
    return layers


def plan_music(view: SceneView, profile: Profile, vocab: Vocabulary, rng: random.Random) -> Plan:
    """The musical plan for a scene. ``rng`` (seeded per request) shapes close choices among
    instruments, descriptors, moods and genre. Key and tempo depend on the scene alone, so they hold
    from segment to segment while the scene holds (the scheduler passes a new seed per segment)."""
    setting = "underground" if view.underground else view.family
    steady = random.Random(f"{setting}|{view.biome_id}|{view.dimension}")
    bpm = energy = minor = 0.0
    instruments: dict[str, float] = defaultdict(float)
    descriptors: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    moods: dict[str, float] = defaultdict(float)
    genres: list[str] = []
    for index, (layer, strength) in enumerate(_layers(view)):
        scale = 1.0 if index == 0 else strength
        bpm += layer.bpm * scale
        energy += layer.energy * scale
        minor += layer.minor * scale
        for name, (weight, words) in layer.instruments.items():
            instruments[name] += weight * strength
            for word in words:
                descriptors[name][word] += strength
        for mood, weight in layer.moods.items():
            moods[mood] += weight * strength * (1.5 if index == 0 else 1.0)
        if layer.genres:
            # A strong later rule (combat, storm, sleep) leads; the setting's genres follow.
            genres = [*layer.genres, *genres] if strength >= 0.9 and index > 0 else [*genres, *layer.genres]

    shift = profile.intensity - 0.5
    energy = min(1.0, max(0.0, energy + 0.4 * shift))
    bpm = bpm * (1.0 + 0.3 * shift) + steady.uniform(-3.0, 3.0)
    if not profile.is_default:  # the listener's intensity bounds the music, whatever the scene
        energy = min(0.35 + 0.65 * profile.intensity, max(0.6 * profile.intensity - 0.1, energy))
        bpm = min(78.0 + 90.0 * profile.intensity, max(50.0 + 50.0 * profile.intensity, bpm))
    tempo = round(min(184.0, max(48.0, bpm)))
    mode = "minor" if minor >= 0.5 else "major"
    avoid = Avoid(profile.avoided())
    # A mood the scene holds back ("bright" at night) is not used as a descriptor either.
    held_back = {m for m, w in moods.items() if w < 0}
    descriptors = {n: {w: x for w, x in d.items() if w not in held_back} for n, d in descriptors.items()}
    voices = _voices(profile, instruments, descriptors, energy, avoid, vocab, rng)

    # A mood heard as loud or quiet ("aggressive") is never set against the dynamics word either.
    clash = _LOUD if dynamics_word(energy) in ("soft", "gentle") else _QUIET
    mood_pool = {
        m: w * vocab.weight("moods", m)
        for m, w in moods.items()
        if w > 0 and m not in _RESERVED and m not in clash and vocab.has("moods", m) and not avoid(m)
    }
    # Moods that contradict the dynamics ("loud, wistful and sad", "soft, aggressive") are left out.
    clashing = _CALM_MOODS if energy >= 0.56 else _ROUSING_MOODS if energy < 0.45 else frozenset()
    if not profile.is_default and profile.intensity < 0.34:  # a listener who wants it gentle
        clashing = clashing | _ROUSING_MOODS
    mood_pool = {m: w for m, w in mood_pool.items() if m not in clashing} or mood_pool
    if mood_pool and all(m in clashing for m in mood_pool):  # the scene's moods win: soften or lift
        energy = 0.5
    chosen_moods = tuple(_pick(rng, mood_pool, 2, 0.6)) or ("calm",)
    genre, genre_preferred = _genre(profile, genres, energy, avoid, vocab, rng)
    roots = MINOR_ROOTS if mode == "minor" else MAJOR_ROOTS
    root = roots[random.Random(f"{setting}|{view.dimension}|{mode}").randrange(len(roots))]
    return Plan(
        bpm=tempo,
        tempo=tempo_word(tempo),
        root=root,
        mode=mode,
        dynamics=dynamics_word(energy),
        energy=energy,
        voices=voices,
        moods=chosen_moods,
        genre=genre,
        genre_preferred=genre_preferred,
    )


def _voices(
    profile: Profile,
    instruments: dict[str, float],
    descriptors: dict[str, dict[str, float]],
    energy: float,
    avoid: Avoid,
    vocab: Vocabulary,
    rng: random.Random,
) -> tuple[Voice, ...]:
    """Up to three instruments: the listener's preferred ones first, then the scene's strongest."""
    usable = {n: w for n, w in instruments.items() if vocab.has("instruments", n) and not avoid(n)}
    if not usable:  # everything the scene wants is avoided: any synth instrument that is not
        usable = {n: 0.1 for n in SYNTH_INSTRUMENTS if vocab.has("instruments", n) and not avoid(n)}
    preferred = [t for t in (clean_term(p) for p in profile.prefer_instruments) if t and not avoid(t)]
    preferred = list(dict.fromkeys(preferred))[:2]
    if len(preferred) < len(profile.prefer_instruments):
        log.debug(
            "some preferred instruments left out (avoided, repeated, more than two or not a plain term)"
        )
    chosen = preferred + [n for n in _pick(rng, usable, 3, 0.5) if n not in preferred]
    hot = energy >= 0.65
    clash = _LOUD if dynamics_word(energy) in ("soft", "gentle") else _QUIET
    voices: list[Voice] = []
    for name in chosen[:3]:
        used = {v.descriptor for v in voices}
        options = {
            w: s * vocab.weight("descriptors", w) + vocab.pairing(name, w)
            for w, s in descriptors.get(name, {}).items()
            if w not in _RESERVED and w not in clash and vocab.has("descriptors", w) and not avoid(w)
        }
        if not options and name not in descriptors:  # a preferred instrument the scene did not ask for
            attested = {w: n for w, n in vocab.pairings(name).items() if (w in _HOT) == hot}
            generic = _GENERIC_HOT if hot else _GENERIC_MID if energy >= 0.45 else _GENERIC_CALM
            options = {
                w: vocab.weight("descriptors", w) + vocab.pairing(name, w)
                for w in (*attested, *generic)
                if w not in _RESERVED and w not in clash and vocab.has("descriptors", w) and not avoid(w)
            }
        # "airy synth, airy pad" reads badly: a bare instrument is better than a repeat. And a word
        # that turns the instrument into another one for the synthesizer ("electric piano") is out.
        options = {w: x for w, x in options.items() if w not in used and _keeps_instrument(w, name)}
        voices.append(Voice(name, _choose(rng, options), name in preferred))
    return tuple(voices)


@functools.cache
def _keeps_instrument(descriptor: str, instrument: str) -> bool:
    """True when "descriptor instrument" still names ``instrument`` (and only it) in the shared
    vocabulary ("electric piano" is another instrument than "piano")."""
    return mw.instruments_named(f"{descriptor} {instrument}") == (instrument,)


def _genre(
    profile: Profile, defaults: list[str], energy: float, avoid: Avoid, vocab: Vocabulary, rng: random.Random
) -> tuple[str | None, bool]:
    liked = [t for t in (clean_term(g) for g in profile.prefer_genres) if t and not avoid(t)]
    if liked:
        # The preferred genre closest to the scene's energy; unknown genres count as mid.
        fit = {g: -abs(_GENRE_ENERGY.get(g, 0.5) - energy) + rng.uniform(0.0, 0.05) for g in liked}
        return max(sorted(fit), key=lambda g: fit[g]), True
    options = [g for g in dict.fromkeys(defaults) if vocab.has("genres", g) and not avoid(g)]
    if not options:
        return None, False
    # Mostly the leading rule's first genre, sometimes its neighbour.
    return (options[0] if rng.random() < 0.75 else rng.choice(options[:2])), False
