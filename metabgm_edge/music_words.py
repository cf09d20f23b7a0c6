"""The music words both sides of metabgm-edge share: what the composer writes and what the
synthesizer's parser reads.

One table per kind of word, each entry saying what the word *means* in numbers:

- tempo words with the BPM range they stand for (the four the composer writes, ``slow``,
  ``moderate``, ``fast``, ``driving``, partition 40-200 BPM; others like ``uptempo`` or ``largo``
  are read too);
- dynamics words with a level from 0 (silent) to 1 (as loud as it gets);
- instruments: the voices the synthesizer has, and the names musicians use for them;
- moods with their energy (0 calm .. 1 frantic), valence (-1 sad .. +1 happy), the tempo they
  suggest and how bright they sound;
- genres with their usual instruments, energy, tempo, room, valence and drum kit;
- timbre words (bright, dark, muffled, shimmering...) with the brightness they ask for;
- words of space, rhythm, negation and degree ("very", "slightly").

Every word is listed with its inflections ("sad sadly sadness"), so a reader matches forms, not
phrases seen somewhere. Pure data and two small functions; nothing here imports the rest of the
package, so :mod:`metabgm_edge.text` and :mod:`metabgm_edge.audio` can both depend on it.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "DYNAMICS",
    "GENRES",
    "INSTRUMENT_WORDS",
    "MOODS",
    "RHYTHM_WORDS",
    "SPACE_WORDS",
    "TEMPO_WORDS",
    "TIMBRE_WORDS",
    "VOICES",
    "WRITTEN_DYNAMICS",
    "WRITTEN_INSTRUMENTS",
    "WRITTEN_TEMPO",
    "Genre",
    "Mood",
    "TempoWord",
    "dynamics_word",
    "instruments_named",
    "tempo_word",
]


# --- tempo ------------------------------------------------------------------------------------


class TempoWord(NamedTuple):
    lo: float
    hi: float
    typical: float
    """What the word alone is read as (BPM)."""
    contextual: bool = False
    """Read as tempo only next to "tempo", "pace", "paced" or "speed" ("medium tempo", not "medium
    volume")."""


# The composer writes exactly these four; their ranges partition 40..200 BPM (see tempo_word).
WRITTEN_TEMPO: Final = ("slow", "moderate", "fast", "driving")
TEMPO_WORDS: Final[dict[str, TempoWord]] = {
    "slow": TempoWord(40, 76, 68),
    "moderate": TempoWord(77, 106, 96),
    "fast": TempoWord(107, 134, 126),
    "driving": TempoWord(135, 200, 148),
    # Read, never written.
    "very slow": TempoWord(40, 62, 54),
    "extremely slow": TempoWord(40, 56, 48),
    "slower": TempoWord(50, 80, 70),
    "slowly": TempoWord(44, 76, 66),
    "slow-paced": TempoWord(48, 78, 68),
    "downtempo": TempoWord(60, 96, 84),
    "largo": TempoWord(40, 60, 50),
    "lento": TempoWord(40, 62, 52),
    "grave": TempoWord(40, 50, 44, contextual=True),
    "adagio": TempoWord(56, 80, 68),
    "leisurely": TempoWord(62, 90, 76),
    "unhurried": TempoWord(58, 84, 72),
    "andante": TempoWord(76, 100, 88),
    "walking": TempoWord(76, 104, 92, contextual=True),
    "medium": TempoWord(85, 115, 100, contextual=True),
    "mid": TempoWord(85, 115, 100, contextual=True),
    "mid-tempo": TempoWord(85, 115, 100),
    "midtempo": TempoWord(85, 115, 100),
    "normal": TempoWord(85, 115, 100, contextual=True),
    "average": TempoWord(85, 115, 100, contextual=True),
    "moderato": TempoWord(96, 116, 108),
    "medium-fast": TempoWord(105, 128, 116),
    "medium fast": TempoWord(105, 128, 116),
    "allegretto": TempoWord(100, 124, 112),
    "uptempo": TempoWord(110, 150, 128),
    "up-tempo": TempoWord(110, 150, 128),
    "faster": TempoWord(115, 160, 132),
    "quick": TempoWord(115, 160, 134),
    "quickly": TempoWord(115, 160, 134),
    "brisk": TempoWord(110, 140, 124),
    "allegro": TempoWord(120, 156, 136),
    "fast-paced": TempoWord(120, 170, 140),
    "rapid": TempoWord(130, 190, 150),
    "rapidly": TempoWord(130, 190, 150),
    "high": TempoWord(120, 170, 140, contextual=True),
    "vivace": TempoWord(140, 176, 156),
    "very fast": TempoWord(150, 200, 168),
    "extremely fast": TempoWord(160, 200, 180),
    "frantic": TempoWord(150, 200, 166),
    "frenetic": TempoWord(150, 200, 166),
    "breakneck": TempoWord(165, 200, 184),
    "presto": TempoWord(165, 200, 180),
    "racing": TempoWord(140, 190, 156),
}
TEMPO_CONTEXT: Final = frozenset({"tempo", "tempos", "pace", "paced", "speed", "bpm", "beat", "rhythm"})
_WRITTEN_TEMPO_TOP: Final = {"slow": 76, "moderate": 106, "fast": 134, "driving": 200}


def tempo_word(bpm: float) -> str:
    """The written tempo word for a BPM: the one of :data:`WRITTEN_TEMPO` whose range holds it."""
    for word in WRITTEN_TEMPO:
        if bpm < _WRITTEN_TEMPO_TOP[word] + 0.5:
            return word
    return WRITTEN_TEMPO[-1]


# --- dynamics ---------------------------------------------------------------------------------

# The composer writes exactly one of these per description, by the plan's energy.
WRITTEN_DYNAMICS: Final = ("soft", "gentle", "loud", "intense")
_WRITTEN_DYNAMICS_TOP: Final = {"soft": 0.3, "gentle": 0.56, "loud": 0.8, "intense": 2.0}

DYNAMICS: Final[dict[str, float]] = {
    "soft": 0.28, "softly": 0.28, "gentle": 0.34, "gently": 0.34, "loud": 0.8, "intense": 0.9,
    "very soft": 0.15, "very quiet": 0.15, "hushed": 0.18, "whispering": 0.2, "whispered": 0.2,
    "faint": 0.2, "quiet": 0.25, "quietly": 0.25, "low volume": 0.25, "low-volume": 0.25,
    "delicate": 0.3, "delicately": 0.3, "subtle": 0.32, "subtly": 0.32, "light": 0.36, "lightly": 0.36,
    "sparse": 0.36, "mellow": 0.38, "tender": 0.3, "moderate volume": 0.5, "medium volume": 0.5,
    "full": 0.66, "rich": 0.62, "strong": 0.72, "bold": 0.72, "big": 0.72, "loudly": 0.8,
    "powerful": 0.84, "powerfully": 0.84, "punchy": 0.76, "heavy": 0.8, "heavily": 0.8, "hard": 0.78,
    "hard-hitting": 0.84, "booming": 0.84, "thumping": 0.78, "pounding": 0.84, "forceful": 0.84,
    "banging": 0.82, "distorted": 0.72, "throbbing": 0.7, "aggressive": 0.85, "blasting": 0.9,
    "thunderous": 0.92, "deafening": 0.95, "explosive": 0.9,
    "very loud": 0.95, "fortissimo": 0.92, "pianissimo": 0.15,
}  # fmt: skip


def dynamics_word(energy: float) -> str:
    """The written dynamics word for an energy 0..1."""
    for word in WRITTEN_DYNAMICS:
        if energy < _WRITTEN_DYNAMICS_TOP[word]:
            return word
    return WRITTEN_DYNAMICS[-1]


# --- instruments ------------------------------------------------------------------------------

VOICES: Final = (
    "piano", "epiano", "strings", "cello", "pad", "bass", "drums", "flute", "guitar", "voice", "choir",
    "brass", "bells", "synth", "harp", "organ",
)  # fmt: skip
# The instrument names the composer writes (each the name of one voice).
WRITTEN_INSTRUMENTS: Final = (
    "piano", "strings", "pad", "bass", "drums", "flute", "guitar", "choir", "brass", "bells", "synth",
    "harp", "cello",
)  # fmt: skip

_INSTRUMENT_TABLE: Final = """
piano: piano pianos grand_piano acoustic_piano upright_piano keys keyboard keyboards harpsichord clavichord
    clavinet honky-tonk_piano toy_piano
epiano: electric_piano e-piano rhodes wurlitzer fender_rhodes electric_keys
strings: strings string string_section string_ensemble string_orchestra violin violins viola violas fiddle
    fiddles orchestra orchestral_strings bowed_strings
cello: cello cellos violoncello
pad: pad pads synth_pad synth_pads drone drones droning ambient_pad
bass: bass basses bassline basslines bass_line bass_lines bass_guitar e-bass upright_bass double_bass
    contrabass sub_bass sub-bass synth_bass electric_bass acoustic_bass 808 808s
drums: drums drum drumming drummer drum_kit drum_set drumkit percussion percussions percussive_elements
    kick kick_drum kicks snare snares snare_drum hi-hat hi-hats hihat hihats hi_hat hi_hats cymbal cymbals
    crash ride toms tom taiko timpani tabla bongo bongos conga congas shaker shakers tambourine claps
    clap handclaps hand_claps hand_percussion steel_drums drum_machine beatbox djembe cajon rimshot rimshots
    woodblock cowbell
flute: flute flutes woodwind woodwinds whistle whistles tin_whistle piccolo recorder ocarina pan_flute
    panflute bansuri shakuhachi clarinet clarinets oboe oboes bassoon saxophone saxophones sax saxes
    harmonica melodica
guitar: guitar guitars acoustic_guitar acoustic_guitars electric_guitar electric_guitars e-guitar
    e-guitars classical_guitar lead_guitar rhythm_guitar lute mandolin banjo ukulele uke oud sitar koto
    bouzouki balalaika charango shamisen guzheng
voice: voice voices vocal vocals vocalist vocalists singer singers singing sings sung humming vocalise
    lead_vocal lead_vocals male_vocal female_vocal male_vocals female_vocals
choir: choir choirs choral chant chants chanting backing_vocals
brass: brass horn horns french_horn trumpet trumpets trombone trombones tuba tubas fanfare cornet bugle
    flugelhorn
bells: bells bell chimes chime glockenspiel celesta music_box xylophone vibraphone marimba kalimba
    mallets mallet_percussion handbells steel_pan
synth: synth synths synthesizer synthesizers synthesiser synthesisers arpeggiator chiptune lead_synth
    synth_lead keytar
harp: harp harps harpist lyre zither dulcimer
organ: organ organs hammond pipe_organ church_organ accordion accordions bagpipes harmonium
"""


def _table(text: str) -> dict[str, str]:
    """``name: form form_with_spaces ...`` blocks -> {form: name} (underscores are spaces)."""
    out: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text.strip()):
        name, _, body = block.partition(":")
        for form in body.split():
            out[form.replace("_", " ")] = name.strip()
    return out


