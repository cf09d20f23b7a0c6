"""Live player state from a Minecraft server, through the bundled Node connector.

``minecraft://HOST:PORT`` starts ``connectors/minecraft/connector.js``: a proxy that listens on
``listen`` (127.0.0.1:25566 by default). Every player adds that address as a server in Minecraft
(Multiplayer, Direct Connection) and joins it; for each player the connector joins HOST:PORT with
that player's name, passes every packet through unchanged and reads the player's state from them:
biome, dimension, time, weather, health, food, position, status flags, hostile mobs nearby, damage
taken. It writes those states to its stdout as the live-state protocol, one JSON object per line
tagged with ``"player"`` (the username, or an id mapped from a name that is not a valid player id),
several times a second; this source validates every line like any other live message.

Many players at once: each one's states are kept apart (:class:`~metabgm_edge.sources.LiveSource`
keeps a channel per player). ``play`` follows one player (``?player=NAME``, else the first one
heard); ``serve --source minecraft://...`` gives every player their own session and music. At most
``max_players`` (64) play through the connector at once; one more is refused with a message in the
game. A player who leaves ends only their own session: their music keeps their last state until
they are forgotten after ``forget`` seconds (60); a player who joins again under the same name while
still connected replaces the old connection.

What works: offline-mode servers (``online-mode=false`` in server.properties), Minecraft 1.16 to
1.20.1 (tested on 1.16.5 and 1.18.2). What does not: online-mode servers (the connector cannot
authenticate with Mojang for the player; it refuses them with a message in the game), 1.20.2 and
newer (refused too).

The music never waits for Minecraft: when the server goes away, a player leaves, or the
connector dies, :meth:`sample` keeps answering with the last state (the time since the last hit
keeps counting), the loss is reported once as a warning (once per player who left; once for all
when the connector stops), and the connector is restarted with exponential backoff.
:meth:`close` stops the connector; it also exits by itself when this process goes away (its stdin
closes), so it never outlives the runtime.

Query parameters (all optional): ``listen=HOST:PORT``, ``version=auto|1.16.5``, ``rate=HZ`` (5),
``hostile_radius=BLOCKS`` (32), ``attack_window=SECONDS`` (10), ``backoff_max=SECONDS`` (30),
``player=NAME`` (the one ``play`` follows), ``forget=SECONDS`` (60), ``max_players=N`` (64).
``METABGM_EDGE_NODE`` names the node binary; ``METABGM_EDGE_MINECRAFT_CONNECTOR`` the connector's
folder (default: connectors/minecraft in the source checkout).

The packaged build carries the connector as one bundled script (packaging/minecraft/build.js) without
its protocol data: that is a data pack per Minecraft version, unpacked into
``$METABGM_EDGE_MINECRAFT_DATA`` (default: ``minecraft/`` in the user data folder). Without Node.js,
the connector's single executable ``metabgm-edge-minecraft`` (a separate download) runs it, found in
that folder or beside the program.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from metabgm_edge.errors import SourceError
from metabgm_edge.sources import LiveSource
from metabgm_edge.state import DEFAULT_PLAYER, MAX_MESSAGE_BYTES, PLAYER_ID, SceneState

log = logging.getLogger(__name__)

NODE_ENV: Final = "METABGM_EDGE_NODE"
CONNECTOR_ENV: Final = "METABGM_EDGE_MINECRAFT_CONNECTOR"
DATA_ENV: Final = "METABGM_EDGE_MINECRAFT_DATA"
HINT_ENV: Final = "METABGM_EDGE_MINECRAFT_DATA_HINT"
EXECUTABLE: Final = "metabgm-edge-minecraft" + (".exe" if os.name == "nt" else "")
DATA_PACK: Final = "metabgm-edge-minecraft-data-VERSION.tar.gz"
DEFAULT_LISTEN: Final = "127.0.0.1:25566"
MIN_NODE_MAJOR: Final = 20
STALL_S: Final = 3.0
"""A session that sends nothing for this long counts as lost (the connector sends 5 times a second)."""
CONNECTOR: Final = ""
"""The key of a loss of every player at once (the connector stopped); player ids are never empty."""
STABLE_S: Final = 30.0
"""A connector that ran this long before it stopped is restarted at the shortest delay again."""
SETUP_HINT: Final = (
    "run `make test` in the metabgm-edge checkout, or `npm ci` in connectors/minecraft "
    f"(set {CONNECTOR_ENV} to use a connector folder elsewhere)"
)
_VERSION_RE = re.compile(r"^(auto|1\.\d{1,2}(\.\d{1,2})?)$")


def connector_dir() -> Path:
    """The connector's folder: $METABGM_EDGE_MINECRAFT_CONNECTOR, else the checkout's connectors/minecraft."""
    env = os.environ.get(CONNECTOR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "connectors" / "minecraft"


def find_node() -> str:
    """The node binary: $METABGM_EDGE_NODE, else ``node`` on PATH. Raises SourceError when missing or old."""
    wanted = os.environ.get(NODE_ENV) or "node"
    node = shutil.which(wanted)
    if node is None:
        raise SourceError(
            f"the Minecraft connector needs Node.js {MIN_NODE_MAJOR} or newer, and {wanted!r} was not found: "
            f"install Node.js (for example `apt-get install nodejs`) or set {NODE_ENV} to its path"
        )
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        major = int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SourceError(f"cannot run {node} --version ({exc}); set {NODE_ENV} to a working node") from None
    if major < MIN_NODE_MAJOR:
        raise SourceError(
            f"{node} is Node.js {major}; the Minecraft connector needs {MIN_NODE_MAJOR} or newer"
        )
    return node


def check_connector(folder: Path) -> Path:
    """The connector script, after checking that its npm packages are installed."""
    script = folder / "connector.js"
    if not script.is_file():
        raise SourceError(f"the Minecraft connector is not at {script}: {SETUP_HINT}")
    if not (folder / "node_modules" / "minecraft-protocol" / "package.json").is_file():
        raise SourceError(
            f"the Minecraft connector's npm packages are not installed in {folder}: {SETUP_HINT}"
        )
    return script


def minecraft_data_dir() -> Path:
    """Where a packaged build's Minecraft protocol data packs are unpacked."""
    from metabgm_edge import paths

    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else paths.data_root() / "minecraft"


