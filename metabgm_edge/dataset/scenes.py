"""The scenario grid of the paper's Section III-A: synthesized scenes, seeded.

A scene is one *cell* of the grid, a choice along each axis the paper names: biome (and so its
dimension and temperature), time of day, weather, health, hunger, status flags, movement and the
hostile mobs around (none, far off, close, attacking). :func:`draw_cell` draws a cell the way the
game makes them (snow only where it is cold, no rain in deserts or the Nether, hostiles more
often at night and underground, swimming only in water, sleeping only at night), optionally under
constraints (the archetypes that reverse generation matches captions to). :func:`make_state`
turns a cell into a live-state message with the noise of real game data (double precision,
"not on fire" flags, positions), so the runtime reads a synthesized scene exactly as a live one.

A cell's key (:attr:`Cell.key`) leaves out the exact numbers: two draws of the same cell are the
same scene for the split (:func:`metabgm_edge.dataset.pairs.split_of`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from metabgm_edge.characterize import in_combat
from metabgm_edge.state import SceneState, state_from_dict


@dataclass(frozen=True)
class Biome:
    id: str
    dimension: str = "overworld"
    temperature: float = 0.8
    y: float = 70.0
    underground: bool = False
    rain: bool = True
    """False where it never rains (deserts, badlands, savanna, the Nether, the End, caves)."""
    water: bool = False
    mobs: tuple[str, ...] = ("zombie", "skeleton", "creeper", "spider")


_OVER: Final = ("zombie", "skeleton", "creeper", "spider", "enderman", "witch")
BIOMES: Final[tuple[Biome, ...]] = (
    Biome("plains"), Biome("sunflower_plains"), Biome("meadow", temperature=0.5, y=110.0),
    Biome("forest", temperature=0.7), Biome("birch_forest", temperature=0.6),
    Biome("flower_forest", temperature=0.7), Biome("dark_forest", temperature=0.7),
    Biome("cherry_grove", temperature=0.5, y=120.0), Biome("taiga", temperature=0.25),
    Biome("snowy_taiga", temperature=-0.5, mobs=("stray", "zombie", "skeleton", "spider")),
    Biome("snowy_plains", temperature=0.0, mobs=("stray", "zombie", "creeper", "spider")),
    Biome("ice_spikes", temperature=0.0, mobs=("stray", "zombie", "creeper")),
    Biome("frozen_peaks", temperature=-0.7, y=200.0, mobs=("stray", "skeleton", "creeper")),
    Biome("jagged_peaks", temperature=-0.7, y=220.0, mobs=("stray", "skeleton")),
    Biome("stony_peaks", temperature=1.0, y=190.0), Biome("windswept_hills", temperature=0.2, y=130.0),
    Biome("desert", temperature=2.0, rain=False, mobs=("husk", "skeleton", "creeper", "spider")),
    Biome("badlands", temperature=2.0, rain=False, y=90.0), Biome("savanna", temperature=2.0, rain=False),
    Biome("jungle", temperature=0.95, mobs=("zombie", "skeleton", "creeper", "spider", "witch")),
    Biome("bamboo_jungle", temperature=0.95), Biome("swamp", mobs=("slime", "witch", "zombie", "drowned")),
    Biome("mangrove_swamp", mobs=("slime", "witch", "drowned")), Biome("beach", y=63.0, water=True),
    Biome("ocean", temperature=0.5, y=62.0, water=True, mobs=("drowned", "guardian")),
    Biome("deep_ocean", temperature=0.5, y=62.0, water=True, mobs=("drowned", "guardian")),
    Biome("warm_ocean", temperature=0.5, y=62.0, water=True, mobs=("drowned",)),
    Biome("frozen_ocean", temperature=0.0, y=62.0, water=True, mobs=("drowned", "stray")),
    Biome("river", temperature=0.5, y=62.0, water=True, mobs=("drowned", "zombie")),
    Biome("mushroom_fields", temperature=0.9, mobs=()),
    Biome("dripstone_caves", y=20.0, underground=True, rain=False, mobs=(*_OVER[:4], "drowned")),
    Biome("lush_caves", temperature=0.5, y=30.0, underground=True, rain=False, mobs=("zombie", "skeleton")),
    Biome("deep_dark", y=-40.0, underground=True, rain=False, mobs=("warden", "skeleton", "zombie")),
    Biome("nether_wastes", "the_nether", 2.0, 40.0, rain=False,
          mobs=("ghast", "zombified_piglin", "magma_cube", "enderman")),
    Biome("crimson_forest", "the_nether", 2.0, 60.0, rain=False,
          mobs=("piglin", "hoglin", "zombified_piglin")),
    Biome("warped_forest", "the_nether", 2.0, 60.0, rain=False, mobs=("enderman",)),
    Biome("soul_sand_valley", "the_nether", 2.0, 40.0, rain=False, mobs=("ghast", "skeleton")),
    Biome("basalt_deltas", "the_nether", 2.0, 50.0, rain=False, mobs=("magma_cube", "ghast")),
    Biome("the_end", "the_end", 0.5, 64.0, rain=False, mobs=("enderman", "ender_dragon")),
    Biome("end_highlands", "the_end", 0.5, 70.0, rain=False, mobs=("enderman", "shulker")),
)  # fmt: skip
BIOME_BY_ID: Final = {b.id: b for b in BIOMES}

PHASE_TICKS: Final = {
    "dawn": (23000, 24999),
    "day": (1000, 11999),
    "dusk": (12000, 12999),
    "night": (13000, 22999),
}
HEALTH_BANDS: Final = {"full": (18.0, 20.0), "hurt": (8.0, 15.0), "low": (1.0, 6.0)}
HUNGER_BANDS: Final = {"fed": (17.0, 20.0), "peckish": (8.0, 16.0), "starving": (0.0, 5.0)}
HOSTILE_MODES: Final = ("none", "far", "close", "attacked")
"""none; far: 12-40 blocks away (exploration); close: within 8 blocks (combat); attacked: close and
hitting the player (combat)."""
MOVES: Final = ("still", "walking", "running", "sneaking", "swimming", "riding", "falling")
SPEED: Final = {"still": 0.0, "walking": 4.3, "running": 5.6, "sneaking": 1.3, "swimming": 2.2,
                "riding": 8.0, "falling": 9.0}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    biome: str
    phase: str
    weather: str
    health: str
    hunger: str
    move: str
    flags: tuple[str, ...]
    hostiles: str
    mobs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return "|".join(
            (self.biome, self.phase, self.weather, self.health, self.hunger, self.move, ",".join(self.flags),
             self.hostiles, ",".join(self.mobs))
        )  # fmt: skip


@dataclass(frozen=True)
class Constraints:
    """What a scene must be (each empty tuple: anything the game allows)."""

    biomes: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    weathers: tuple[str, ...] = ()
    health: tuple[str, ...] = ()
    hostiles: tuple[str, ...] = ()
    moves: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    """Flags that must be set."""


ANY: Final = Constraints()


def _weathers(biome: Biome) -> tuple[tuple[str, float], ...]:
    if not biome.rain:
        return (("clear", 1.0),)
    if biome.temperature < 0.15:
        return (("clear", 0.55), ("snow", 0.45))
    return (("clear", 0.6), ("rain", 0.28), ("thunder", 0.12))


def _pick(rng: random.Random, options: Sequence[tuple[str, float]], allowed: Sequence[str]) -> str | None:
    usable = [(o, w) for o, w in options if not allowed or o in allowed]
    if not usable:
        return None
    return rng.choices([o for o, _ in usable], [w for _, w in usable])[0]


def draw_cell(rng: random.Random, want: Constraints = ANY, *, tries: int = 200) -> Cell:
    """One cell the game could produce, within ``want``. Raises ValueError if none can be drawn."""
    for _ in range(tries):
        cell = _draw(rng, want)
        if cell is not None:
            return cell
    raise ValueError(f"no scene satisfies {want}")


def _draw(rng: random.Random, want: Constraints) -> Cell | None:
    biomes = [b for b in BIOMES if not want.biomes or b.id in want.biomes]
    if not biomes:
        return None
    # Overworld surface scenes are most of a session; weigh the dimensions like play time.
    weights = [0.35 if b.dimension != "overworld" else 0.6 if b.underground else 1.0 for b in biomes]
    biome = rng.choices(biomes, weights)[0]
    phase = _pick(rng, (("dawn", 0.12), ("day", 0.43), ("dusk", 0.12), ("night", 0.33)), want.phases)
    weather = _pick(rng, _weathers(biome), want.weathers)
    health = _pick(rng, (("full", 0.6), ("hurt", 0.28), ("low", 0.12)), want.health)
    hunger = _pick(rng, (("fed", 0.6), ("peckish", 0.3), ("starving", 0.1)), ())
    dark = phase in ("night", "dusk") or biome.underground or biome.dimension != "overworld"
    hostile_weights = (0.45, 0.25, 0.15, 0.15) if dark else (0.8, 0.12, 0.04, 0.04)
    if not biome.mobs:
        hostile_weights = (1.0, 0.0, 0.0, 0.0)
    hostiles = _pick(rng, list(zip(HOSTILE_MODES, hostile_weights, strict=True)), want.hostiles)
    if None in (phase, weather, health, hunger, hostiles):
        return None
    assert phase and weather and health and hunger and hostiles
    fight = hostiles in ("close", "attacked")
    if biome.water:
        moves = (("swimming", 0.6), ("still", 0.2), ("walking", 0.2))
    elif fight:
        moves = (("running", 0.6), ("walking", 0.25), ("still", 0.15))
    elif biome.underground:
        moves = (("sneaking", 0.35), ("walking", 0.45), ("still", 0.15), ("falling", 0.05))
    else:
        moves = (("walking", 0.45), ("running", 0.2), ("still", 0.2), ("riding", 0.1), ("sneaking", 0.05))
    move = _pick(rng, moves, want.moves)
    if move is None:
        return None
    flags = set(want.flags)
    if move == "running":
        flags.add("sprinting")
    if move == "sneaking":
        flags.add("sneaking")
    if move == "swimming":
        flags.update(("swimming", "in_water"))
    if biome.dimension == "the_nether" and rng.random() < 0.15:
        flags.add("on_fire")
    if phase == "night" and move == "still" and not fight and not biome.underground and rng.random() < 0.2:
        flags.add("sleeping")
    mobs: tuple[str, ...] = ()
    if hostiles != "none":
        count = 1 if hostiles == "far" and rng.random() < 0.6 else rng.randint(1, 3)
        mobs = tuple(sorted(rng.choice(biome.mobs) for _ in range(count)))
    return Cell(biome.id, phase, weather, health, hunger, move, tuple(sorted(flags)), hostiles, mobs)


def make_state(cell: Cell, rng: random.Random) -> SceneState:
    """The live-state message of a cell, with exact numbers drawn from ``rng``."""
    biome = BIOME_BY_ID[cell.biome]
    lo, hi = PHASE_TICKS[cell.phase]
    ticks = rng.randint(lo, hi) % 24000
    health = round(rng.uniform(*HEALTH_BANDS[cell.health]) * 2) / 2
    food = float(rng.randint(*(int(v) for v in HUNGER_BANDS[cell.hunger])))
    status = {flag: True for flag in cell.flags}
    for noise in ("on_fire", "sneaking", "sprinting"):  # real data says what is not happening too
        if noise not in status and rng.random() < 0.5:
            status[f"not_{noise}"] = True
    hostiles = []
    attacked = None
    for name in cell.mobs:
        near, far = (12.0, 40.0) if cell.hostiles == "far" else (1.5, 7.9)
        hostiles.append({"name": name, "distance": rng.uniform(near, far)})
    if cell.hostiles == "attacked":
        attacker = min(hostiles, key=lambda h: h["distance"])["name"]
        attacked = {
            "damage": float(rng.randint(1, 6)),
            "attacker": attacker,
            "seconds_ago": rng.uniform(0, 3),
        }
    weather: dict[str, object] = {"state": cell.weather}
    if cell.weather != "clear":
        weather["intensity"] = round(rng.uniform(0.3, 1.0), 2)
    speed = SPEED[cell.move] * rng.uniform(0.9, 1.1)
    message = {
        "scene": {"biome": cell.biome, "dimension": biome.dimension},
        "time": {"ticks": ticks},
        "weather": weather,
        "temperature": biome.temperature,
        "health": {"value": max(health, 0.5), "max": 20.0},
        "hunger": {"food": food, "saturation": round(rng.uniform(0.0, 5.0), 6)},
        "status": status,
        "movement": {"state": cell.move, "speed": speed},
        "position": {
            "x": rng.uniform(-3000, 3000),
            "y": biome.y + rng.uniform(-3, 3),
            "z": rng.uniform(-3000, 3000),
            "depth": round(rng.uniform(12, 60), 1) if biome.underground else 0.0,
        },
        "hostiles": hostiles,
    }
    if attacked:
        message["attacked"] = attacked
    return state_from_dict(message)


@dataclass(frozen=True)
class Scene:
    cell: Cell
    state: SceneState

    @property
    def combat(self) -> bool:
        return in_combat(self.state)


@dataclass
class SceneGrid:
    """Draws scenes from the grid with one seeded generator (same seed, same scenes).

    ``unique=True`` (synthesized scenes) never returns a cell twice; reverse generation lets
    several captions share a scene, as several pieces of music suit one place.
    """

    seed: int
    purpose: str = "scenes"
    """Part of the generator's seed, so the scenes of reverse pairs are not those of ``dataset scenes``."""
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"metabgm-{self.purpose}|{self.seed}")

    def draw(
        self, want: Constraints = ANY, accept: Callable[[Cell], bool] = lambda _: True, *, unique: bool = True
    ) -> Scene:
        for _ in range(5000):
            cell = draw_cell(self.rng, want)
            if (unique and cell.key in self.seen) or not accept(cell):
                continue
            self.seen.add(cell.key)
            return Scene(cell, make_state(cell, self.rng))
        raise ValueError(f"could not draw a{' new' if unique else ''} scene for {want}")


def scene_grid(n: int, seed: int) -> list[Scene]:
    """``n`` distinct scenes of the grid, the same for the same seed."""
    grid = SceneGrid(seed)
    return [grid.draw() for _ in range(n)]


def cell_key(scene: Scene) -> str:
    return f"scene:{scene.cell.key}"
