"""Stage 1 by rules: a short, vivid narrative that imagines the scene as a real place.

In the spirit of the paper's Section II-C1 example ("In the midday sun, amid the gravel hills
swept by a gentle breeze, a healthy, well-equipped individual stands ..."): an opening from time
of day and weather (or the Nether's haze, or the heat of battle), a place from the biome, the
air's temperature, who is there and what they do, and in combat the enemies and the last blow.
Phrases are drawn with a seeded generator, so wording varies with the seed and never with the run.
"""

from __future__ import annotations

import random

from metabgm_edge.text.scene_view import SceneView

OPENINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("dawn", "clear"): (
        "As dawn breaks over a clear, cloudless sky",
        "At first light, under a clear pale sky",
        "In the cool, clear air of dawn",
    ),
    ("dawn", "rain"): (
        "As a grey dawn breaks through steady rain",
        "At first light, with rain still falling",
        "In the wet half-light of dawn, rain pattering down",
    ),
    ("dawn", "thunder"): (
        "As a stormy dawn breaks and thunder rolls in the distance",
        "At first light, lightning still flickering through the storm",
        "In a dawn torn by thunder",
    ),
    ("dawn", "snow"): (
        "As dawn breaks over softly falling snow",
        "At first light, with snow drifting down",
        "In the pale dawn, snowflakes settling in silence",
    ),
    ("day", "clear"): (
        "In the midday sun, under a clear blue sky",
        "Beneath a cloudless afternoon sky",
        "In bright daylight, a gentle breeze in the air",
    ),
    ("day", "rain"): (
        "In the grey light of a rainy afternoon",
        "Under a daytime sky heavy with rain",
        "At midday, as a steady rain falls",
    ),
    ("day", "thunder"): (
        "Beneath a dark afternoon sky split by lightning and thunder",
        "In the middle of the day, as a thunderstorm rages",
        "Under a daytime storm, thunder rolling overhead",
    ),
    ("day", "snow"): (
        "In the pale daylight of a snowy afternoon",
        "At midday, as snow falls thick and quiet",
        "Under a white sky, snow drifting through the daylight",
    ),
    ("dusk", "clear"): (
        "As the sun sinks low at dusk under a clear sky",
        "In the amber glow of dusk, the air clear and still",
        "At sunset, beneath a cloudless sky turning gold",
    ),
    ("dusk", "rain"): (
        "As dusk falls through a steady rain",
        "In the fading evening light, rain dripping all around",
        "At sunset, rain washing the colour from the sky",
    ),
    ("dusk", "thunder"): (
        "As dusk darkens under a rolling thunderstorm",
        "At sunset, lightning flashing through the storm clouds",
        "In the stormy evening light, thunder growling overhead",
    ),
    ("dusk", "snow"): (
        "As dusk settles and snow keeps falling",
        "In the blue evening light, snowflakes drifting down",
        "At sunset, snow glowing faintly in the last light",
    ),
    ("night", "clear"): (
        "Under a clear, starry night sky",
        "In the deep of night, beneath a cloudless sky full of stars",
        "By moonlight on a clear, still night",
    ),
    ("night", "rain"): (
        "In the dark of night, as cold rain falls",
        "On a rainy night with no moon to be seen",
        "Late at night, rain whispering all around",
    ),
    ("night", "thunder"): (
        "On a stormy night lit only by flashes of lightning",
        "In the dead of night, thunder shaking the sky",
        "Through a black night of thunder and rain",
    ),
    ("night", "snow"): (
        "On a silent night of falling snow",
        "In the dark of night, snow drifting under the moon",
        "Late at night, as snow falls without a sound",
    ),
}
PHASE_ONLY = {
    "dawn": ("As dawn breaks", "At first light"),
    "day": ("In broad daylight", "In the midday sun"),
    "dusk": ("As dusk falls", "In the glow of sunset"),
    "night": ("In the dark of night", "Under the night sky"),
}
WEATHER_ONLY = {
    "clear": ("Under a clear sky", "In the clear, still air"),
    "rain": ("As rain falls", "Under a steady rain"),
    "thunder": ("As thunder rolls overhead", "In the middle of a thunderstorm"),
    "snow": ("As snow falls", "Amid drifting snow"),
}
# What a player underground knows of the world above.
ABOVE_PHASE = {"dawn": "dawn breaks", "day": "the day goes on", "dusk": "dusk falls", "night": "night reigns"}
ABOVE_WEATHER = {"clear": "under a clear sky", "rain": "in the rain", "thunder": "in a thunderstorm",
                 "snow": "in falling snow"}  # fmt: skip
