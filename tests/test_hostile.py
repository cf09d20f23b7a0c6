"""Hostile or unlucky live input, as `play` meets it: control characters in game strings, short
WebSocket connections, a listener that only ever gets rejected messages, an unknown biome."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import soundfile

from metabgm_edge.acquisition import Aggregator
from metabgm_edge.audio import open_audio_backend
from metabgm_edge.characterize import scene_words
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.session_log import SegmentRecord
from metabgm_edge.sources import open_source
from metabgm_edge.sources.net import WebSocketSource
from metabgm_edge.stages import describe
from metabgm_edge.state import Scene, SceneState, clean_string, parse_message, printable, state_from_dict
from metabgm_edge.text import StageRequest
from metabgm_edge.text.composer import Composer

ROOT = Path(__file__).resolve().parent.parent
# NUL, a screen clear, a window title (OSC), a right-to-left override, a zero-width space, a bell,
# a line separator, a C1 control: what a hostile game could put in any string.
NASTY = "\x00\x1b[2J\x1b]0;owned\x07\u202e\u200b\x07\u2028\x9b"
PLAY = [sys.executable, "-m", "metabgm_edge", "play", "--text", "composer", "--source"]
UNSAFE = ["\x00", "\x1b", "\u202e", "\u200b", "\x07", "\u2028", "\x9b"]


def hostile_message(**more: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "scene": {"biome": "forest" + NASTY, "dimension": "overworld"},
        "hostiles": [{"name": "zom" + NASTY + "bie", "distance": 20.0}],
        "status": {"on" + NASTY + "_fire": False, "sprinting": True},
        "attacked": {"damage": 0.0, "attacker": "skele\x1b[31mton"},
        "extra": {"held" + NASTY: "sword" + NASTY, "list": ["a" + NASTY]},
        **more,
    }


def assert_clean(text: str) -> None:
    for ch in UNSAFE:
        assert ch not in text, (ch, text[:200])
    assert "[2J" not in text and "owned" not in text  # whole escape sequences go, not only the ESC


def test_every_string_of_a_message_is_cleaned_on_arrival() -> None:
    state, _ = parse_message(json.dumps(hostile_message()))
    assert state.scene.biome == "forest"
    assert state.hostiles[0].name == "zombie"
    assert state.attacked is not None and state.attacked.attacker == "skeleton"
    assert set(state.flags()) == {"on_fire", "sprinting"}
    assert state.extra == {"held": "sword", "list": ["a"]}
    assert_clean(msgspec.json.encode(state).decode("unicode_escape"))
    assert clean_string("Überwald, 雪原 biome") == "Überwald, 雪原 biome"  # printable text stays
    assert printable("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"


class Recording:
    """A text backend that keeps the prompts it is given (what an LLM would read)."""

    name = "recording"

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.composer = Composer()

    def generate(self, request: StageRequest) -> str:
        self.prompts += [m.content for m in request.messages]
        return self.composer.generate(request)


def test_no_control_character_reaches_a_prompt() -> None:
    state, _ = parse_message(
        json.dumps({**hostile_message(), "hostiles": [{"name": "zombie" + NASTY, "distance": 3}]})
    )
    backend = Recording()
    result = describe(state, backend, seed=1)
    assert backend.prompts
    for text in (*backend.prompts, result.narrative or "", result.description, result.info_str):
        assert_clean(text)
    assert "zombie" in result.info_str.lower()


def test_describe_prints_a_hostile_scene_without_control_characters(tmp_path: Path) -> None:
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps(hostile_message()), encoding="utf-8")
    args = [sys.executable, "-m", "metabgm_edge", "describe", str(scene), "--text", "composer"]
    proc = subprocess.run(args,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stdout + proc.stderr)
    assert "forest" in proc.stdout


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_sound_server() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}


@pytest.mark.slow
def test_play_prints_and_logs_a_hostile_live_scene_without_control_characters(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    out, log = tmp_path / "out.wav", tmp_path / "log.jsonl"
    proc = subprocess.Popen(
        [*PLAY, f"udp://127.0.0.1:{port}", "--interval", "2", "--sample-period", "0.5", "--duration", "5",
         "--out", str(out), "--log", str(log)],
        cwd=ROOT, env=no_sound_server(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stop = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            payload = json.dumps(hostile_message()).encode()
            while not stop.is_set():
                s.sendto(payload, ("127.0.0.1", port))
                s.sendto(b"{not json" + NASTY.encode(), ("127.0.0.1", port))  # rejected: logged escaped
                stop.wait(0.1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert_clean(stdout + stderr)
    assert "forest, day, clear" in stdout
    assert "malformed_json" in stdout  # the summary counts the rejects by reason
    lines = log.read_text(encoding="utf-8").splitlines()
    assert_clean("\n".join(lines).encode().decode("unicode_escape"))
    records = [msgspec.json.decode(line, type=SegmentRecord) for line in lines[:-1]]
    assert records and all(r.state.scene.biome == "forest" for r in records)
    assert sum(r.rejected.get("malformed_json", 0) for r in records) > 0
    summary = json.loads(lines[-1])["summary"]
    assert summary["rejected"]["malformed_json"] >= sum(r.rejected.get("malformed_json", 0) for r in records)


@pytest.mark.slow
def test_duration_holds_when_every_message_is_rejected(tmp_path: Path) -> None:
    """A listener that only ever gets bad messages: the session still ends on time, writes a valid
    (empty) WAV and its log, and says what was rejected."""
    port = free_port(socket.SOCK_DGRAM)
    out, log = tmp_path / "out.wav", tmp_path / "log.jsonl"
    proc = subprocess.Popen(
        [*PLAY, f"udp://127.0.0.1:{port}", "--duration", "3", "--out", str(out), "--log", str(log)],
        cwd=ROOT, env=no_sound_server(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stop = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                s.sendto(b'{"v": 7}', ("127.0.0.1", port))
                s.sendto(b"[1, 2]", ("127.0.0.1", port))
                stop.wait(0.05)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    t0 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert time.monotonic() - t0 < 20
    assert "no music was made" in stderr and "none valid" in stderr
    assert "in 0 segments" in stdout and "unknown_version" in stdout and "not_an_object" in stdout
    info = soundfile.info(str(out))  # a valid WAV, strictly read
    assert info.frames == 0 and info.samplerate == 32000
    summary = json.loads(log.read_text().splitlines()[-1])["summary"]
    assert summary["rejected"]["unknown_version"] > 5 and summary["segments"] == 0


# -- WebSocket: short connections --------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _one_shot(port: int, payload: bytes) -> None:
    """Connect, send the handshake and one text frame in one go, and close at once."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request + _frame(payload))