def is_bundled(folder: Path) -> bool:
    """A connector bundled into one script (the packaged build's) rather than a checkout with node_modules."""
    try:
        return bool(json.loads((folder / "package.json").read_text(encoding="utf-8")).get("bundled"))
    except (OSError, ValueError, AttributeError):
        return False


def single_executable() -> Path | None:
    """The connector's single executable (node and the script in one file), if the player has it."""
    places = [minecraft_data_dir()]
    if getattr(sys, "frozen", False):
        places.append(Path(sys.executable).resolve().parent)
    return next((p / EXECUTABLE for p in places if (p / EXECUTABLE).is_file()), None)


def locate_connector(folder: Path) -> tuple[str, Path | None, dict[str, str] | None]:
    """(program, script or None, environment or None) that run the connector in ``folder``."""
    if not is_bundled(folder):
        node = find_node()
        return node, check_connector(folder), None
    script = folder / "connector.js"
    exe = single_executable()
    try:
        program, run_script = find_node(), script
    except SourceError:
        if exe is None:
            raise SourceError(
                f"the Minecraft connector needs Node.js {MIN_NODE_MAJOR} or newer (nodejs.org; or set "
                f"{NODE_ENV}), or its single executable {EXECUTABLE} (a separate download) in "
                f"{minecraft_data_dir()}: neither was found"
            ) from None
        program, run_script = str(exe), None
    data = minecraft_data_dir()
    unpack = f"download {DATA_PACK} (for the Minecraft version you play) and unpack it into {data}"
    if not (data / "node_modules" / "minecraft-data" / "package.json").is_file():
        raise SourceError(
            f"the Minecraft protocol data is not installed in {data}: {unpack} "
            f"(or set {DATA_ENV} to where it is)"
        )
    return program, run_script, {**os.environ, DATA_ENV: str(data), HINT_ENV: unpack}


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"minecraft source: {name}={value!r} is not a number") from None
    if not (low < number <= high if low_open else low <= number <= high):
        bracket = "(" if low_open else "["
        raise SourceError(f"minecraft source: {name}={value!r} must be in {bracket}{low:g}, {high:g}]")
    return number