COMBAT_OPENINGS = ("In the heat of battle", "With danger closing in", "Amid the clash of combat",
                   "As the fight breaks out")  # fmt: skip
NETHER_OPENINGS = ("In the blood-red haze of the Nether, where no sun ever rises",
                   "Deep in the Nether, under a ceiling of smouldering rock",
                   "In the Nether's stifling heat, far from any sky")  # fmt: skip
END_OPENINGS = ("In the silent void of the End, beneath a starless black sky",
                "Far out in the End, where the sky is an empty black",
                "In the End's eerie stillness, under a sky without stars")  # fmt: skip

PLACES: dict[str, tuple[str, ...]] = {
    "forest": (
        "amid the towering trunks of the {b}",
        "deep in the {b}, among mossy roots and dappled shade",
        "along a winding path through the {b}",
    ),
    "plains": (
        "across the rolling grass of the {b}",
        "amid the open {b}, grass swaying to the horizon",
        "in the wide, open {b}",
    ),
    "meadow": (
        "amid the wildflowers of the {b}",
        "in a high {b} humming with bees",
        "across the soft grass of the {b}",
    ),
    "cherry": (
        "beneath the pink blossoms of the {b}",
        "amid the drifting petals of the {b}",
        "in the {b}, petals falling like slow confetti",
    ),
    "taiga": ("among the dark spruce of the {b}", "deep in the quiet {b}", "between tall pines in the {b}"),
    "jungle": (
        "deep in the {b}, under a canopy of vines",
        "amid the dense green walls of the {b}",
        "through the tangled undergrowth of the {b}",
    ),
    "swamp": (
        "amid the murky pools of the {b}",
        "in the {b}, where mist clings to still water",
        "among the twisted roots of the {b}",
    ),
    "mountain": (
        "high on a ridge of the {b}",
        "among the jagged stone of the {b}",
        "on a wind-swept slope of the {b}",
    ),
    "snow": (
        "across the silent white expanse of the {b}",
        "amid the frozen drifts of the {b}",
        "in the hushed, frozen {b}",
    ),
    "desert": (
        "amid the shifting dunes of the {b}",
        "across the sun-baked sand of the {b}",
        "in the empty {b}, dunes rolling to the horizon",
    ),
    "badlands": (
        "among the striped red cliffs of the {b}",
        "in the dry canyons of the {b}",
        "across the dusty terraces of the {b}",
    ),
    "savanna": (
        "among the flat-topped acacias of the {b}",
        "across the dry golden grass of the {b}",
        "on the wide, warm {b}",
    ),
    "beach": (
        "on the {b}, waves lapping at the sand",
        "along the {b}, where sea meets sand",
        "on the quiet {b}",
    ),
    "river": (
        "beside the flowing water of the {b}",
        "on the banks of the {b}",
        "where the {b} winds past reeds and stones",
    ),
    "ocean": ("on the open water of the {b}", "above the deep blue of the {b}", "adrift on the {b}"),
    "mushroom": (
        "among the giant mushrooms of the {b}",
        "on the strange, spongy ground of the {b}",
        "in the {b}, far from any other shore",
    ),
    "cave": (
        "deep within the {b}, among dripping stone",
        "in the echoing dark of the {b}",
        "in a narrow passage of the {b}",
    ),
    "lush_cave": (
        "in the {b}, where glowing berries hang from mossy vines",
        "among the hanging roots of the {b}",
        "beside a still pool in the {b}",
    ),
    "deep_dark": (
        "in the {b}, where sculk pulses in the silence",
        "among the cold ruins of the {b}",
        "in the {b}, where every footstep could wake something",
    ),
    "nether": (
        "across the {b}, lava glowing in the distance",
        "amid the scorched ground of the {b}",
        "on a ledge above the {b}'s lava sea",
    ),
    "end": (
        "on the pale end stone of the {b}",
        "at the edge of the {b}, above the endless void",
        "among the obsidian pillars of the {b}",
    ),
}
BIOME_PLACES = {
    "soul_sand_valley": (
        "across the {b}, where pale blue fires flicker over soul sand",
        "amid the bone-white fossils of the {b}",
    ),
    "crimson_forest": ("among the crimson fungi of the {b}", "beneath the dripping red vines of the {b}"),
    "warped_forest": ("among the teal fungi of the {b}", "in the strange blue-green glow of the {b}"),
    "basalt_deltas": ("among the jagged basalt pillars of the {b}", "across the ash-choked {b}"),
}
UNDERGROUND_PLACES = ("deep beneath the {b}, {depth}", "in a cave far below the {b}, {depth}",
                      "in the dark tunnels under the {b}, {depth}")  # fmt: skip
