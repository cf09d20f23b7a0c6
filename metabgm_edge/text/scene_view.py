"""A typed reading of Algorithm 1's output, for the composer rules.

The characterized dictionary has the paper's groups (Scene, Time, Weather, Temperature, Health,
Satiety, Status, Movement, Position, Hostile Entity, Being Attacked) with Title Case inner keys,
and only the combat or the exploration subset of them. :func:`read_scene` turns whatever is there
into a :class:`SceneView`; a missing group leaves its fields ``None``, and a value of the wrong
type is ignored rather than raised on, so a hand-written or odd scene still gets music.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

NETHER_BIOMES = frozenset(
    {"nether_wastes", "crimson_forest", "warped_forest", "soul_sand_valley", "basalt_deltas", "nether"}
)

# (family, words any of which in the biome id selects it), first match wins.
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deep_dark", ("deep_dark",)),
    ("lush_cave", ("lush_cave",)),
    ("cave", ("cave", "caves", "dripstone", "underground", "mine", "mineshaft")),
    ("mushroom", ("mushroom",)),
    ("ocean", ("ocean", "sea", "reef")),
    ("river", ("river", "lake", "stream")),
    ("beach", ("beach", "shore", "coast")),
    ("snow", ("snowy", "snow", "frozen", "ice", "icy", "glacier", "tundra")),
    ("desert", ("desert", "dunes")),
    ("badlands", ("badlands", "mesa", "canyon")),
    ("savanna", ("savanna",)),
    ("jungle", ("jungle", "bamboo", "rainforest")),
    ("swamp", ("swamp", "mangrove", "marsh", "bog")),
    ("cherry", ("cherry",)),
    ("meadow", ("meadow",)),
    ("taiga", ("taiga", "grove")),
    ("mountain", ("peaks", "mountain", "mountains", "hills", "windswept", "slopes", "stony", "highlands")),
    ("forest", ("forest", "woods", "woodland")),
    ("plains", ("plains", "sunflower", "field", "fields", "grassland")),
)


@dataclass(frozen=True)
class SceneView:
    combat: bool
    biome: str = "plains"
    """Readable biome name ("dark forest")."""
    biome_id: str = "plains"
    dimension: str = "overworld"
    """overworld, nether or end."""
    family: str = "plains"
    phase: str | None = None
    weather: str | None = None
    feel: str | None = None
    health: float | None = None
    max_health: float | None = None
    lowest_health: float | None = None
    damage_taken: float | None = None
    food: float | None = None
    flags: frozenset[str] = frozenset()
    movement: str | None = None
    speed: float | None = None
    y: float | None = None
    depth: float = 0.0
    hostiles: tuple[tuple[str, float], ...] = ()
    attacker: str | None = None
    damage: float | None = None
    biomes_visited: tuple[str, ...] = ()

    @property
    def underground(self) -> bool:
        return self.dimension == "overworld" and (
            self.depth > 0 or self.family in ("cave", "lush_cave", "deep_dark")
        )

    @property
    def in_water(self) -> bool:
        return bool(self.flags & {"in_water", "swimming", "underwater"}) or self.movement == "swimming"

    @property
    def health_ratio(self) -> float | None:
        if self.health is None:
            return None
        top = self.max_health if self.max_health and self.max_health > 0 else 20.0
        return max(0.0, min(1.0, self.health / top))

    @property
    def nearest(self) -> float | None:
        return min((d for _, d in self.hostiles), default=None)

    def moving(self, *kinds: str) -> bool:
        return self.movement in kinds or any(k in self.flags for k in kinds)


def plain_name(value: Any) -> str:
    """``minecraft:dark_forest`` -> ``dark forest``; non-strings give an empty string."""
    if not isinstance(value, str):
        return ""
    value = value.rsplit(":", 1)[-1]
    words = re.findall(r"[a-z0-9]+", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", value).lower())
    return " ".join(words)[:40].strip()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _group(characterized: Any, name: str) -> dict[str, Any]:
    group = characterized.get(name) if isinstance(characterized, dict) else None
    return group if isinstance(group, dict) else {}


def family_of(biome_id: str, dimension: str) -> str:
    if dimension in ("nether", "end"):
        return dimension
    words = set(biome_id.split("_")) | {biome_id}
    joined = biome_id
    for family, keys in _FAMILIES:
        if any(k in words or ("_" in k and k in joined) for k in keys):
            return family
    return "plains"


def _dimension(raw: str, biome_id: str) -> str:
    if "nether" in raw or biome_id in NETHER_BIOMES:
        return "nether"
    if (
        raw in ("end", "the end")
        or biome_id == "the_end"
        or biome_id.startswith("end_")
        or (biome_id.endswith("end_islands"))
    ):
        return "end"
    return "overworld"


def read_scene(characterized: Any, combat: bool) -> SceneView:
    scene = _group(characterized, "Scene")
    biome = plain_name(scene.get("Biome")) or "plains"
    biome_id = biome.replace(" ", "_")
    dimension = _dimension(plain_name(scene.get("Dimension")), biome_id)
    time = _group(characterized, "Time")
    weather = _group(characterized, "Weather")
    temperature = _group(characterized, "Temperature")
    health = _group(characterized, "Health")
    satiety = _group(characterized, "Satiety")
    movement = _group(characterized, "Movement")
    position = _group(characterized, "Position")
    attacked = _group(characterized, "Being Attacked")

    phase = plain_name(time.get("Phase")) or None
    state = plain_name(weather.get("State")) or None
    feel = plain_name(temperature.get("Feel")) or None
    flags = frozenset(
        plain_name(k).replace(" ", "_")
        for k, v in _group(characterized, "Status").items()
        if v is True or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0)
    )
    hostiles = []
    for name, distance in _group(characterized, "Hostile Entity").items():
        d = _number(distance)
        if plain_name(name) and d is not None and d >= 0:
            hostiles.append((plain_name(name), d))
    hostiles.sort(key=lambda item: item[1])
    attacker = plain_name(attacked.get("Attacker")) or None
    if attacker is None and isinstance(attacked.get("Attackers This Segment"), list):
        names = [plain_name(a) for a in attacked["Attackers This Segment"] if plain_name(a)]
        attacker = names[0] if names else None
    visited = scene.get("Biomes Visited")
    biomes_visited = (
        tuple(plain_name(b) for b in visited if plain_name(b))[:6] if isinstance(visited, list) else ()
    )
    depth = _number(position.get("Depth Underground")) or 0.0
    return SceneView(
        combat=bool(combat),
        biome=biome,
        biome_id=biome_id,
        dimension=dimension,
        family=family_of(biome_id, dimension),
        phase=phase if phase in ("dawn", "day", "dusk", "night") else None,
        weather=state if state in ("clear", "rain", "thunder", "snow") else None,
        feel=feel if feel in ("freezing", "cold", "temperate", "warm", "hot") else None,
        health=_number(health.get("Health")),
        max_health=_number(health.get("Max Health")),
        lowest_health=_number(health.get("Lowest Health")),
        damage_taken=_number(health.get("Damage Taken")),
        food=_number(satiety.get("Food")),
        flags=flags,
        movement=plain_name(movement.get("State")) or None,
        speed=_number(movement.get("Speed")),
        y=_number(position.get("Y")),
        depth=max(0.0, depth),
        hostiles=tuple(hostiles[:8]),
        attacker=attacker,
        damage=_number(attacked.get("Damage")),
        biomes_visited=biomes_visited,
    )
