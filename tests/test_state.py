"""The live-state protocol: schema, round trip, negative phrasing, extras, rejection reasons."""

from __future__ import annotations

import json

import msgspec
import pytest

from metabgm_edge.errors import MessageError
from metabgm_edge.state import (
    MAX_MESSAGE_BYTES,
    SceneState,
    encode_state,
    example_message,
    json_schema,
    parse_message,
    phase_of_ticks,
)


def test_example_message_round_trips() -> None:
    raw = json.dumps(example_message()).encode()
    state, envelope = parse_message(raw)
    assert envelope.t == 12.5
    again, _ = parse_message(encode_state(state))
    assert again == state
    assert state.extra == {"held_item": "iron_sword"}


def test_schema_describes_every_group() -> None:
    schema = json_schema()
    props = schema["$defs"]["SceneState"]["properties"]
    for group in ("scene", "time", "weather", "temperature", "health", "hunger", "status", "movement",
                  "position", "hostiles", "attacked", "extra"):  # fmt: skip
        assert group in props


def test_schema_accepts_the_example_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    message = example_message()
    message.pop("t")
    jsonschema.validate(message, json_schema())


def test_unknown_fields_are_kept_in_extra() -> None:
    state, _ = parse_message(b'{"v":1,"mod_name":"mymod","combo":7}')
    assert state.extra == {"mod_name": "mymod", "combo": 7}


def test_negative_flags_and_double_precision_are_accepted() -> None:
    state, _ = parse_message(
        b'{"v":1,"status":{"not_on_fire":true,"Sprinting":true},"position":{"x":0.30000000000000004}}'
    )
    assert state.flag("sprinting")
    assert not state.flag("on_fire")
    assert state.position.x == 0.30000000000000004


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"v":1,', "malformed_json"),
        (b'{"v":1,"temperature":NaN}', "malformed_json"),
        (b'{"v":1,"temperature":1e999}', "malformed_json"),
        (b'{"v":1,"extra":{"x":1e999}}', "malformed_json"),
        (b'[{"v":1}]', "not_an_object"),
        (b'{"v":2}', "unknown_version"),
        (b'{"scene":{}}', "unknown_version"),
        (b'{"v":1,"health":{"value":"full"}}', "invalid_field"),
        (b'{"v":1,"health":{"value":-3}}', "invalid_field"),
        (b'{"v":1,"scene":{"biome":"forest","colour":"green"}}', "invalid_field"),
        (b'{"v":1,"extra":' + b'{"a":' * 12 + b"1" + b"}" * 12 + b"}", "too_deep"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"v":1,"pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}', "oversized"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_message(raw)
    assert info.value.reason == reason


def test_token() -> None:
    parse_message(b'{"v":1,"token":"s3cret"}', token="s3cret")
    for raw in (b'{"v":1}', b'{"v":1,"token":"wrong"}'):
        with pytest.raises(MessageError) as info:
            parse_message(raw, token="s3cret")
        assert info.value.reason == "bad_token"


def test_phase_of_ticks() -> None:
    assert [phase_of_ticks(t) for t in (0, 6000, 12500, 18000, 23500, 30000)] == [
        "dawn", "day", "dusk", "night", "dawn", "day",
    ]  # fmt: skip


def test_defaults_fill_missing_groups() -> None:
    state = msgspec.convert({"v": 1}, SceneState)
    assert state.health.value == 20.0 and state.weather.state == "clear"