FEELS = {
    "freezing": ("where the air bites with frost", "where every breath turns to frost"),
    "cold": ("where the air is crisp and cold", "in a cold, thin wind"),
    "temperate": ("where the air is mild", "", ""),
    "warm": ("where warm air hangs still", "in the warm, drowsy air"),
    "hot": ("where the heat shimmers off the ground", "in air thick with heat"),
}
WANDERERS = ("a lone traveler", "a curious explorer", "an explorer", "a quiet figure")
ACTIONS = {
    "still": ("stands still", "pauses to listen", "stands motionless"),
    "walking": ("walks steadily on", "wanders on", "strolls unhurried"),
    "running": ("runs", "races ahead", "hurries on at a run"),
    "sneaking": ("creeps forward", "moves cautiously in a low crouch", "sneaks along"),
    "falling": ("plunges through the air", "tumbles downward"),
    "swimming": ("swims", "paddles through the water"),
    "flying": ("glides overhead", "soars through the air"),
    "riding": ("rides onward", "rides at a steady trot"),
    "sleeping": ("sleeps", "drifts into sleep"),
}
ACTIONS["sprinting"] = ACTIONS["running"]
COMBAT_ACTIONS = {
    "still": ("stands their ground", "holds firm"),
    "walking": ("backs away step by step", "circles warily"),
    "running": ("dashes aside", "sprints for cover"),
    "sneaking": ("crouches low", "edges away"),
    "falling": ("falls mid-fight",),
    "swimming": ("thrashes through the water",),
}
COMBAT_ACTIONS["sprinting"] = COMBAT_ACTIONS["running"]
STATUS = {
    "on_fire": "flames licking at their clothes",
    "in_lava": "wading through searing lava",
    "in_water": "knee-deep in cold water",
    "flying": "borne up on the wind",
}
MOB_VERBS = {
    "zombie": "lurches closer", "husk": "lurches closer", "drowned": "rises from the water",
    "skeleton": "draws its bow", "stray": "draws its bow", "creeper": "hisses",
    "spider": "skitters nearer", "cave spider": "skitters nearer", "enderman": "stares",
    "witch": "cackles", "ghast": "wails", "blaze": "hurls fire", "piglin": "charges",
    "hoglin": "charges", "warden": "stalks through the dark", "phantom": "swoops",
    "slime": "bounces nearer", "wither": "shrieks", "ender dragon": "circles overhead",
}  # fmt: skip