INSTRUMENT_WORDS: Final[dict[str, str]] = _table(_INSTRUMENT_TABLE)
"""Every name musicians use -> the synthesizer voice that plays it."""


def instruments_named(text: str) -> tuple[str, ...]:
    """The voices a text names, in order of mention (longest names first, no overlaps)."""
    low = " ".join(re.findall(r"[a-z0-9][a-z0-9\-']*", text.lower()))
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for phrase in sorted(INSTRUMENT_WORDS, key=len, reverse=True):
        for m in re.finditer(rf"(?<![a-z0-9\-]){re.escape(phrase)}(?![a-z0-9\-])", low):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            found.append((s, INSTRUMENT_WORDS[phrase]))
    return tuple(dict.fromkeys(v for _, v in sorted(found)))


# --- moods ------------------------------------------------------------------------------------


class Mood(NamedTuple):
    energy: float
    """0 still .. 1 frantic."""
    valence: float
    """-1 sad, dark .. +1 happy, bright. Decides the mode a description leans to."""
    tempo: float | None
    """The tempo the mood suggests (BPM), weaker than a tempo word."""
    brightness: float | None
    """0 dark .. 1 bright timbre; None: says nothing about timbre."""


# forms: energy valence tempo brightness ("-" = none). The first form is the word's name.
_MOOD_TABLE: Final = """
calm calming calmly calmness calmer: .2 .15 72 -
peaceful peacefully peace: .18 .4 72 .55
serene serenity serenely: .15 .35 68 .55
tranquil tranquility tranquillity: .15 .25 66 .5
soothing soothe soothes: .18 .25 70 .5
relaxing relaxed relax relaxation: .24 .25 80 .5
laid-back laid_back easygoing easy-going carefree: .3 .4 88 .55
chill chilled chillout chill-out: .28 .15 84 .45
meditative meditation contemplative reflective introspective pensive: .14 -.05 64 .45
dreamy dreamlike dream-like dreaming: .2 .1 72 .55
ethereal otherworldly heavenly angelic celestial: .18 .15 68 .65
spiritual religious devotional sacred worship prayer holy: .28 .2 72 .5
sleepy sleep-inducing drowsy: .1 .1 62 .4
tender tenderly tenderness: .22 .2 70 .5
sweet sweetly sweetness cute lovely pretty beautiful: .32 .5 92 .65
innocent childlike: .3 .55 96 .7
cozy cosy: .25 .4 80 .45
warm warmth warmly: .3 .3 - .4
nostalgic nostalgia: .3 -.15 78 .45
sentimental: .3 -.15 74 .45
romantic romance romantically loving: .3 .3 76 .5
emotional emotionally emotive heartfelt: .4 -.15 76 .45
soulful: .4 .05 84 .45
passionate passionately: .6 .05 100 .5
wistful wistfully longing yearning: .25 -.4 72 .4
bittersweet: .3 -.25 76 .45
sad sadly sadness sadder saddest: .2 -.85 66 .3
melancholic melancholy melancholia melancholically: .22 -.75 68 .3
sorrowful sorrow mournful mourning grief grieving lament elegiac: .15 -.85 60 .25
depressing depressed depressive miserable heartbreaking heartbroken tragic tragedy despair: .2 -.85 64 .25
lonely loneliness lonesome: .18 -.6 66 .3
gloomy gloom bleak desolate dreary: .25 -.7 64 .2
somber sombre: .22 -.6 64 .25
solemn solemnly: .25 -.45 66 .35
serious: .4 -.3 - -
dark darker darkest darkness darkly: .45 -.6 - .15
moody brooding: .35 -.5 72 .25
haunting haunted hauntingly: .3 -.55 70 .3
eerie eerily creepy spooky scary horror horrifying: .4 -.75 80 .2
sinister ominous menacing threatening evil demonic foreboding unsettling disturbing dread: .55 -.8 84 .15
mysterious mystery mysteriously enigmatic cryptic: .35 -.35 80 .35
mystical mystic: .3 -.1 76 .5
suspense suspenseful tense tension nervous anxious anxiety uneasy fearful fear: .62 -.6 108 .3
dramatic drama dramatically: .7 -.35 100 .4
angry anger rage furious hostile: .88 -.6 140 .35
aggressive aggressively aggression violent brutal savage fierce: .9 -.5 140 .35
chaotic chaos manic: .9 -.5 150 .35
urgent urgency: .8 -.5 132 .35
battle combat war fight fighting: .9 -.5 138 .4
epic: .8 .1 116 .5
majestic grand grandiose regal: .55 .4 88 .6
heroic heroically: .75 .4 116 .6
triumphant triumphantly victorious glorious: .75 .65 112 .7
anthemic anthem: .7 .45 112 .6
powerful: .8 .05 - -
intense intensely intensity: .85 -.15 128 -
happy happily happiness glad: .55 .85 112 .75
cheerful cheery cheerfully cheer: .55 .85 114 .78
joyful joyous joy joyfully jubilant elated euphoric euphoria ecstatic: .6 .9 116 .78
playful playfully fun funny silly goofy quirky whimsical humorous comic comedic bouncy: .5 .7 112 .72
lighthearted light-hearted: .45 .65 108 .7
uplifting uplifted positive positivity optimistic hopeful hope inspiring inspirational: .55 .65 108 .68
encouraging motivational motivating empowering: .6 .6 112 .65
bright brightly brightness sunny radiant shiny: .5 .6 - .85
festive celebratory celebration party partying: .75 .8 122 .75
lively vibrant spirited bubbly peppy perky: .7 .6 120 .7
groovy funky catchy danceable dancey: .65 .45 116 .6
energetic energetically energizing vigorous high-energy high_energy: .8 .25 126 .6
exciting excitement excited thrilling exhilarating: .75 .35 124 .6
adventurous adventure: .6 .3 112 .6
magical magic enchanting enchanted wondrous: .35 .35 88 .7
hypnotic mesmerizing mesmerising trance-like trancey: .45 0 100 .4
smooth sophisticated elegant classy: .35 .2 96 .5
sensual seductive sultry sexy: .35 0 84 .35
cool: .4 .15 100 -
"""


