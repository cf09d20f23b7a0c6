"""Characterization: the paper's Algorithm 1, and the scene data it reads.

:func:`scene_data` lays a snapshot (or a segment's aggregate) out as the paper's nested
dictionary, one group per element: Scene, Time, Weather, Temperature, Health, Satiety, Status,
Movement, Position, Hostile Entity, Being Attacked. :func:`characterize` is Algorithm 1 on that
dictionary: inner pairs that are negative ("Not Sneaking", or a flag that is false) are skipped,
numbers keep two decimals, and only the combat or the exploration key set is kept.

When is it combat? A snapshot is in combat when a hostile mob is within
:data:`COMBAT_RANGE` blocks, or the player took damage from an attacker within the last
:data:`COMBAT_HOLD_S` seconds. A segment is in combat when its latest snapshot is, or was within
:data:`COMBAT_HOLD_S` seconds of its end (a short hold so one step back from a zombie does not
flip the music).
"""

from __future__ import annotations

import re
from typing import Any, Final

from metabgm_edge.state import SceneState, Window

COMBAT_KEYS: Final = (
    "Scene",
    "Health",
    "Satiety",
    "Status",
    "Movement",
    "Position",
    "Hostile Entity",
    "Being Attacked",
)
EXPLORATION_KEYS: Final = ("Scene", "Time", "Weather", "Temperature", "Status", "Movement", "Position")
COMBAT_RANGE: Final = 8.0
COMBAT_HOLD_S: Final = 5.0

_NOT_WORD = re.compile(r"(?:^|[\s_\-])not(?:[\s_\-]|$)", re.IGNORECASE)
_NOT_CAMEL = re.compile(r"^[Nn]ot(?=[A-Z])")


def is_negative(key: str, value: Any) -> bool:
    """Algorithm 1's test: the key says "Not" (as a word), or the value is a false flag."""
    return value is False or bool(_NOT_WORD.search(key) or _NOT_CAMEL.search(key))


def round2(value: Any) -> Any:
    """Two decimals for floats, recursively; ints, bools and strings unchanged."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: round2(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round2(v) for v in value]
    return value


def characterize(scene: dict[str, Any], combat: bool) -> dict[str, dict[str, Any]]:
    """Algorithm 1 (Data Feature Processing), exactly as the paper gives it."""
    characterized: dict[str, dict[str, Any]] = {}
    for key, value in scene.items():
        if isinstance(value, dict):
            characterized[key] = {
                inner_key: round2(inner_value)
                for inner_key, inner_value in value.items()
                if not is_negative(inner_key, inner_value)
            }
    keep = COMBAT_KEYS if combat else EXPLORATION_KEYS
    return {key: characterized[key] for key in keep if key in characterized}


def info_str(characterized: dict[str, dict[str, Any]]) -> str:
    """The characterized data as text, one line per group, for the narrative prompt."""
    lines = []
    for group, values in characterized.items():
        if not values:
            continue
        body = "; ".join(f"{k}: {_text(v)}" for k, v in values.items())
        lines.append(f"{group}: {body}")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is True:
        return "yes"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, str):
        return value.replace("_", " ")  # game ids read as words: dark_forest -> dark forest
    return str(value)


UNKNOWN_BIOMES: Final = frozenset({"", "unknown", "none", "null", "void"})
"""Biome names that say the sender does not know the biome (a connector during a dimension change)."""
DIMENSION_NAMES: Final = {
    "the_nether": "the nether",
    "nether": "the nether",
    "the_end": "the end",
    "end": "the end",
}


def underground(state: SceneState) -> bool:
    """Under solid ground in the overworld: the sky (time of day, weather) is out of sight."""
    return state.scene.dimension == "overworld" and state.position.depth > 0


def scene_words(state: SceneState, combat: bool) -> list[str]:
    """The scene as a listener would name it, in a few words: biome, then time of day and weather
    under the open sky, "underground" under the ground, the dimension elsewhere (the Nether and
    the End have no day or weather), and "combat"."""
    words = [state.scene.biome]
    if state.scene.dimension != "overworld":
        words.append(DIMENSION_NAMES.get(state.scene.dimension, state.scene.dimension.replace("_", " ")))
    elif underground(state):
        words.append("underground")
    else:
        words += [state.time.resolved_phase(), state.weather.state]
    if combat:
        words.append("combat")
    return words


def scene_change(before: list[str], after: list[str]) -> str | None:
    """What changed between two :func:`scene_words` lists, in words ("night, rain"); None if nothing."""
    if before == after:
        return None
    new = [w for w in after if w not in before]
    gone = [w for w in before if w not in after]
    if not new and gone:
        return "no " + ", no ".join(gone)
    return ", ".join(new)


def in_combat(state: SceneState) -> bool:
    near = any(h.distance <= COMBAT_RANGE for h in state.hostiles)
    hit = (
        state.attacked is not None
        and state.attacked.damage > 0
        and state.attacked.seconds_ago <= COMBAT_HOLD_S
    )
    return near or hit


def title(key: str) -> str:
    """``not_on_fire`` -> ``Not On Fire``: the paper's key style."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).replace("_", " ").replace("-", " ")
    return " ".join(w.capitalize() for w in spaced.split())


