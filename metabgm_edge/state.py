"""The live-state protocol: one snapshot of the player's situation.

A game (or a mod, or the Minecraft connector) sends one JSON object per update. Every group is
optional except ``v``; a sender fills what it knows. Unknown top-level fields are kept in
``extra``. Numbers may arrive with double precision and flags may be phrased negatively
("not_on_fire": true); characterization (Algorithm 1) cleans both up later.

``metabgm-edge schema`` prints the JSON Schema of :class:`SceneState`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

from metabgm_edge.errors import MessageError

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 16 * 1024
MAX_DEPTH: Final = 8
MAX_HOSTILES: Final = 64
MAX_EXTRA_KEYS: Final = 64
DEFAULT_PLAYER: Final = "player"
"""The player a message without ``player`` belongs to (one player per listener, as before)."""
PLAYER_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a player id may be: it names the player's audio stream (``ws://HOST:PORT/PLAYER``)."""

Coordinate = Annotated[float, Meta(ge=-3.0e7, le=3.0e7)]
Small = Annotated[float, Meta(ge=0.0, le=1.0e4)]
Name = Annotated[str, Meta(max_length=64)]
Phase = Literal["dawn", "day", "dusk", "night"]
WeatherKind = Literal["clear", "rain", "thunder", "snow"]
MoveKind = Literal["still", "walking", "running", "sneaking", "falling", "swimming", "flying", "riding"]

TICKS_PER_DAY: Final = 24000


class Scene(Struct, kw_only=True, forbid_unknown_fields=True):
    biome: Name = "plains"
    dimension: Name = "overworld"


class TimeOfDay(Struct, kw_only=True, forbid_unknown_fields=True):
    ticks: Annotated[int, Meta(ge=0, le=TICKS_PER_DAY * 1_000_000)] | None = None
    """Game ticks; the day is 24000 ticks and 0 is sunrise (Minecraft's convention)."""
    phase: Phase | None = None
    """Derived from ``ticks`` when absent."""

    def resolved_phase(self) -> Phase:
        if self.phase is not None:
            return self.phase
        return phase_of_ticks(self.ticks if self.ticks is not None else 6000)


class Weather(Struct, kw_only=True, forbid_unknown_fields=True):
    state: WeatherKind = "clear"
    intensity: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None


class Health(Struct, kw_only=True, forbid_unknown_fields=True):
    value: Small = 20.0
    max: Annotated[float, Meta(gt=0.0, le=1.0e4)] = 20.0


class Hunger(Struct, kw_only=True, forbid_unknown_fields=True):
    food: Annotated[float, Meta(ge=0.0, le=100.0)] = 20.0
    saturation: Annotated[float, Meta(ge=0.0, le=100.0)] = 5.0


class Movement(Struct, kw_only=True, forbid_unknown_fields=True):
    state: MoveKind = "still"
    speed: Annotated[float, Meta(ge=0.0, le=1.0e3)] = 0.0
    """Blocks per second."""


class Position(Struct, kw_only=True, forbid_unknown_fields=True):
    x: Coordinate = 0.0
    y: Annotated[float, Meta(ge=-4096.0, le=4096.0)] = 64.0
    z: Coordinate = 0.0
    depth: Annotated[float, Meta(ge=0.0, le=4096.0)] = 0.0
    """Blocks of solid ground above the player's head (0 under the open sky)."""