def _mood_table(text: str) -> dict[str, Mood]:
    out: dict[str, Mood] = {}
    for line in text.strip().splitlines():
        forms, _, values = line.partition(":")
        e, v, t, b = values.split()
        mood = Mood(float(e), float(v), None if t == "-" else float(t), None if b == "-" else float(b))
        for form in forms.split():
            out[form.replace("_", " ")] = mood
    return out


MOODS: Final[dict[str, Mood]] = _mood_table(_MOOD_TABLE)


# --- genres -----------------------------------------------------------------------------------


class Genre(NamedTuple):
    instruments: tuple[str, ...]
    energy: float
    tempo: float
    space: float
    """0 dry .. 1 cathedral."""
    valence: float
    kit: str | None
    """The drum kit it plays with: standard, electronic, orchestral, soft, hand; None: no drums."""


# forms: energy tempo space valence kit | instruments
_GENRE_TABLE: Final = """
ambient: .15 70 .85 .05 - | pad bells piano
new_age: .15 70 .8 .2 - | pad bells flute
drone: .1 60 .85 -.2 - | pad cello
minimalist minimal minimalism: .25 84 .55 0 - | piano bells
lullaby lullabies nursery_rhyme: .1 64 .6 .5 - | bells harp pad
meditation: .1 60 .85 .1 - | pad bells
classical: .4 92 .5 0 - | piano strings
baroque: .45 100 .4 .2 - | piano strings
chamber: .3 84 .45 0 - | strings cello piano
orchestral orchestra symphony: .6 96 .6 0 orchestral | strings brass cello
cinematic film_score movie_soundtrack trailer epic_music: .6 92 .7 -.1 orchestral | strings brass choir cello
soundtrack score: .5 92 .6 0 - | strings piano pad
symphonic: .65 100 .6 0 orchestral | strings brass cello
choral: .3 72 .75 .1 - | choir organ
gospel: .5 88 .5 .5 standard | choir organ piano
christian worship: .4 80 .55 .4 standard | piano choir pad
christmas: .45 104 .5 .7 standard | bells piano strings
children's kids children_song kids_song nursery: .5 108 .35 .8 standard | bells piano guitar
folk: .4 96 .35 .2 hand | guitar flute strings
celtic irish scottish: .5 108 .4 .3 hand | flute harp guitar
medieval renaissance: .4 96 .45 .1 hand | flute guitar harp
country: .5 104 .3 .4 standard | guitar bass drums
bluegrass: .6 124 .3 .45 - | guitar strings bass
acoustic: .35 92 .35 .15 soft | guitar piano
ballad: .25 70 .5 -.2 soft | piano strings
singer-songwriter: .3 88 .35 .05 soft | guitar piano
waltz: .4 96 .5 .2 soft | strings piano
jazz jazzy bebop: .45 108 .35 .05 soft | epiano bass drums
swing: .55 128 .35 .4 soft | brass bass drums piano
big_band: .65 132 .35 .4 standard | brass bass drums piano
bossa_nova bossa: .35 110 .35 .2 soft | guitar bass drums
lo-fi lofi lo_fi: .35 80 .35 -.05 soft | epiano bass drums
chillhop: .35 84 .35 0 soft | epiano bass drums
trip-hop trip_hop: .4 88 .45 -.3 standard | pad bass drums
blues bluesy: .4 84 .35 -.2 standard | guitar organ bass
soul: .5 96 .35 .15 standard | epiano bass drums
r&b rnb: .5 92 .35 .1 electronic | epiano bass drums
funk: .65 108 .25 .4 standard | guitar bass drums
disco: .75 120 .35 .6 electronic | bass drums strings synth
pop: .55 112 .4 .45 standard | piano synth bass drums
k-pop j-pop: .7 124 .4 .5 electronic | synth bass drums
rock: .75 124 .35 -.05 standard | guitar bass drums
hard_rock: .85 132 .35 -.2 standard | guitar bass drums
soft_rock: .45 96 .4 .1 standard | guitar piano bass drums
indie alternative: .5 108 .4 0 standard | guitar bass drums
grunge: .8 116 .35 -.45 standard | guitar bass drums
emo: .75 140 .35 -.5 standard | guitar bass drums
punk: .9 170 .25 -.1 standard | guitar bass drums
ska: .75 150 .3 .5 standard | guitar brass bass drums
metal heavy_metal: .95 150 .3 -.6 standard | guitar bass drums
death_metal black_metal thrash: 1 180 .3 -.8 standard | guitar bass drums
electronic electro electronica: .6 120 .45 .05 electronic | synth pad bass drums
synthwave synthpop synth-pop new_wave: .6 110 .5 0 electronic | synth pad bass drums
techno: .8 128 .4 -.1 electronic | synth bass drums
house deep_house: .7 122 .4 .3 electronic | synth pad bass drums
trance psytrance: .75 138 .55 .2 electronic | synth pad bass drums
edm dance_music: .85 126 .4 .3 electronic | synth bass drums
hardstyle: .95 150 .4 -.2 electronic | synth bass drums
drum_and_bass dnb drum_n_bass: .9 172 .4 -.1 electronic | synth bass drums
dubstep: .9 140 .4 -.3 electronic | synth bass drums
trap: .7 140 .35 -.3 electronic | synth bass drums
industrial: .85 120 .4 -.5 electronic | synth bass drums
chiptune 8-bit 8_bit: .65 132 .2 .5 electronic | synth bass drums
video_game game_music: .6 120 .35 .3 electronic | synth bass drums
retro: .55 112 .35 .2 electronic | synth bass
hip-hop hip_hop hiphop rap: .6 90 .3 -.1 electronic | epiano bass drums
reggae dub: .5 80 .35 .4 standard | guitar organ bass drums
reggaeton dancehall: .7 96 .35 .4 electronic | synth bass drums
latin salsa cumbia: .65 112 .35 .45 hand | guitar bass drums brass
samba: .75 104 .35 .6 hand | guitar bass drums
tango flamenco: .6 116 .35 -.35 hand | guitar strings bass
afrobeat african: .7 112 .35 .4 hand | guitar bass drums
bollywood indian: .6 112 .45 .35 hand | strings flute drums
arabic middle_eastern: .55 104 .45 -.3 hand | strings flute drums
asian chinese japanese: .35 84 .5 .1 - | guitar flute
world: .45 96 .45 .1 hand | flute guitar drums
tribal: .7 108 .45 -.1 hand | drums flute pad
march marching military: .7 112 .4 .3 orchestral | brass drums
opera operatic: .6 88 .6 -.1 - | choir strings
experimental: .4 88 .7 -.2 - | pad synth bells
horror: .4 72 .8 -.8 - | pad cello bells
fantasy: .45 92 .6 .2 - | strings harp flute
"""


