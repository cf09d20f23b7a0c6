"""Helpers for the Minecraft tests: a real flying-squid server and a mineflayer player, on loopback.

Both are Node scripts in connectors/minecraft that talk JSON lines: commands on stdin, events and
replies on stdout (see test-server.js and test-player.js).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CONNECTOR = Path(__file__).resolve().parent.parent / "connectors" / "minecraft"
SOURCE_LOGGER = "metabgm_edge.sources.minecraft"
T = TypeVar("T")


def skip_reason() -> str | None:
    """Why the Minecraft tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (the Minecraft connector needs Node.js 20+)"
    if not (CONNECTOR / "node_modules" / "flying-squid" / "package.json").is_file():
        return "connectors/minecraft/node_modules is missing: run `make test` (or `npm ci` in that folder)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def source_log(records: list[logging.LogRecord], level: int, since: int = 0) -> list[str]:
    """The messages MinecraftSource logged at ``level`` (pytest's ``caplog.records``), from record
    ``since`` on."""
    return [r.getMessage() for r in records[since:] if r.name == SOURCE_LOGGER and r.levelno == level]


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class NodeScript:
    """A Node script that takes JSON commands on stdin and writes JSON events on stdout."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["node", str(CONNECTOR / script), *args],
            cwd=CONNECTOR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                with self._cond:
                    self.events.append(msg)
                    self._cond.notify_all()

    def wait_event(
        self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str, since: int = 0
    ) -> dict[str, Any]:
        """The first event from index ``since`` on (seen so far or coming) that ``check`` accepts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = since
            while True:
                for event in self.events[seen:]:
                    if check(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.events)):
                    raise AssertionError(f"{what}: not seen within {timeout:g} s; events: {self.events[-5:]}")
                self._cond.wait(min(left, 0.2))

    def request(self, cmd: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; fail when the reply says it failed."""
        msg_id = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": msg_id, "cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        reply = self.wait_event(lambda e: e.get("id") == msg_id, timeout, f"reply to {cmd}")
        if not reply.get("ok"):
            raise AssertionError(f"{cmd} failed: {reply.get('error')}")
        return reply

    def kill(self) -> None:
        """Kill at once, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)


class TestServer(NodeScript):
    """flying-squid 1.12.0 (Minecraft 1.16.5) with a scripted world, listening on loopback."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int, *, version: str = "1.16.5", online_mode: bool = False) -> None:
        args = ["--port", str(port), "--version", version] + (["--online-mode"] if online_mode else [])
        super().__init__("test-server.js", *args)
        self.port = port
        self.wait_event(lambda e: e.get("event") == "listening", 30, "the test server listening")


class Player(NodeScript):
    """The player's own client (a mineflayer bot) joining through the connector; rejoins when dropped."""

    def __init__(
        self, port: int, username: str = "player", version: str = "1.16.5", *, rejoin: float = 1.0
    ) -> None:
        super().__init__(
            "test-player.js", "--port", str(port), "--username", username, "--version", version,
            "--rejoin", f"{rejoin:g}",
        )  # fmt: skip
        self.username = username

    def spawns(self, timeout: float = 30.0, since: int = 0) -> dict[str, Any]:
        """Wait for the player to spawn (an event from index ``since`` on)."""
        return self.wait_event(lambda e: e.get("event") == "spawned", timeout, "the player spawning", since)
