"""Hostile input for the live-state validator: whatever arrives, parse_message answers with a state
or a MessageError with a known reason code, never with another exception (which would reach the
listener thread) and never with a state that cannot be encoded again."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from metabgm_edge.errors import MessageError
from metabgm_edge.state import MAX_DEPTH, MAX_MESSAGE_BYTES, encode_state, parse_message

REASONS = {
    "malformed_json",
    "not_an_object",
    "too_deep",
    "non_finite",
    "unknown_version",
    "invalid_field",
    "bad_token",
    "oversized",
    "invalid_utf8",
}

EXAMPLE: dict[str, Any] = {
    "v": 1,
    "token": "tok",
    "scene": {"biome": "forest", "dimension": "overworld"},
    "time": {"ticks": 18000},
    "weather": {"state": "rain"},
    "temperature": 0.7,
    "health": {"value": 14, "max": 20},
    "hunger": {"food": 17, "saturation": 2.5},
    "status": {"on_fire": False, "not_sneaking": True, "sprinting": True},
    "movement": {"state": "running", "speed": 5.6},
    "position": {"x": 10.5, "y": 64, "z": -3.25, "depth": 0},
    "hostiles": [{"name": "zombie", "distance": 4.2}],
    "attacked": {"damage": 3, "attacker": "zombie", "seconds_ago": 0.5},
}
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, "", "x" * 200, "\u0000",
    "\u202e", "🎵", [], {}, [[[]]], {"a": {"b": {}}}, [None] * 50,
]  # fmt: skip
ODD_BYTES = [
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b"\\",
    b'"',
    b"\\ud800",
    b"\\u0000",
    b"NaN",
    b"-",
    b"1e999",
]


def check(data: bytes, token: str | None = "tok") -> None:
    try:
        state, _ = parse_message(data, token=token)
    except MessageError as exc:
        assert exc.reason in REASONS, exc.reason
        return
    # Accepted: it must survive a trip through the encoder (the rest of the runtime re-encodes it).
    again, _ = parse_message(encode_state(state), token=None)
    assert again == state


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaves(v, (*path, i))] or [path]
    return [path]


def replaced(message: dict[str, Any], path: tuple[Any, ...], new: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(message))
    target = copy
    for key in path[:-1]:
        target = target[key]
    if path:
        target[path[-1]] = new
    return copy


def test_the_example_is_valid() -> None:
    state, envelope = parse_message(json.dumps(EXAMPLE), token="tok")
    assert state.scene.biome == "forest" and envelope.token == "tok"


@pytest.mark.parametrize("seed", range(4))
def test_byte_level_mutations_never_escape(seed: int) -> None:
    rng = random.Random(seed)
    base = json.dumps(EXAMPLE, separators=(",", ":")).encode()
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            at = rng.randrange(len(data) + 1)
            if op < 0.3 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op < 0.5:
                del data[at : at + rng.randint(1, 8)]
            elif op < 0.8:
                data[at:at] = rng.choice(ODD_BYTES)
            else:
                data = data[:at]
        check(bytes(data))


def test_every_field_with_every_odd_value() -> None:
    paths = leaves(EXAMPLE)
    assert len(paths) > 20
    for path in paths:
        for value in ODD_VALUES:
            check(json.dumps(replaced(EXAMPLE, path, value)).encode())


def test_odd_values_as_extra_fields_and_invalid_text_inside_strings() -> None:
    for value in ODD_VALUES:
        check(json.dumps({**EXAMPLE, "mod_data": value}).encode())
    for raw in ODD_BYTES:
        # Bytes that are not valid UTF-8 (or escapes of lone surrogates) inside an extra field and the token.
        check(b'{"v":1,"token":"tok","note":"a' + raw + b'b"}')
        check(b'{"v":1,"token":"t' + raw + b'k"}')


def test_depth_limit_and_size_limit_hold_at_their_edges() -> None:
    def nested(levels: int) -> bytes:
        return json.dumps({**EXAMPLE, "mod_data": json.loads("[" * levels + "]" * levels)}).encode()

    parse_message(nested(MAX_DEPTH - 1), token="tok")
    with pytest.raises(MessageError) as info:
        parse_message(nested(MAX_DEPTH + 1), token="tok")
    assert info.value.reason == "too_deep"
    with pytest.raises(MessageError) as info:
        parse_message(b"[" * 100_000, token="tok")
    assert info.value.reason == "oversized"
    with pytest.raises(MessageError) as info:
        parse_message(b"[" * (MAX_MESSAGE_BYTES - 1), token="tok")
    assert info.value.reason in {"too_deep", "malformed_json"}