def _genre_table(text: str) -> dict[str, Genre]:
    out: dict[str, Genre] = {}
    for line in text.strip().splitlines():
        head, _, instruments = line.partition("|")
        forms, _, values = head.partition(":")
        e, t, s, v, kit = values.split()
        genre = Genre(tuple(instruments.split()), float(e), float(t), float(s), float(v),
                      None if kit == "-" else kit)  # fmt: skip
        for form in forms.split():
            out[form.replace("_", " ")] = genre
    return out


GENRES: Final[dict[str, Genre]] = _genre_table(_GENRE_TABLE)


# --- timbre, space, rhythm, degree ------------------------------------------------------------

TIMBRE_WORDS: Final[dict[str, float]] = {
    "bright": 0.85, "brighter": 0.85, "brilliant": 0.85, "crisp": 0.75, "sparkling": 0.85, "sparkly": 0.85,
    "shimmering": 0.85, "shimmery": 0.85, "twinkling": 0.85, "glittering": 0.85, "glassy": 0.8,
    "chiming": 0.8, "tinkling": 0.85, "airy": 0.7, "shiny": 0.8, "high-pitched": 0.85, "high pitched": 0.85,
    "piercing": 0.9, "sharp": 0.75, "thin": 0.7, "tinny": 0.8, "metallic": 0.75, "sizzling": 0.8,
    "clear": 0.65, "clean": 0.6, "light": 0.65, "high": 0.7,
    "dark": 0.15, "darker": 0.15, "deep": 0.2, "low": 0.3, "low-pitched": 0.2, "low pitched": 0.2,
    "bassy": 0.2, "boomy": 0.2, "muffled": 0.15, "muted": 0.25, "dull": 0.2, "murky": 0.15, "warm": 0.35,
    "mellow": 0.35, "round": 0.35, "thick": 0.3, "heavy": 0.3, "rumbling": 0.15, "droning": 0.3,
    "hollow": 0.35, "gloomy": 0.15, "lo-fi": 0.3, "lofi": 0.3, "filtered": 0.3, "distorted": 0.55,
}  # fmt: skip
# Words that make a following timbre word something else ("low quality" is about the recording).
NOT_TIMBRE_BEFORE: Final = frozenset({"quality", "fidelity", "end", "budget", "key", "energy", "volume"})

