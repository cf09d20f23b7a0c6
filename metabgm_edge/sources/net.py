"""Live listeners: ``udp://HOST:PORT`` and ``ws://HOST:PORT``.

A game (or a mod) sends one JSON object (:mod:`metabgm_edge.state`) per UDP datagram or per
WebSocket text frame. Every message is validated; a bad one is rejected, counted by reason in
:meth:`Source.stats` and logged (at most :data:`LOG_FIRST` lines per reason per
:data:`LOG_WINDOW` seconds, then one summary line), and the listener keeps serving.

URI grammar (the query is optional; values are percent-decoded)::

    udp://HOST:PORT[?token=SECRET][&max_bytes=N][&public=1][&rcvbuf=BYTES]
    ws://HOST:PORT[/PATH][?token=SECRET][&max_bytes=N][&public=1][&max_connections=N]
                         [&origin=ORIGIN[,ORIGIN...]|*][&ping_interval=S][&ping_timeout=S]
                         [&open_timeout=S]

HOST is ``127.0.0.1`` when left out. Only loopback (127.0.0.0/8, ::1, ``localhost``) is bound
unless ``public=1`` (also ``true``/``yes``/``on``) asks for another address. PORT 0 picks a free
port; :attr:`NetSource.port` holds the bound one after :meth:`start`.

Rejection reasons added here (on top of :func:`metabgm_edge.state.parse_message`'s):
``oversized`` (above ``max_bytes``, a truncated datagram or a WebSocket frame closed with 1009),
``invalid_utf8``, ``binary_frame``, ``protocol_error`` (WebSocket closed with 1002),
``too_many_connections``, ``forbidden_origin``, ``bad_handshake`` and ``internal_error``
(a validator bug: logged with its traceback, never fatal to the listener). The last four count
connections and handshakes, not messages.
"""

from __future__ import annotations