def temperature_feel(value: float) -> str:
    if value < 0.15:
        return "freezing"
    if value < 0.5:
        return "cold"
    if value < 1.0:
        return "temperate"
    if value < 1.5:
        return "warm"
    return "hot"


def scene_data(state: SceneState, segment: Window | None = None) -> dict[str, Any]:
    """The paper's scene data dictionary for one snapshot, with a segment's aggregates if given."""
    scene: dict[str, Any] = {"Dimension": state.scene.dimension}
    if state.scene.biome.lower() not in UNKNOWN_BIOMES:
        scene = {"Biome": state.scene.biome, **scene}
    health: dict[str, Any] = {"Health": state.health.value, "Max Health": state.health.max}
    if segment is not None:
        if len(segment.biomes) > 1:
            scene["Biomes Visited"] = list(segment.biomes)
        if segment.lowest_health < state.health.value:
            health["Lowest Health"] = segment.lowest_health
        if segment.damage_taken > 0:
            health["Damage Taken"] = segment.damage_taken
    time: dict[str, Any] = {"Phase": state.time.resolved_phase()}
    if state.time.ticks is not None:
        time["Ticks"] = state.time.ticks
    weather: dict[str, Any] = {"State": state.weather.state}
    if state.weather.intensity is not None:
        weather["Intensity"] = state.weather.intensity
    position: dict[str, Any] = {"X": state.position.x, "Y": state.position.y, "Z": state.position.z}
    if state.position.depth > 0:
        position["Depth Underground"] = state.position.depth
    hostiles: dict[str, Any] = {}
    for hostile in sorted(state.hostiles, key=lambda h: h.distance):
        hostiles.setdefault(title(hostile.name), hostile.distance)
    attacked: dict[str, Any] = {}
    if state.attacked is not None and state.attacked.damage > 0:
        attacked = {"Damage": state.attacked.damage, "Seconds Ago": state.attacked.seconds_ago}
        if state.attacked.attacker:
            attacked["Attacker"] = state.attacked.attacker
    elif segment is not None and segment.attackers:
        attacked = {"Attackers This Segment": list(segment.attackers)}
    data: dict[str, Any] = {
        "Scene": scene,
        "Time": time,
        "Weather": weather,
        "Temperature": {"Value": state.temperature, "Feel": temperature_feel(state.temperature)},
        "Health": health,
        "Satiety": {"Food": state.hunger.food, "Saturation": state.hunger.saturation},
        "Status": {title(k): v for k, v in state.flags().items()},
        "Movement": {"State": state.movement.state, "Speed": state.movement.speed},
        "Position": position,
        "Hostile Entity": hostiles,
        "Being Attacked": attacked,
    }
    # The Nether and the End have no day or weather: those groups would tell the stages about a sky
    # that is not there. (Under the ground they stay: a narrative may say what happens above.)
    if state.scene.dimension != "overworld":
        del data["Time"], data["Weather"]
    return data