def test_short_websocket_connections_lose_no_message_and_log_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="metabgm_edge.sources.net")
    source = WebSocketSource("127.0.0.1", 0)
    source.start()
    try:
        good = json.dumps({"v": 1, "scene": {"biome": "forest"}}).encode()
        for _ in range(25):
            _one_shot(source.port, good)
        for _ in range(25):
            _one_shot(source.port, b'{"v":1,"note":"\xff\xfe"}')  # not UTF-8, then gone
        deadline = time.monotonic() + 15
        while source.stats().received < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = source.stats()
    finally:
        source.close()
    assert stats.received == 50, stats
    assert stats.accepted == 25 and stats.reasons == {"invalid_utf8": 25}
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    per_connection = [r for r in caplog.records if "connection open" in r.getMessage()
                      or "connection closed" in r.getMessage()]  # fmt: skip
    assert not per_connection  # 50 connections, no INFO line for each


# -- an unknown biome --------------------------------------------------------------------------------


def test_an_unknown_biome_is_neither_a_biome_visited_nor_in_the_prompt() -> None:
    agg = Aggregator(0.0)
    forest = state_from_dict({"scene": {"biome": "forest"}})
    agg.add(0.0, forest)
    agg.add(1.0, state_from_dict({"scene": {"biome": "unknown"}}))  # a chunk not loaded yet
    assert agg.latest.scene.biome == "forest"
    agg.add(2.0, state_from_dict({"scene": {"biome": "unknown", "dimension": "the_nether"}}))  # a portal
    assert agg.latest.scene == Scene(biome="nether_wastes", dimension="the_nether")
    agg.add(3.0, state_from_dict({"scene": {"biome": "crimson_forest", "dimension": "the_nether"}}))
    window = agg.close(3.0, "interval")
    assert window is not None
    assert window.biomes == ["forest", "nether_wastes", "crimson_forest"]
    result = describe(SceneState(scene=Scene(biome="unknown", dimension="the_nether")), Composer())
    assert "unknown" not in result.info_str.lower() and "unknown" not in (result.narrative or "").lower()


def test_scene_words_say_what_a_listener_would() -> None:
    cave = state_from_dict({"scene": {"biome": "mountains"}, "position": {"y": 18, "depth": 42}})
    nether = state_from_dict({"scene": {"biome": "nether_wastes", "dimension": "the_nether"}})
    assert scene_words(cave, False) == ["mountains", "underground"]
    assert scene_words(nether, True) == ["nether_wastes", "the nether", "combat"]
    result = describe(nether, Composer())
    assert "Time" not in result.characterized and "Weather" not in result.characterized


def test_play_names_the_cave_and_the_nether_as_they_are(tmp_path: Path) -> None:
    s = Session(
        open_source("sim:tour?leg=10", seed=1), Composer(), open_audio_backend("synth"),
        options=PlayOptions(fast=True, duration=60.0), use_device=False,
    )  # fmt: skip
    from metabgm_edge.cli import _scene_words

    lines: list[str] = []
    s.on_segment = lambda rec: lines.append(_scene_words(rec.state, rec.combat))
    s.run()
    assert any(line.endswith("underground") for line in lines), lines
    nether = [line for line in lines if "the nether" in line]
    assert nether and not any("day" in line or "clear" in line for line in nether), nether