def _host_port(text: str, what: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", text.strip())
    if not match or not match.group(1):
        raise SourceError(
            f"minecraft source: {what}={text!r} must be HOST:PORT, for example {DEFAULT_LISTEN}"
        )
    port = int(match.group(2))
    if port > 65535:
        raise SourceError(f"minecraft source: {what}={text!r}: port must be at most 65535")
    return match.group(1), port


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MinecraftSource(LiveSource):
    """The players' states from their Minecraft sessions, through the connector's proxy."""

    def __init__(
        self,
        host: str,
        port: int | str,
        *,
        listen: str = DEFAULT_LISTEN,
        version: str = "auto",
        rate: float | str = 5.0,
        hostile_radius: float | str = 32.0,
        attack_window: float | str = 10.0,
        backoff_max: float | str = 30.0,
        **unknown: str,
    ) -> None:
        from metabgm_edge.sources.net import _player_options

        query: dict[str, object] = dict(unknown)
        super().__init__(**_player_options(query))
        unknown = {k: str(v) for k, v in query.items()}
        if unknown:
            raise SourceError(
                f"minecraft source: unknown parameter(s) {', '.join(sorted(unknown))}; known: listen, "
                "version, rate, hostile_radius, attack_window, backoff_max, player, forget, max_players"
            )
        self.host = host
        self.port = int(_number("port", port, 1, 65535, low_open=False))
        self.listen_host, self._listen_port = _host_port(listen, "listen")
        if not _VERSION_RE.match(version):
            raise SourceError(f"minecraft source: version={version!r} must be auto or like 1.16.5")
        self.version = version
        self.rate = _number("rate", rate, 0, 50)
        self.hostile_radius = _number("hostile_radius", hostile_radius, 0, 256)
        self.attack_window = _number("attack_window", attack_window, 0, 600)
        self.backoff_max = _number("backoff_max", backoff_max, 0.5, 600, low_open=False)
        self.uri = f"minecraft://{_join(host, self.port)}"
        self.folder = connector_dir()
        self.node, self.script, self._env = locate_connector(self.folder)

        self.listening = threading.Event()
        """Set while the connector's proxy accepts the player's client."""
        self.restarts = 0
        """How many times the connector was started again after it stopped."""
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._status = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._in_world: dict[str, float] = {}
        """Player id -> time.monotonic() when their session started, for the players in the world."""
        self._lost: set[str] = set()
        """Whose loss was reported and not yet over: player ids, or CONNECTOR for everyone."""
        self._said: set[str] = set()

    # ---- the Source interface ----
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="minecraft-connector", daemon=True)
        self._thread.start()

    def sample(self, now: float) -> SceneState | None:
        with self._lock:
            state, at = self._latest, self._latest_at
        if state is None or at is None:
            return state
        return self._sample_of(state, at)

    def _sample_of(self, state: SceneState, at: float) -> SceneState:
        if state.attacked is None:
            return state
        # Kept past its time (the session is gone): the last hit keeps getting older.
        age = time.monotonic() - at
        if age < 1.0:
            return state
        attacked = msgspec.structs.replace(
            state.attacked, seconds_ago=min(state.attacked.seconds_ago + age, 1e6)
        )
        return msgspec.structs.replace(state, attacked=attacked)

    def close(self) -> None:
        self._stop.set()
        with self._status:
            proc = self._proc
        if proc is not None:
            _stop_process(proc)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.listening.clear()
        super().close()

    # ---- status ----
    @property
    def listen_address(self) -> tuple[str, int]:
        """Where the player's Minecraft client joins (the port is known once listening when 0 was asked)."""
        return self.listen_host, self._listen_port

    @property
    def in_session(self) -> bool:
        """True while a player (any) is in the world through the connector."""
        with self._status:
            return bool(self._in_world)

    @property
    def in_world(self) -> list[str]:
        """The ids of the players in the world through the connector now, in the order they joined
        (a player who left is no longer here, though :meth:`players` keeps them until forgotten)."""
        with self._status:
            return list(self._in_world)

    @property
    def pid(self) -> int | None:
        """The running connector's process id, or None."""
        with self._status:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def wait_listening(self, timeout: float) -> tuple[str, int]:
        """Block until the proxy accepts the player's client; raise SourceError after ``timeout`` s."""
        if not self.listening.wait(timeout):
            detail = f": {self.last_error}" if self.last_error else ""
            raise SourceError(f"the Minecraft connector did not start listening within {timeout:g} s{detail}")
        return self.listen_address

    # ---- internals ----
    def _accept(self, state: SceneState, player: str | None = None) -> bool:
        if not super()._accept(state, player):
            return False
        who = player or DEFAULT_PLAYER
        with self._status:
            back = who in self._lost or CONNECTOR in self._lost
            if back:
                self._lost.discard(who)
                self._lost.discard(CONNECTOR)
        if back:
            log.info("%s: %s's state is flowing again", self.uri, who)
        return True

    def _report_loss(self, why: str, then: str, *, player: str | None = None, ended: bool = True) -> None:
        """Warn once per outage, of one player (``player``) or of all (None: the connector); the
        last state stays. ``ended``: the session (or, for None, every session) is over."""
        key = CONNECTOR if player is None else player
        with self._status:
            if ended:
                if player is None:
                    self._in_world.clear()
                else:
                    self._in_world.pop(player, None)
            if key in self._lost or (player is not None and CONNECTOR in self._lost):
                log.debug("%s: %s", self.uri, why)
                return
            self._lost.add(key)
        if player is None:
            with self._lock:
                known = self._latest is not None or bool(self._channels)
            keep = "the music keeps the last state" if known else "no player state yet"
        else:
            channel = self._channel(player)
            keep = (
                f"their music keeps their last state (forgotten after {self.forget_after:g} s)"
                if channel is not None and channel.latest is not None
                else "no state of theirs yet"
            )
        log.warning("%s: %s; %s; %s", self.uri, why, keep, then)

    def _command(self) -> list[str]:
        return [
            self.node, *([str(self.script)] if self.script else []),
            "--server", _join(self.host, self.port),
            "--listen", _join(self.listen_host, self._listen_port),
            "--version", self.version,
            "--rate", f"{self.rate:g}",
            "--hostile-radius", f"{self.hostile_radius:g}",
            "--attack-window", f"{self.attack_window:g}",
            "--max-players", str(self.max_players),
            "--forget", f"{self.forget_after:g}",
            "--parent-pipe",
        ]  # fmt: skip

    def _supervise(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            accepted_before = self.stats().accepted
            try:
                proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.folder,
                    env=self._env,
                    start_new_session=True,  # Ctrl-C goes to the runtime, which then closes the connector
                )
            except OSError as exc:
                self.last_error = f"cannot start {self.node}: {exc}"
                self._report_loss(self.last_error, f"trying again in {delay:g} s")
            else:
                with self._status:
                    self._proc = proc
                readers = [
                    threading.Thread(target=self._read_states, args=(proc.stdout,), daemon=True,
                                     name="minecraft-states"),
                    threading.Thread(target=self._read_events, args=(proc.stderr,), daemon=True,
                                     name="minecraft-events"),
                ]  # fmt: skip
                for reader in readers:
                    reader.start()
                while proc.poll() is None and not self._stop.wait(0.25):
                    self._watch()
                if self._stop.is_set():
                    _stop_process(proc)
                    return
                code = proc.wait()
                for reader in readers:
                    reader.join(timeout=2)
                self.listening.clear()
                with self._status:
                    self._proc = None
                detail = f": {self.last_error}" if self.last_error else ""
                if time.monotonic() - started >= STABLE_S or self.stats().accepted > accepted_before:
                    delay = 0.5
                self._report_loss(
                    f"the Minecraft connector stopped (exit code {code}){detail}",
                    f"restarting it in {delay:g} s (backoff up to {self.backoff_max:g} s)",
                )
            if self._stop.wait(delay):
                return
            self.restarts += 1
            delay = min(delay * 2, self.backoff_max)

    def _watch(self) -> None:
        """A session that went quiet counts as lost (the connector hangs, or the machine sleeps)."""
        with self._status:
            sessions = list(self._in_world.items())
        now = time.monotonic()
        for player, since in sessions:
            channel = self._channel(player)
            last = channel.latest_at if channel is not None and channel.latest is not None else since
            quiet = now - max(since, last)
            if quiet > STALL_S:
                self._report_loss(
                    f"no state of {player} for {quiet:.1f} s", "waiting for the connector",
                    player=player, ended=False,
                )  # fmt: skip

    def _read_states(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            while line := stream.readline(MAX_MESSAGE_BYTES + 2):
                line = line.strip()
                if line:
                    self._offer(line, "connector")

    def _read_events(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        plain = 0
        with contextlib.suppress(OSError, ValueError):
            while raw := stream.readline(64 * 1024):
                text = raw.decode("utf-8", "replace").rstrip()
                if not text:
                    continue
                event: Any = None
                if text.startswith("{"):
                    with contextlib.suppress(ValueError):
                        event = json.loads(text)
                if isinstance(event, dict) and isinstance(event.get("event"), str):
                    self._on_event(event)
                elif plain < 20:
                    plain += 1
                    log.warning("%s: connector: %s", self.uri, text[:500])
                else:
                    log.debug("%s: connector: %s", self.uri, text[:500])

    def _once(self, level: int, key: str, msg: str, *args: Any) -> None:
        """Log a message once per distinct key (the same trouble repeating is logged at debug)."""
        with self._status:
            first = key not in self._said
            self._said.add(key)
        log.log(level if first else logging.DEBUG, msg, *args)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "listening":
            port = event.get("port")
            if isinstance(port, int) and 0 < port < 65536:
                self._listen_port = port  # a restart listens on the same port (when 0 was asked)
            self.listening.set()
            self._once(
                logging.INFO, "listening",
                "%s: join %s in Minecraft (Multiplayer, Direct Connection) to play on %s (Minecraft %s)",
                self.uri, _join(self.listen_host, self._listen_port), _join(self.host, self.port),
                event.get("version"),
            )  # fmt: skip
        elif kind == "waiting_for_server":
            self.last_error = f"the server does not answer ({event.get('error')})"
            self._once(logging.WARNING, "waiting", "%s: %s; retrying", self.uri, self.last_error)
        elif kind == "player_joined":
            player, name = _who(event)
            log.debug("%s: %s joined the proxy", self.uri, name)
            if name != player:
                self._once(
                    logging.WARNING, "renamed:" + player,
                    "%s: the Minecraft name %r is not a player id (1-64 of A-Z a-z 0-9 _ . -): this "
                    "player's states and music are under the id %s", self.uri, name, player,
                )  # fmt: skip
        elif kind == "session_started":
            player, name = _who(event)
            with self._status:
                self._in_world.pop(player, None)  # (re)joined: last in the order
                self._in_world[player] = time.monotonic()
            self.last_error = None
            log.info("%s: %s is in the world; reading the player's state", self.uri, name)
        elif kind == "session_ended":
            player, name = _who(event)
            by = event.get("by")
            if by == "replaced":  # the new connection's session_started follows
                with self._status:
                    if player in self._in_world:
                        self._in_world[player] = time.monotonic()
                log.info("%s: %s joined again from another connection, which replaces the old one",
                         self.uri, name)  # fmt: skip
            elif by == "player":
                self._report_loss(f"{name} left the game", "waiting for them to join again", player=player)
            else:
                self._report_loss(
                    f"{name}: " + str(event.get("message") or f"the session ended ({by})"),
                    "waiting for them to rejoin",
                    player=player,
                )
        elif kind == "refused":
            player, name = _who(event)
            message = str(event.get("message") or event.get("reason") or "refused")
            if event.get("by") == "full":
                self._once(logging.ERROR, "full:" + player, "%s: %s was refused: %s", self.uri, name, message)
                return
            self.last_error = message
            self._once(logging.ERROR, "refused:" + self.last_error, "%s: %s", self.uri, self.last_error)
            self._report_loss(
                f"the server refused {name}", "waiting for a player who can join", player=player
            )
        elif kind == "fatal":
            self.last_error = str(event.get("error"))
            self._once(
                logging.ERROR, "fatal:" + self.last_error, "%s: connector: %s", self.uri, self.last_error
            )
        elif kind == "parse_error":
            self._once(
                logging.WARNING, f"parse:{event.get('packet')}",
                "%s: connector could not read a %s packet (it was passed on): %s",
                self.uri, event.get("packet"), event.get("error"),
            )  # fmt: skip
        else:
            log.debug("%s: connector event %s", self.uri, event)


def _who(event: dict[str, Any]) -> tuple[str, str]:
    """(player id, username) of a connector event; the id is the one its state lines carry."""
    player = event.get("player")
    if not isinstance(player, str) or not PLAYER_ID.fullmatch(player):
        player = DEFAULT_PLAYER  # a connector that names no player: its lines carry none either
    name = event.get("username")
    return player, str(name)[:80] if isinstance(name, str) else player


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Close stdin (the connector exits by itself), then terminate, then kill."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
