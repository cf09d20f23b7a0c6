"""Algorithm 1: negatives dropped, two decimals, the combat and exploration key sets."""

from __future__ import annotations

from metabgm_edge.characterize import (
    COMBAT_KEYS,
    EXPLORATION_KEYS,
    characterize,
    in_combat,
    info_str,
    is_negative,
    scene_data,
)
from metabgm_edge.state import state_from_dict

PAPER_STYLE = {
    "Scene": {"Biome": "gravel_hills", "Dimension": "overworld"},
    "Time": {"Phase": "day", "Ticks": 6000},
    "Weather": {"State": "clear", "Not Raining": True},
    "Temperature": {"Value": 0.20000000298023224},
    "Health": {"Health": 19.333333333333332, "Max Health": 20.0},
    "Satiety": {"Food": 18, "Saturation": 4.999999},
    "Status": {"Not On Fire": True, "Not Sneaking": True, "Sprinting": True, "In Water": False},
    "Movement": {"State": "walking", "Speed": 4.317000007629395},
    "Position": {"X": 120.71234567, "Y": 64.0, "Z": -33.456789},
    "Hostile Entity": {"Zombie": 4.12345},
    "Being Attacked": {"Damage": 2.0, "Attacker": "zombie", "Not Blocking": True},
    "Version": 3,
}


def test_negative_pairs_are_dropped() -> None:
    out = characterize(PAPER_STYLE, combat=False)
    assert out["Status"] == {"Sprinting": True}
    assert "Not Raining" not in out["Weather"]


def test_numbers_keep_two_decimals() -> None:
    out = characterize(PAPER_STYLE, combat=False)
    assert out["Temperature"]["Value"] == 0.2
    assert out["Movement"]["Speed"] == 4.32
    assert out["Position"] == {"X": 120.71, "Y": 64.0, "Z": -33.46}
    assert out["Time"]["Ticks"] == 6000 and isinstance(out["Time"]["Ticks"], int)


def test_exploration_key_set() -> None:
    out = characterize(PAPER_STYLE, combat=False)
    assert tuple(out) == EXPLORATION_KEYS
    assert "Hostile Entity" not in out and "Health" not in out


def test_combat_key_set() -> None:
    out = characterize(PAPER_STYLE, combat=True)
    assert tuple(out) == COMBAT_KEYS
    assert out["Health"] == {"Health": 19.33, "Max Health": 20.0}
    assert out["Being Attacked"] == {"Damage": 2.0, "Attacker": "zombie"}
    assert "Weather" not in out and "Time" not in out


def test_non_dict_top_level_values_are_not_kept() -> None:
    assert "Version" not in characterize(PAPER_STYLE, combat=False)


def test_not_is_matched_as_a_word() -> None:
    assert is_negative("Not On Fire", True)
    assert is_negative("not_sneaking", True)
    assert is_negative("notSneaking", True)
    assert is_negative("Burning", False)
    assert not is_negative("Nothing Nearby", True)
    assert not is_negative("Knotted Rope", True)
    assert not is_negative("Health", 0.0)


def test_combat_rule() -> None:
    calm = state_from_dict({"hostiles": [{"name": "zombie", "distance": 20.0}]})
    near = state_from_dict({"hostiles": [{"name": "zombie", "distance": 3.0}]})
    hit = state_from_dict({"attacked": {"damage": 2.0, "attacker": "skeleton", "seconds_ago": 1.0}})
    old_hit = state_from_dict({"attacked": {"damage": 2.0, "attacker": "skeleton", "seconds_ago": 60.0}})
    assert not in_combat(calm)
    assert in_combat(near)
    assert in_combat(hit)
    assert not in_combat(old_hit)


def test_protocol_message_to_info_str() -> None:
    state = state_from_dict(
        {
            "scene": {"biome": "dark_forest"},
            "time": {"ticks": 18000},
            "weather": {"state": "rain"},
            "status": ["not on fire", "sprinting"],
            "position": {"x": 1.23456, "y": 70.0, "z": -2.0, "depth": 0.0},
        }
    )
    out = characterize(scene_data(state), in_combat(state))
    text = info_str(out)
    assert "Biome: dark forest" in text  # ids read as words in the prompt
    assert "Phase: night" in text
    assert "Sprinting: yes" in text
    assert "Not On Fire" not in text
    assert "X: 1.23" in text