SPACE_WORDS: Final[dict[str, float]] = {
    "spacious": 0.85, "vast": 0.85, "cavernous": 0.95, "cathedral": 0.95, "church": 0.85, "hall": 0.75,
    "reverberant": 0.8, "reverb": 0.7, "reverberating": 0.8, "echoing": 0.8, "echo": 0.75, "echoes": 0.75,
    "distant": 0.8, "atmospheric": 0.75, "airy": 0.7, "wide": 0.65, "ethereal": 0.85, "dreamy": 0.7,
    "ambient": 0.8, "spacey": 0.85, "spacy": 0.85, "intimate": 0.2, "dry": 0.1, "close": 0.25,
    "tight": 0.2, "in-your-face": 0.15,
}  # fmt: skip

RHYTHM_WORDS: Final = frozenset({
    "rhythm", "rhythmic", "rhythmically", "beat", "beats", "groove", "grooves", "groovy", "grooving",
    "pulse", "pulsing", "pulsating", "percussive", "backbeat", "four-on-the-floor", "dance", "danceable",
    "marching", "syncopated", "driving", "stomping", "thumping", "pounding", "banging",
})  # fmt: skip
NO_RHYTHM_WORDS: Final = frozenset({"beatless", "drumless", "arrhythmic", "rubato", "free-time", "unmetered"})

NEGATIONS: Final = frozenset({
    "no", "not", "without", "lacking", "minus", "sans", "zero", "never", "non", "nor", "isn't", "aren't",
    "doesn't", "don't", "absent", "lack", "lacks", "neither",
})  # fmt: skip
BOOSTERS: Final[dict[str, float]] = {
    "very": 1.5, "really": 1.4, "extremely": 1.8, "super": 1.6, "highly": 1.5, "incredibly": 1.7,
    "so": 1.3, "too": 1.3, "quite": 1.2, "ultra": 1.7, "intensely": 1.6, "deeply": 1.4, "truly": 1.3,
    "slightly": 0.5, "somewhat": 0.6, "bit": 0.5, "little": 0.5, "fairly": 0.7, "rather": 0.8,
    "mildly": 0.5, "moderately": 0.7, "kinda": 0.6, "semi": 0.6, "subtly": 0.5,
}  # fmt: skip
