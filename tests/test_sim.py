"""The simulator: seeded, deterministic, scenario-true, faster than real time."""

from __future__ import annotations

import pytest

from metabgm_edge.errors import SourceError
from metabgm_edge.sources import open_source
from metabgm_edge.sources.sim import SCENARIOS, TOUR, SimSource, scenario_names


def run(uri: str, seconds: float, step: float = 1.0, seed: int = 0) -> list:
    src = open_source(uri, seed=seed)
    src.start()
    out, t = [], 0.0
    while t <= seconds:
        out.append(src.sample(t))
        t += step
    return out


def test_same_seed_same_session_whatever_the_sampling() -> None:
    fine = run("sim:tour?leg=10", 60, step=0.5, seed=7)
    coarse = run("sim:tour?leg=10", 60, step=1.0, seed=7)
    assert coarse == fine[::2]


def test_different_seeds_differ() -> None:
    assert run("sim:combat", 20, seed=1) != run("sim:combat", 20, seed=2)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_runs(name: str) -> None:
    states = run(f"sim:{name}", 30)
    assert all(s is not None and s.scene.biome == SCENARIOS[name].biome for s in states)


def test_scenarios_are_what_they_say() -> None:
    assert all(s.scene.dimension == "the_nether" for s in run("sim:nether", 10))
    assert all(s.position.depth > 20 for s in run("sim:cave", 10))
    combat = run("sim:combat", 30)
    assert min(h.distance for s in combat for h in s.hostiles) < 8
    assert min(s.health.value for s in combat) < 10
    assert {s.weather.state for s in run("sim:storm?leg=30", 30)} >= {"rain", "thunder"}
    night = run("sim:nightfall?leg=30", 30)
    assert night[0].time.resolved_phase() in ("day", "dusk")
    assert night[-1].time.resolved_phase() == "night"


def test_tour_visits_every_scene_in_order() -> None:
    states = run("sim:tour?leg=10", 59, step=1.0)
    biomes = []
    for s in states:
        if not biomes or biomes[-1] != s.scene.biome:
            biomes.append(s.scene.biome)
    assert biomes == [SCENARIOS[n].biome for n in TOUR]


def test_stream_keeps_negative_flags_like_real_game_data() -> None:
    assert any("not_on_fire" in s.flags() for s in run("sim:forest", 5))


def test_errors_name_the_choices() -> None:
    with pytest.raises(SourceError, match="tour"):
        SimSource("volcano")
    with pytest.raises(SourceError, match="leg"):
        SimSource("tour?leg=abc")
    assert "tour" in scenario_names()
