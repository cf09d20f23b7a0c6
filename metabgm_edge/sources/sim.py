"""A seeded simulator of a Minecraft-like session.

``sim:NAME`` plays one scenario for ever; ``sim:tour`` runs through all of them in turn with
continuity (position, health and hunger carry over). ``?leg=SECONDS`` sets the length of each
tour leg (default 30). The simulation advances in fixed 0.5 s ticks from a seeded generator, so
the same seed gives the same session whatever the sampling, and it runs as fast as the clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs

from metabgm_edge.errors import SourceError
from metabgm_edge.sources import Source
from metabgm_edge.state import (
    Attacked,
    Health,
    Hostile,
    Hunger,
    MoveKind,
    Movement,
    Position,
    Scene,
    SceneState,
    TimeOfDay,
    Weather,
    WeatherKind,
)

TICK: Final = 0.5
SPEED: Final[dict[str, float]] = {
    "still": 0.0, "walking": 4.3, "running": 5.6, "sneaking": 1.3, "swimming": 2.2, "falling": 9.0,
    "flying": 10.9, "riding": 8.0,
}  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    biome: str
    ticks: int
    """Time of day at the start of the leg."""
    ticks_end: int | None = None
    """Time of day reached at the end of the leg; None: the game's own 20 ticks per second."""
    dimension: str = "overworld"
    weather: tuple[WeatherKind, ...] = ("clear",)
    """Weather over the leg, in equal parts."""
    temperature: float = 0.8
    y: float = 70.0
    depth: float = 0.0
    moves: tuple[MoveKind, ...] = ("walking", "still")
    hostiles: tuple[tuple[str, float, float], ...] = ()
    """(name, nearest, farthest) distance in blocks."""
    hit_rate: float = 0.0
    """Hits taken per second."""
    hit_damage: float = 3.0
    flags: dict[str, float] = field(default_factory=dict)
    """Flag -> probability per tick of being set."""


SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario("forest", "a peaceful day in a forest", "forest", ticks=2000, temperature=0.7),
        Scenario(
            "nightfall", "dusk turns to night on the plains; mobs gather in the distance", "plains",
            ticks=11000, ticks_end=15000, hostiles=(("zombie", 24.0, 40.0), ("skeleton", 30.0, 48.0)),
        ),
        Scenario(
            "storm", "rain, then thunder, over a taiga; the player runs for shelter", "taiga",
            ticks=8000, weather=("rain", "thunder", "thunder"), temperature=0.25,
            moves=("running", "walking"), flags={"sprinting": 0.6},
        ),
        Scenario(
            "cave", "deep underground, lit by torches, a skeleton somewhere in the dark", "mountains",
            ticks=6000, y=18.0, depth=42.0, temperature=0.2, moves=("sneaking", "walking", "still"),
            hostiles=(("skeleton", 14.0, 26.0),), flags={"sneaking": 0.5},
        ),
        Scenario(
            "combat", "night, zombies close in, health falls", "plains", ticks=18000,
            hostiles=(("zombie", 1.5, 6.0), ("zombie", 3.0, 9.0), ("skeleton", 7.0, 14.0)),
            hit_rate=0.4, hit_damage=3.0, moves=("running", "walking"), flags={"sprinting": 0.5},
        ),
        Scenario(
            "nether", "the nether wastes: lava seas, heat, a ghast far off", "nether_wastes", ticks=6000,
            ticks_end=6000, dimension="the_nether", temperature=2.0, y=40.0,
            hostiles=(("ghast", 20.0, 40.0),), flags={"on_fire": 0.1},
        ),
        Scenario("desert", "noon heat over desert dunes", "desert", ticks=6000, temperature=2.0),
        Scenario(
            "snow", "snowfall on a frozen tundra", "snowy_tundra", ticks=4000, weather=("snow",),
            temperature=0.0,
        ),
        Scenario(
            "ocean", "swimming across a calm ocean", "ocean", ticks=5000, temperature=0.5, y=62.0,
            moves=("swimming",), flags={"in_water": 1.0, "swimming": 1.0},
        ),
    )
}  # fmt: skip
TOUR: Final = ("forest", "nightfall", "storm", "cave", "combat", "nether")


def scenario_names() -> list[str]:
    return [*SCENARIOS, "tour"]