def _article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _mobs(names: list[str]) -> str:
    items = [_article(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _biome(view: SceneView) -> str:
    name = view.biome
    if view.dimension == "end" and name in ("the end", "end"):
        return "End islands"
    return name[4:] if name.startswith("the ") else name


def _opening(view: SceneView, rng: random.Random) -> str | None:
    if view.dimension == "nether":
        return rng.choice(NETHER_OPENINGS)
    if view.dimension == "end":
        return rng.choice(END_OPENINGS)
    if view.combat:
        return rng.choice(COMBAT_OPENINGS)
    if view.underground:
        if view.phase not in ABOVE_PHASE:
            return (
                f"Far below the surface, {ABOVE_WEATHER[view.weather]}"
                if view.weather in ABOVE_WEATHER
                else None
            )
        weather = f" {ABOVE_WEATHER[view.weather]}" if view.weather in ABOVE_WEATHER else ""
        return f"While {ABOVE_PHASE[view.phase]}{weather} far above"
    if view.phase and view.weather:
        return rng.choice(OPENINGS[(view.phase, view.weather)])
    if view.phase:
        return rng.choice(PHASE_ONLY[view.phase])
    if view.weather:
        return rng.choice(WEATHER_ONLY[view.weather])
    return None


def _place(view: SceneView, rng: random.Random) -> str:
    b = _biome(view)
    if view.underground and view.family not in ("cave", "lush_cave", "deep_dark"):
        depth = (
            f"some {round(view.depth)} blocks below the surface" if view.depth >= 1 else "below the surface"
        )
        return rng.choice(UNDERGROUND_PLACES).format(b=b, depth=depth)
    options = BIOME_PLACES.get(view.biome_id) or PLACES.get(view.family) or PLACES["plains"]
    place = rng.choice(options).format(b=b)
    if view.underground and view.depth >= 1:
        place += f", some {round(view.depth)} blocks below the surface"
    if len(view.biomes_visited) > 1 and view.biomes_visited[0] != view.biome:
        place += f", having wandered in from the {view.biomes_visited[0]}"
    return place


def _who(view: SceneView, rng: random.Random) -> str:
    if not view.combat:
        return rng.choice(WANDERERS)
    noun = rng.choice(("fighter", "adventurer"))
    notes = []
    ratio = view.health_ratio
    if ratio is None or ratio >= 0.8:
        adjective = rng.choice(("healthy, well-armed", "unhurt"))
    elif ratio >= 0.5:
        adjective = rng.choice(("bruised", "battered"))
    elif ratio >= 0.25:
        adjective = rng.choice(("wounded", "bleeding"))
    else:
        adjective = rng.choice(("badly wounded", "desperate, bleeding"))
        notes.append("barely standing")
    if view.food is not None and view.food <= 6:
        notes.append("weak with hunger")
    return _article(f"{adjective} {noun}") + (f", {' and '.join(notes)}," if notes else "")


def _action(view: SceneView, rng: random.Random) -> str:
    move = view.movement
    for flag in ("sleeping", "swimming", "flying", "sprinting", "sneaking"):
        if flag in view.flags and move in (None, "still", "walking"):
            move = flag
    table = COMBAT_ACTIONS if view.combat else ACTIONS
    options = table.get(move or "still") or ACTIONS.get(move or "still") or ACTIONS["still"]
    action = rng.choice(options)
    if view.speed is not None and view.speed > 7 and move in ("running", "sprinting", "riding", "flying"):
        action += " at breakneck speed"
    shown = {"flying": move == "flying", "in_water": move == "swimming"}
    extras = [text for flag, text in STATUS.items() if flag in view.flags and not shown.get(flag)]
    return action + "".join(f", {text}" for text in extras[:2])


def _danger(view: SceneView, rng: random.Random) -> str:
    sentences = []
    if view.hostiles:
        names = [n for n, _ in view.hostiles[:3]]
        near = view.nearest or 0.0
        if near < 1.5:
            distance = "barely a block away"
        elif near <= 4:
            distance = f"barely {round(near)} blocks away"
        else:
            distance = f"about {round(near)} blocks away"
        if len(names) == 1:
            verb = MOB_VERBS.get(names[0], "closes in")
            sentences.append(f"{_article(names[0]).capitalize()} {verb}, {distance}.")
        else:
            sentences.append(f"{_mobs(names).capitalize()} close in, the nearest {distance}.")
    if view.attacker or view.damage:
        hit = f"{round(view.damage)} damage" if view.damage else "a blow"
        who = f" from {_article(view.attacker)}" if view.attacker else ""
        sentences.append(
            rng.choice((f"The sting of {hit}{who} is still fresh.", f"They have just taken {hit}{who}."))
        )
    return " ".join(sentences)


def write_narrative(view: SceneView, rng: random.Random) -> str:
    opening = _opening(view, rng)
    place = _place(view, rng)
    felt = view.feel in FEELS and not view.combat and not view.underground and view.dimension == "overworld"
    feel = rng.choice(FEELS[view.feel]) if felt else ""
    feel = f", {feel}" if feel else ""
    who = _who(view, rng)
    action = _action(view, rng)
    shape = rng.randrange(3)
    tail = f", {opening[0].lower()}{opening[1:]}" if opening else ""
    if opening is not None and shape == 0:
        text = f"{opening}, {place}{feel}, {who} {action}."
    elif shape == 1 or opening is None:
        text = f"{who[0].upper()}{who[1:]} {action} {place}{feel}{tail}."
    else:
        text = f"{place[0].upper()}{place[1:]}{feel}, {who} {action}{tail}."
    danger = _danger(view, rng) if view.combat else ""
    return " ".join(f"{text} {danger}".replace(",,", ",").replace(", .", ".").split())