class Hostile(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    distance: Annotated[float, Meta(ge=0.0, le=1.0e4)]


class Attacked(Struct, kw_only=True, forbid_unknown_fields=True):
    damage: Small = 0.0
    """Damage taken recently (health points)."""
    attacker: Name | None = None
    seconds_ago: Annotated[float, Meta(ge=0.0, le=1.0e6)] = 0.0


StatusFlags = dict[Name, bool] | list[Name]


class SceneState(Struct, kw_only=True, forbid_unknown_fields=True):
    """One snapshot of the player's situation (protocol version 1)."""

    v: Literal[1] = PROTOCOL_VERSION
    scene: Scene = msgspec.field(default_factory=Scene)
    time: TimeOfDay = msgspec.field(default_factory=TimeOfDay)
    weather: Weather = msgspec.field(default_factory=Weather)
    temperature: Annotated[float, Meta(ge=-10.0, le=10.0)] = 0.8
    """Biome temperature on Minecraft's scale (below 0.15 it snows, 2.0 is desert or nether)."""
    health: Health = msgspec.field(default_factory=Health)
    hunger: Hunger = msgspec.field(default_factory=Hunger)
    status: StatusFlags = msgspec.field(default_factory=dict)
    """Flags such as on_fire, in_water, in_lava, sprinting, sneaking, swimming, flying, sleeping.
    Either {"on_fire": true, "not_sneaking": true} or ["on fire", "not sneaking"]."""
    movement: Movement = msgspec.field(default_factory=Movement)
    position: Position = msgspec.field(default_factory=Position)
    hostiles: Annotated[list[Hostile], Meta(max_length=MAX_HOSTILES)] = msgspec.field(default_factory=list)
    attacked: Attacked | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    """Fields the protocol does not name; kept and passed along untouched."""

    def flags(self) -> dict[str, bool]:
        """Status as {flag: bool}, with list entries read as true."""
        if isinstance(self.status, list):
            return {name: True for name in self.status}
        return dict(self.status)

    def flag(self, name: str) -> bool:
        """True when the flag is set positively (``on_fire``, "On Fire" and "on fire" are the same)."""
        wanted = normalize_key(name)
        return any(normalize_key(k) == wanted and v for k, v in self.flags().items())


class Window(Struct, kw_only=True):
    """One window of acquisition (a segment's worth of states): the latest values plus what
    happened in it. Made by :mod:`metabgm_edge.acquisition`, read by characterization and the
    stages."""

    index: int
    start: float
    end: float
    samples: int
    latest: SceneState
    combat: bool
    """Combat mode for characterization (see metabgm_edge.characterize)."""
    combat_seen: bool
    lowest_health: float
    damage_taken: float
    biomes: list[str]
    attackers: list[str]
    trigger: str
    """Why the segment ended: interval, combat_start, combat_end, dimension, health_drop, end; or
    start, the prelude handed off at the first sample so music can begin at once."""
    change: str | None = None
    """What a listener would notice changed since the scene playing before ("night", "rain",
    "underground", "combat"), or None when the scene holds."""
    changed_at: float | None = None
    """Session time of the first sample that saw the scene as it is at the window's end."""


class Envelope(Struct, kw_only=True):
    """Transport fields that are not part of the state."""

    token: str | None = None
    t: float | None = None
    player: str | None = None
    """Whose state this is, on a listener that serves many players (absent: one player)."""


_FIELDS: Final = frozenset(SceneState.__struct_fields__)
_ENVELOPE: Final = frozenset({"token", "t", "player"})
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def phase_of_ticks(ticks: int) -> Phase:
    """Minecraft's day: 0 sunrise, 6000 noon, 12000 sunset, 18000 midnight."""
    t = ticks % TICKS_PER_DAY
    if t < 1000 or t >= 23000:
        return "dawn"
    if t < 12000:
        return "day"
    if t < 13000:
        return "dusk"
    return "night"


def normalize_key(key: str) -> str:
    return "_".join(key.replace("-", " ").replace("_", " ").lower().split())


_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
"""Terminal escape sequences (CSI such as a screen clear, OSC such as a window title, two-byte ones)."""
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned, line/paragraph
separators: characters a terminal may execute or that reorder or hide what is shown."""


def clean_string(text: str) -> str:
    """``text`` without terminal escape sequences and unsafe characters (see
    :data:`_UNSAFE_CATEGORIES`). Every string of a live message is cleaned on arrival, so nothing
    a game sends reaches a terminal, a log or a prompt as a control character."""
    if text.isascii() and text.isprintable():
        return text
    text = _ESCAPE_SEQUENCE.sub("", text)
    return "".join(c for c in text if unicodedata.category(c) not in _UNSAFE_CATEGORIES)


def printable(text: str) -> str:
    """One line for a terminal: characters that are not printable escaped (``\\x1b``, ``\\u202e``).
    For text that did not come through :func:`parse_message` (a model's output, a file name)."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable() or c == " ":
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


def _clean_tree(value: Any) -> Any:
    if isinstance(value, str):
        return clean_string(value)
    if isinstance(value, dict):
        return {clean_string(k) if isinstance(k, str) else k: _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    return value


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise MessageError("too_deep", f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MessageError("non_finite", "NaN or Infinity is not a valid number")
    elif isinstance(value, dict):
        for item in value.values():
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


def parse_message(data: bytes | str, *, token: str | None = None) -> tuple[SceneState, Envelope]:
    """Validate one wire message. Raises :class:`MessageError` with a short reason code."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    # NaN/Infinity literals are not JSON: msgspec refuses them, and 1e999 overflows to inf,
    # which the tree check catches. Depth is checked before conversion to structs.
    try:
        raw = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError("malformed_json", str(exc)) from None
    except RecursionError:
        raise MessageError("too_deep", f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise MessageError("invalid_utf8", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if not isinstance(raw, dict):
        raise MessageError("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    _check_tree(raw)
    player = raw.get("player")  # checked as sent: an id is refused, never cleaned into another one
    if isinstance(player, str) and not PLAYER_ID.fullmatch(player):
        raise MessageError("bad_player", f"player {player[:80]!r} is not 1-64 of A-Z a-z 0-9 _ . -")
    raw = _clean_tree(raw)
    version = raw.get("v")
    if version != PROTOCOL_VERSION:
        raise MessageError("unknown_version", f"v={version!r}, this runtime speaks v={PROTOCOL_VERSION}")
    envelope_raw = {k: raw.pop(k) for k in list(raw) if k in _ENVELOPE}
    try:
        envelope = msgspec.convert(envelope_raw, Envelope)
    except msgspec.ValidationError as exc:
        raise MessageError("invalid_field", str(exc)) from None
    if token is not None and not _same(envelope.token, token):
        raise MessageError("bad_token", "missing or wrong token")
    if envelope.player is not None and not PLAYER_ID.fullmatch(envelope.player):
        raise MessageError("bad_player", f"player {envelope.player[:80]!r} is not 1-64 of A-Z a-z 0-9 _ . -")
    extra = {k: raw.pop(k) for k in list(raw) if k not in _FIELDS}
    if extra:
        if len(extra) + len(raw.get("extra", {}) or {}) > MAX_EXTRA_KEYS:
            raise MessageError("invalid_field", f"more than {MAX_EXTRA_KEYS} extra fields")
        merged = dict(raw.get("extra") or {})
        merged.update(extra)
        raw["extra"] = merged
    try:
        state = msgspec.convert(raw, SceneState)
    except msgspec.ValidationError as exc:
        raise MessageError("invalid_field", str(exc)) from None
    return state, envelope


def _same(given: str | None, expected: str) -> bool:
    import hmac

    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def encode_state(state: SceneState) -> bytes:
    return _encoder.encode(state)


def state_from_dict(data: dict[str, Any]) -> SceneState:
    """Validate a dict (e.g. a JSON file) as a state; same rules as the wire."""
    return parse_message(_encoder.encode({"v": PROTOCOL_VERSION, **data}))[0]


def json_schema() -> dict[str, Any]:
    schema = msgspec.json.schema(SceneState)
    top = schema["$defs"]["SceneState"] if "$defs" in schema and "$ref" in schema else schema
    # The envelope travels with the state; unknown top-level fields are accepted (kept in "extra").
    props = top["properties"]
    props["t"] = {"type": "number", "description": "sender time in seconds (replay files: required)"}
    props["token"] = {"type": "string", "description": "the shared secret, when the listener has one"}
    top["additionalProperties"] = True
    top["required"] = ["v"]
    schema["$comment"] = (
        f"metabgm-edge live-state protocol v{PROTOCOL_VERSION}. Send one JSON object per datagram "
        f"(UDP) or text frame (WebSocket), at most {MAX_MESSAGE_BYTES} bytes, nested at most "
        f'{MAX_DEPTH} levels. Add "token" when the listener was started with one, and "player" (1-64 of '
        "A-Z a-z 0-9 _ . -) when one listener serves several players. Unknown top-level fields are kept "
        'in "extra".'
    )
    return schema


def example_message() -> dict[str, Any]:
    """A complete message, as a game sends it (shown in the README and by ``schema --example``)."""
    return {
        "v": 1,
        "t": 12.5,
        "scene": {"biome": "dark_forest", "dimension": "overworld"},
        "time": {"ticks": 13200, "phase": "night"},
        "weather": {"state": "rain", "intensity": 0.6},
        "temperature": 0.7,
        "health": {"value": 13.5, "max": 20.0},
        "hunger": {"food": 17.0, "saturation": 2.4},
        "status": {"on_fire": False, "not_sneaking": True, "sprinting": True, "in_water": False},
        "movement": {"state": "running", "speed": 5.612},
        "position": {"x": -212.318742, "y": 67.0, "z": 88.502113, "depth": 0.0},
        "hostiles": [{"name": "zombie", "distance": 4.2731}, {"name": "skeleton", "distance": 11.09}],
        "attacked": {"damage": 3.0, "attacker": "zombie", "seconds_ago": 0.8},
        "extra": {"held_item": "iron_sword"},
    }