class SimSource(Source):
    def __init__(self, spec: str, *, seed: int = 0) -> None:
        super().__init__()
        name, _, query = spec.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if name != "tour" and name not in SCENARIOS:
            raise SourceError(f"unknown scenario {name!r}; choose one of: {', '.join(scenario_names())}")
        unknown = set(params) - {"leg"}
        if unknown:
            raise SourceError(f"sim:{name}: unknown parameter(s) {sorted(unknown)}; only 'leg' is known")
        try:
            leg = float(params.get("leg", 30.0))
        except ValueError:
            raise SourceError(f"sim:{name}: leg must be seconds, got {params['leg']!r}") from None
        if not 2.0 <= leg <= 3600.0:
            raise SourceError(f"sim:{name}: leg must be between 2 and 3600 s, got {leg:g}")
        self.uri = f"sim:{spec}"
        self.name = name
        self.leg = leg
        self.legs = TOUR if name == "tour" else (name,)
        self._rng = random.Random(seed)
        self._t = 0.0
        self._health = 20.0
        self._food = 20.0
        self._x, self._z = 0.0, 0.0
        self._state = self._compose(self.scenario_at(0.0), 0.0, "still", [], None, {})

    def scenario_at(self, t: float) -> Scenario:
        if len(self.legs) == 1:
            return SCENARIOS[self.legs[0]]
        return SCENARIOS[self.legs[int(t // self.leg) % len(self.legs)]]

    def sample(self, now: float) -> SceneState | None:
        while self._t + TICK <= now + 1e-9:
            self._t += TICK
            self._state = self._step(self._t)
        return self._state

    def _step(self, t: float) -> SceneState:
        sc = self.scenario_at(t)
        rng = self._rng
        move = rng.choice(sc.moves)
        heading = rng.uniform(0, 2 * math.pi)
        self._x += math.cos(heading) * SPEED[move] * TICK
        self._z += math.sin(heading) * SPEED[move] * TICK
        hostiles = [Hostile(name=n, distance=round(rng.uniform(lo, hi), 6)) for n, lo, hi in sc.hostiles]
        attacked = None
        if sc.hit_rate and rng.random() < sc.hit_rate * TICK and self._health > 4.0:
            dmg = min(sc.hit_damage, self._health - 1.0)
            self._health -= dmg
            attacker = min(hostiles, key=lambda h: h.distance).name if hostiles else "unknown"
            attacked = Attacked(damage=dmg, attacker=attacker, seconds_ago=0.0)
        elif not sc.hit_rate:
            self._health = min(20.0, self._health + 0.25 * TICK)
        self._food = max(0.0, self._food - 0.02 * TICK * (2.0 if move in ("running", "swimming") else 1.0))
        if self._food < 6.0:
            self._food = 20.0  # the player eats
        flags = {k: rng.random() < p for k, p in sc.flags.items()}
        return self._compose(sc, t, move, hostiles, attacked, flags)

    def _compose(
        self,
        sc: Scenario,
        t: float,
        move: MoveKind,
        hostiles: list[Hostile],
        attacked: Attacked | None,
        flags: dict[str, bool],
    ) -> SceneState:
        # Within a tour leg time and weather progress; a single scenario holds its last state.
        leg_t = t % self.leg if len(self.legs) > 1 else min(t, self.leg)
        weather = sc.weather[min(len(sc.weather) - 1, int(leg_t / self.leg * len(sc.weather)))]
        rate = 20.0 if sc.ticks_end is None else (sc.ticks_end - sc.ticks) / self.leg
        # Real game data also says what is *not* happening ("not on fire"): keep that noise.
        status = {k if v else f"not_{k}": True for k, v in flags.items()}
        if "on_fire" not in status:
            status["not_on_fire"] = True
        return SceneState(
            scene=Scene(biome=sc.biome, dimension=sc.dimension),
            time=TimeOfDay(ticks=int(sc.ticks + rate * leg_t) % 24000),
            weather=Weather(state=weather),
            temperature=sc.temperature,
            health=Health(value=self._health, max=20.0),
            hunger=Hunger(food=round(self._food, 6), saturation=2.5),
            status=status,
            movement=Movement(state=move, speed=SPEED[move]),
            position=Position(
                x=self._x + 0.123456789,
                y=sc.y,
                z=self._z - 0.987654321,
                depth=sc.depth,
            ),
            hostiles=hostiles,
            attacked=attacked,
        )