import contextlib
import errno
import http
import ipaddress
import logging
import platform
import selectors
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from metabgm_edge.errors import SourceError
from metabgm_edge.sources import LiveSource
from metabgm_edge.sources.rejects import LOG_FIRST, RejectLog  # noqa: F401 (re-exported)
from metabgm_edge.state import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MIN_MESSAGE_BYTES = 64

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class NetSource(LiveSource):
    """Common part of the UDP and WebSocket listeners: address policy, limits, validation."""

    scheme: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ("token", "max_bytes", "public", "player", "forget", "max_players")

    def __init__(
        self,
        host: str | None,
        port: int | str,
        *,
        token: str | None = None,
        max_bytes: int | str | None = None,
        public: bool | str = False,
        unknown: dict[str, object] | None = None,
    ) -> None:
        unknown = dict(unknown or {})
        players = _player_options(unknown)
        if unknown:
            names = ", ".join(sorted(unknown))
            raise SourceError(
                f"{self.scheme}:// listener: unknown parameter(s) {names}; valid ones are "
                + ", ".join(self.options)
            )
        if token is not None and not isinstance(token, str):
            raise SourceError(f"token must be a string, got {type(token).__name__}")
        if token == "":
            raise SourceError("token is empty: leave ?token= out, or give the shared secret")
        super().__init__(token=token, **players)
        self.host = host or "127.0.0.1"
        self.port = _int_option("port", port, 0, 65535, "a TCP/UDP port number (0 picks a free one)")
        self.max_bytes = (
            MAX_MESSAGE_BYTES
            if max_bytes is None
            else _int_option("max_bytes", max_bytes, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, "a size in bytes")
        )
        self.public = _bool_option("public", public)
        if not self.public and not _is_loopback(self.host):
            raise SourceError(
                f"{self.scheme}://{_hostport(self.host, self.port)} would listen on a non-loopback "
                f"address, reachable from other machines. Use {self.scheme}://127.0.0.1:{self.port} "
                f"for this machine only, or add ?public=1 to listen on {self.host!r} on purpose "
                "(and set ?token=SECRET)"
            )
        self.uri = f"{self.scheme}://{_hostport(self.host, self.port)}"
        self.bound = ""
        """The address actually bound, e.g. "127.0.0.1:7717" for localhost:7717 (after start)."""
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise SourceError(f"{self.uri} was closed; open a new source to listen again")
            if self._started:
                return
            self._started = True
        try:
            self._start()
        except BaseException:
            with self._state_lock:
                self._started = False
            raise
        self.uri = f"{self.scheme}://{_hostport(self.host, self.port)}"
        if self.public and not _is_loopback(self.host) and self.token is None:
            log.warning(
                "%s listens on a public address without a token: anyone who can reach it can drive the "
                "music. Add ?token=SECRET",
                self.uri,
            )
        log.info(
            "listening on %s (bound to %s; max %d bytes per message%s)",
            self.uri,
            self.bound,
            self.max_bytes,
            ", token required" if self.token else "",
        )

    def close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if started:
            self._stop()
            super().close()
            st = self.stats()
            reasons = ", ".join(f"{k} {n}" for k, n in sorted(st.reasons.items()))
            log.info("closed %s: %d messages received, %d accepted, %d rejected%s", self.uri, st.received,
                     st.accepted, st.rejected, f" ({reasons})" if reasons else "")  # fmt: skip

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _bind_error(self, exc: OSError) -> SourceError:
        reason = exc.strerror or str(exc)
        hints = {
            errno.EADDRINUSE: " (another program listens there: pick another port, or port 0 for a free one)",
            errno.EACCES: " (ports below 1024 need privileges: pick a port from 1024 to 65535)",
            errno.EADDRNOTAVAIL: " (this machine has no such address)",
        }
        hint = hints.get(exc.errno or 0, "")
        return SourceError(f"cannot listen on {self.uri}: {reason}{hint}")

    def _address(self, socktype: int) -> tuple[int, Any]:
        """(family, sockaddr) to bind, for a literal address or a name."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, 0, socktype, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise SourceError(
                f"cannot listen on {self.uri}: cannot resolve {self.host!r} ({exc.strerror})"
            ) from None
        if not self.public:
            infos = [info for info in infos if ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback]
            if not infos:
                raise SourceError(f"{self.host!r} does not resolve to a loopback address; use 127.0.0.1")
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr


class UdpSource(NetSource):
    """One JSON object per UDP datagram."""

    scheme = "udp"
    options = (*NetSource.options, "rcvbuf")

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int | str = 0,
        *,
        token: str | None = None,
        max_bytes: int | str | None = None,
        public: bool | str = False,
        rcvbuf: int | str | None = None,
        **unknown: object,
    ) -> None:
        super().__init__(host, port, token=token, max_bytes=max_bytes, public=public, unknown=unknown)
        self.rcvbuf = (
            1 << 20
            if rcvbuf is None
            else _int_option("rcvbuf", rcvbuf, 4096, 1 << 28, "a buffer size in bytes")
        )
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dropped = 0
        self._overflow_opt = _rxq_ovfl_option()

    @property
    def dropped(self) -> int:
        """Datagrams the kernel dropped because the receive buffer was full (Linux only, else 0).

        They never reached the listener, so they are not in :meth:`stats`. Learnt with the next
        datagram that does arrive.
        """
        with self._lock:
            return self._dropped

    def _start(self) -> None:
        family, sockaddr = self._address(socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise self._bind_error(exc) from None
        if self._overflow_opt is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, self._overflow_opt, 1)
            except OSError:
                self._overflow_opt = None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.bound = _peer(sock.getsockname())
        self._wake_r, self._wake_w = socket.socketpair()
        self.uri = f"{self.scheme}://{_hostport(self.host, self.port)}"
        self._thread = threading.Thread(target=self._serve, name=f"metabgm {self.uri}", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s: receiving thread did not stop within 5 s", self.uri)
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _serve(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        sock = self._sock
        ancsize = socket.CMSG_SPACE(4) if self._overflow_opt is not None else 0
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                selector.select()
                # Read what is queued in batches, checking for close() between them.
                for _ in range(256):
                    if self._stopping.is_set():
                        return
                    try:
                        data, ancdata, flags, addr = sock.recvmsg(self.max_bytes + 1, ancsize)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # e.g. ICMP errors reported on the socket
                        if self._stopping.is_set():
                            return
                        self._reject_log("socket_error", f"receive failed: {exc}")
                        break
                    peer = _peer(addr)
                    try:
                        self._note_drops(ancdata)
                        if len(data) > self.max_bytes or flags & socket.MSG_TRUNC:
                            self._reject("oversized", f"datagram over max_bytes={self.max_bytes}", peer)
                        else:
                            self._offer(data, peer)
                    except Exception as exc:  # never let one datagram end the receiving thread
                        self._reject("internal_error", f"{type(exc).__name__}: {exc}", peer, True)

    def _note_drops(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == self._overflow_opt and len(value) >= 4:
                total = int.from_bytes(value[:4], sys.byteorder)
                with self._lock:
                    new, self._dropped = total - self._dropped, total
                if new > 0:
                    self._reject_log(
                        "kernel_dropped",
                        f"the kernel dropped {new} datagram(s) (receive buffer full; {total} in all). "
                        "Send less often or raise ?rcvbuf=",
                    )


class WebSocketSource(NetSource):
    """One JSON object per WebSocket text frame (``websockets`` threading server)."""

    scheme = "ws"
    options = (
        *NetSource.options,
        "max_connections",
        "origin",
        "ping_interval",
        "ping_timeout",
        "open_timeout",
        "close_timeout",
    )

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int | str = 0,
        *,
        token: str | None = None,
        max_bytes: int | str | None = None,
        public: bool | str = False,
        max_connections: int | str = 16,
        origin: str | None = None,
        ping_interval: float | str = 20.0,
        ping_timeout: float | str = 20.0,
        open_timeout: float | str = 5.0,
        close_timeout: float | str = 1.0,
        **unknown: object,
    ) -> None:
        super().__init__(host, port, token=token, max_bytes=max_bytes, public=public, unknown=unknown)
        self.max_connections = _int_option("max_connections", max_connections, 1, 1024, "a connection count")
        self.ping_interval = _float_option("ping_interval", ping_interval, 0.05, 3600.0)
        self.ping_timeout = _float_option("ping_timeout", ping_timeout, 0.05, 3600.0)
        self.open_timeout = _float_option("open_timeout", open_timeout, 0.05, 600.0)
        self.close_timeout = _float_option("close_timeout", close_timeout, 0.0, 60.0)
        if origin is None:
            self.origins: frozenset[str] | None = frozenset()
        elif origin.strip() == "*":
            self.origins = None
        else:
            self.origins = frozenset(o.strip().rstrip("/").lower() for o in origin.split(",") if o.strip())
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self._thread_peer = threading.local()
        """The peer address of the connection this handler thread serves (from accept())."""
        self._conn_lock = threading.Lock()
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def connections(self) -> int:
        """TCP connections being served now (open or in their opening handshake)."""
        with self._conn_lock:
            return self._active

    def _start(self) -> None:
        from websockets.sync.server import ServerConnection, serve

        family, sockaddr = self._address(socket.SOCK_STREAM)
        try:
            sock = socket.create_server(sockaddr[:2], family=family, backlog=64)
        except OSError as exc:
            raise self._bind_error(exc) from None
        self.port = sock.getsockname()[1]
        self.bound = _peer(sock.getsockname())
        self.uri = f"{self.scheme}://{_hostport(self.host, self.port)}"
        source = self

        class Tracked(ServerConnection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                # The peer as accept() gave it: asking the socket later fails once it has closed.
                self.peer = getattr(source._thread_peer, "peer", "?")
                with source._conn_lock:
                    source._conns.add(self)

            def handshake(self, *args: Any, **kwargs: Any) -> None:
                super().handshake(*args, **kwargs)
                from websockets.protocol import OPEN

                if self.protocol.state is not OPEN and self.protocol.handshake_exc is None:
                    # The peer sent its messages and closed before the handshake was done: the
                    # library will not call the handler, but the messages arrived; take them.
                    try:
                        source._handle(self)
                    except Exception as exc:
                        log.debug("%s: %s closed early: %s", source.uri, self.peer, exc)

        server = serve(
            self._handle,
            sock=sock,
            compression=None,
            max_size=self.max_bytes,
            max_queue=16,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            process_request=self._process_request,
            process_response=self._process_response,
            server_header="metabgm-edge",
            create_connection=Tracked,
            logger=_QuietLogger(logging.getLogger(f"{__name__}.websockets")),
        )
        server.handler = self._guard(server, server.handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"metabgm {self.uri}", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        from websockets.protocol import CONNECTING

        server = self._server
        if server is None:
            return
        stopper = threading.Thread(target=server.shutdown, name=f"metabgm {self.uri} shutdown", daemon=True)
        stopper.start()
        server.socket_closed.wait(timeout=2.0)
        # shutdown() closes open connections (1001 going away) and then waits for every handler;
        # connections still in their opening handshake would hold it for open_timeout: abort them.
        deadline = time.monotonic() + self.close_timeout + 3.0
        while stopper.is_alive() and time.monotonic() < deadline:
            with self._conn_lock:
                pending = [c for c in self._conns if c.protocol.state is CONNECTING]
            for conn in pending:
                conn.close_socket()
            stopper.join(timeout=0.05)
        if stopper.is_alive():
            log.warning("%s: connections did not close within %.0f s", self.uri, self.close_timeout + 3.0)
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _guard(self, server: Any, handler: Callable[[socket.socket, Any], None]) -> Callable[..., None]:
        """Wrap the per-connection handler with the cap on concurrent connections."""

        def guarded(sock: socket.socket, addr: Any) -> None:
            self._thread_peer.peer = _peer(addr)
            with self._conn_lock:
                admit = self._active < self.max_connections
                if admit:
                    self._active += 1
            if not admit:
                try:
                    self._refuse(sock, addr)
                finally:
                    # The server registered this thread and expects its handler to unregister it.
                    lock = getattr(server, "lock", None)
                    threads = getattr(server, "handler_threads", None)
                    if lock is not None and threads is not None:
                        with lock:
                            threads.discard(threading.current_thread())
                return
            try:
                handler(sock, addr)
            finally:
                with self._conn_lock:
                    self._active -= 1

        return guarded

    def _refuse(self, sock: socket.socket, addr: Any) -> None:
        peer = _peer(addr)
        self._reject(
            "too_many_connections",
            f"{self.max_connections} connections are open already; raise ?max_connections= if you need more",
            peer,
        )
        try:
            sock.settimeout(0.2)
            with contextlib.suppress(OSError):
                sock.recv(8192)  # read the request so that closing does not reset the connection
            body = b"too many connections\n"
            sock.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        except OSError:
            pass
        finally:
            sock.close()

    def _process_request(self, conn: Any, request: Any) -> Any:
        origin = request.headers.get("Origin")
        if origin is not None and self.origins is not None and origin.rstrip("/").lower() not in self.origins:
            # Browsers always send Origin; a web page must not be able to drive a loopback listener.
            self._reject(
                "forbidden_origin",
                f"Origin {origin[:100]!r} is not allowed; add ?origin={origin[:100]} to accept it",
                _conn_peer(conn),
            )
            return conn.respond(http.HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        return None

    def _process_response(self, conn: Any, request: Any, response: Any) -> None:
        if response.status_code in (http.HTTPStatus.BAD_REQUEST, http.HTTPStatus.UPGRADE_REQUIRED):
            detail = f"not a WebSocket opening handshake (answered HTTP {response.status_code})"
            self._reject("bad_handshake", detail, _conn_peer(conn))
        return None

    def _handle(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
        from websockets.frames import CloseCode

        peer = _conn_peer(conn)
        log.debug("%s: connection from %s", self.uri, peer)
        try:
            while True:
                message = conn.recv()
                if isinstance(message, str):
                    self._offer(message, peer)
                else:
                    self._reject("binary_frame", f"{len(message)}-byte binary frame; send JSON as text", peer)
        except ConnectionClosedOK:
            log.debug("%s: %s disconnected", self.uri, peer)
        except ConnectionClosedError as exc:
            code = exc.sent.code if exc.sent is not None else None
            if code is None and _caused_by(exc, UnicodeDecodeError):
                code = CloseCode.INVALID_DATA  # the peer closed before our close frame went out
            if code == CloseCode.MESSAGE_TOO_BIG:
                self._reject(
                    "oversized", f"frame over max_bytes={self.max_bytes}; closed the connection", peer
                )
            elif code == CloseCode.INVALID_DATA:
                self._reject("invalid_utf8", "text frame is not valid UTF-8; closed the connection", peer)
            elif code == CloseCode.PROTOCOL_ERROR:
                self._reject("protocol_error", f"{exc}; closed the connection", peer)
            elif code == CloseCode.INTERNAL_ERROR:
                self._reject_log("connection_lost", f"{peer}: {exc}", level=logging.INFO)
            else:
                log.debug("%s: %s disconnected: %s", self.uri, peer, exc)


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The websockets library's per-connection INFO lines ("connection open", "connection closed")
    and its handler errors go to DEBUG, so that a flood of (short) connections cannot fill a log
    that records INFO. The library wraps this logger in adapters of its own, which call ``log``."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level <= logging.INFO or "connection handler failed" in str(msg):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)


def _conn_peer(conn: Any) -> str:
    """A connection's peer without asking its socket (which fails once the peer has closed)."""
    peer = getattr(conn, "peer", None)
    if peer:
        return str(peer)
    try:
        return _peer(conn.remote_address)
    except OSError:
        return "?"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _player_options(query: dict[str, object]) -> dict[str, Any]:
    """``player`` (the one a single session follows), ``forget`` (seconds before a quiet player
    is forgotten) and ``max_players``, taken out of a listener's query."""
    out: dict[str, Any] = {}
    if "player" in query:
        out["player"] = str(query.pop("player"))
    if "forget" in query:
        out["forget_after"] = _float_option("forget", query.pop("forget"), 1.0, 86400.0)  # type: ignore[arg-type]
    if "max_players" in query:
        out["max_players"] = _int_option("max_players", query.pop("max_players"), 1, 4096, "a player count")  # type: ignore[arg-type]
    return out


def _int_option(name: str, value: int | str, low: int, high: int, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool | float) or not low <= number <= high:
        raise SourceError(f"{name}={value!r}: expected {what} from {low} to {high}")
    return number


def _float_option(name: str, value: float | str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:  # also refuses NaN
        raise SourceError(f"{name}={value!r}: expected seconds from {low:g} to {high:g}")
    return number


def _bool_option(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SourceError(f"{name}={value!r}: expected 1 or 0 (also true/false, yes/no, on/off)")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return _hostport(str(addr[0]), addr[1])
    return str(addr) if addr else "?"


def _rxq_ovfl_option() -> int | None:
    """SO_RXQ_OVFL (the kernel's per-socket drop counter), where its number is known."""
    value = getattr(socket, "SO_RXQ_OVFL", None)
    if value is not None:
        return int(value)
    if sys.platform == "linux" and not platform.machine().startswith(("sparc", "parisc", "alpha")):
        return 40  # asm-generic/socket.h (x86, arm, arm64, riscv, mips, powerpc)
    return None
