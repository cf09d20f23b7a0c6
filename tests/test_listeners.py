"""Live listeners (udp://, ws://) on real loopback sockets, fed hostile input between valid messages."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from metabgm_edge.errors import SourceError
from metabgm_edge.sources import open_source
from metabgm_edge.sources.net import LOG_FIRST, RejectLog, UdpSource, WebSocketSource
from metabgm_edge.state import MAX_MESSAGE_BYTES

TOKEN = "s3cret-token"
NET_LOGGER = "metabgm_edge.sources.net"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        time.sleep(0.002)


def valid(ticks: int, token: str | None = TOKEN, **more: object) -> bytes:
    """A valid message told apart by its ticks."""
    message: dict[str, object] = {"v": 1, "time": {"ticks": ticks}, "scene": {"biome": "forest"}, **more}
    if token is not None:
        message["token"] = token
    return json.dumps(message, separators=(",", ":")).encode()


def ticks_of(source: UdpSource | WebSocketSource) -> list[int]:
    return [state.time.ticks for _, state in source.drain()]


def deep(levels: int) -> bytes:
    return b'{"v":1,"x":' + b"[" * levels + b"]" * levels + b"}"


def padded(size: int) -> bytes:
    """A valid JSON message (with the token) of exactly ``size`` bytes."""
    head = valid(1)[:-1] + b',"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


# (name, payload, accepted reasons). NaN and 1e999 are not JSON: the validator may report them as
# malformed JSON or as non-finite numbers; either way they must be refused and counted.
HOSTILE: list[tuple[str, bytes, set[str]]] = [
    ("truncated json", b'{"v":1,"scene":', {"malformed_json"}),
    ("empty", b"", {"malformed_json"}),
    ("garbage", b"\x00\x01\x02 hello", {"malformed_json"}),
    ("array", b"[1,2,3]", {"not_an_object"}),
    ("NaN", b'{"v":1,"token":"s3cret-token","temperature":NaN}', {"malformed_json", "non_finite"}),
    ("Infinity", b'{"v":1,"token":"s3cret-token","temperature":Infinity}', {"malformed_json", "non_finite"}),
    ("1e999", b'{"v":1,"token":"s3cret-token","temperature":1e999}', {"malformed_json", "non_finite"}),
    ("deeply nested", deep(200), {"too_deep"}),
    ("nested past the limit", deep(20), {"too_deep"}),
    ("wrong type", valid(5, temperature="hot"), {"invalid_field"}),
    ("out of range", valid(5, health={"value": -3, "max": 20}), {"invalid_field"}),
    ("unknown nested field", valid(5, scene={"biome": "forest", "colour": "red"}), {"invalid_field"}),
    ("too many hostiles", valid(5, hostiles=[{"name": "z", "distance": 1}] * 65), {"invalid_field"}),
    ("version 2", json.dumps({"v": 2, "token": TOKEN}).encode(), {"unknown_version"}),
    ("no version", json.dumps({"token": TOKEN, "scene": {}}).encode(), {"unknown_version"}),
    ("wrong token", valid(5, token="guess"), {"bad_token"}),
    ("no token", valid(5, token=None), {"bad_token"}),
    ("token not a string", valid(5, token=None)[:-1] + b',"token":12345}', {"invalid_field"}),
    ("invalid utf-8 in a string", valid(5)[:-1] + b',"note":"\xff\xfe"}', {"invalid_utf8"}),
    ("invalid utf-8 outside strings", b"\xc3\x28" + valid(5), {"invalid_utf8"}),
    ("one byte over max_bytes", padded(2049), {"oversized"}),
]


@pytest.fixture
def udp() -> Iterator[UdpSource]:
    source = open_source(f"udp://127.0.0.1:0?token={TOKEN}&max_bytes=2048")
    assert isinstance(source, UdpSource)
    with source:
        yield source


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def expect_outcome(
    source: UdpSource | WebSocketSource, send: Callable[[], None], reasons: set[str] | None
) -> None:
    """Send one message and check it was accepted (reasons None) or rejected for one of ``reasons``."""
    before = source.stats()
    send()
    wait_for(lambda: source.stats().received > before.received)
    after = source.stats()
    assert after.received == before.received + 1
    if reasons is None:
        assert after.accepted == before.accepted + 1, after.reasons
    else:
        new = Counter(after.reasons) - Counter(before.reasons)
        assert after.accepted == before.accepted
        assert len(new) == 1 and next(iter(new)) in reasons, (new, reasons)


# -- open_source ------------------------------------------------------------------------------------


def test_udp_uri_defaults() -> None:
    source = open_source("udp://127.0.0.1:7717")
    assert isinstance(source, UdpSource)
    assert (source.host, source.port) == ("127.0.0.1", 7717)
    assert source.max_bytes == MAX_MESSAGE_BYTES
    assert source.token is None and not source.public
    assert source.live and source.uri == "udp://127.0.0.1:7717"


def test_ws_uri_with_options() -> None:
    source = open_source(
        "ws://localhost:7718/state?token=abc%26def&max_bytes=1024&max_connections=3"
        "&origin=http://localhost:8080,https://game.example&ping_timeout=5"
    )
    assert isinstance(source, WebSocketSource)
    assert (source.host, source.port, source.token) == ("localhost", 7718, "abc&def")
    assert (source.max_bytes, source.max_connections, source.ping_timeout) == (1024, 3, 5.0)
    assert source.origins == {"http://localhost:8080", "https://game.example"}
    assert "abc" not in source.uri, "the token must not show in the URI used in logs"


def test_ipv6_loopback_and_public_flag() -> None:
    assert open_source("udp://[::1]:7717").uri == "udp://[::1]:7717"
    for flag in ("1", "true", "yes", "on"):
        source = open_source(f"ws://0.0.0.0:7717?public={flag}&token=t")
        assert isinstance(source, WebSocketSource) and source.public
    assert not UdpSource("127.0.0.1", 0, public="0").public


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("udp://0.0.0.0:7717", "public=1"),
        ("ws://192.168.1.20:7717", "public=1"),
        ("udp://game-host.example:7717", "non-loopback"),
        ("udp://127.0.0.1:7717?public=maybe", "public='maybe'"),
        ("udp://127.0.0.1:7717?max_bytes=lots", "max_bytes='lots'"),
        ("udp://127.0.0.1:7717?max_bytes=1000000", "from 64 to 16384"),
        ("ws://127.0.0.1:7717?max_bytes=10", "from 64 to 16384"),
        ("ws://127.0.0.1:7717?max_connections=0", "max_connections"),
        ("ws://127.0.0.1:7717?ping_timeout=nan", "ping_timeout"),
        ("udp://127.0.0.1:7717?tokn=abc", "valid ones are token, max_bytes, public"),
        ("udp://127.0.0.1:7717?token=", "token is empty"),
        ("ws://127.0.0.1:7717?max_connection=2", "max_connections"),
        ("udp://127.0.0.1", "needs a port"),
        ("udp://127.0.0.1:99999", "port"),
        ("ws://127.0.0.1:http", "port"),
    ],
)
def test_bad_uris_say_what_to_change(uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message.replace("?", r"\?").replace(".", r"\.")):
        open_source(uri)


def test_empty_token_is_refused() -> None:
    with pytest.raises(SourceError, match="token is empty"):
        UdpSource("127.0.0.1", 0, token="")


# -- UDP --------------------------------------------------------------------------------------------


def test_udp_rejects_each_hostile_message_and_delivers_every_valid_one(
    udp: UdpSource, sender: socket.socket
) -> None:
    address = ("127.0.0.1", udp.port)
    assert udp.port != 0
    for i, (name, payload, reasons) in enumerate(HOSTILE):
        expect_outcome(udp, lambda i=i: sender.sendto(valid(i), address), None)
        expect_outcome(udp, lambda p=payload: sender.sendto(p, address), reasons)
        assert udp.sample(0.0) is not None and udp.sample(0.0).time.ticks == i, name
    expect_outcome(udp, lambda: sender.sendto(padded(2048), address), None)  # exactly max_bytes is fine
    stats = udp.stats()
    assert stats.accepted == len(HOSTILE) + 1
    assert stats.rejected == len(HOSTILE)
    assert ticks_of(udp) == [*range(len(HOSTILE)), 1]


def test_udp_datagram_far_above_the_limit_is_rejected(udp: UdpSource, sender: socket.socket) -> None:
    # 60 KB: the kernel truncates it to the receive buffer; the listener must still see it as oversized.
    expect_outcome(udp, lambda: sender.sendto(padded(60_000), ("127.0.0.1", udp.port)), {"oversized"})
    expect_outcome(udp, lambda: sender.sendto(valid(7), ("127.0.0.1", udp.port)), None)
    assert ticks_of(udp) == [7]


def test_udp_flood_of_bad_messages(
    udp: UdpSource, sender: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NET_LOGGER)
    address = ("127.0.0.1", udp.port)
    bad = [b"{nope", deep(50), valid(0, token="wrong")]
    sent_valid: list[int] = []
    total = 0
    # 3000 bad datagrams and 30 valid ones, in bursts of 100 (paced so that none is dropped by the
    # kernel: the point here is that every one is judged, not the socket buffer size).
    for burst in range(30):
        for k in range(100):
            sender.sendto(bad[(burst * 100 + k) % 3], address)
        sender.sendto(valid(1000 + burst), address)
        sent_valid.append(1000 + burst)
        total += 101
        wait_for(lambda total=total: udp.stats().received + udp.dropped >= total)
    assert udp.dropped == 0
    stats = udp.stats()
    assert stats.received == total and stats.accepted == 30
    assert stats.reasons == {"malformed_json": 1000, "too_deep": 1000, "bad_token": 1000}
    assert ticks_of(udp) == sent_valid
    # Still serving.
    expect_outcome(udp, lambda: sender.sendto(valid(5000), address), None)
    # The log did not get one line per rejection.
    net_lines = [r for r in caplog.records if r.name == NET_LOGGER and r.levelno >= logging.WARNING]
    assert len(net_lines) <= 3 * LOG_FIRST + 1
    udp.close()
    summary = [r.getMessage() for r in caplog.records if "more rejections" in r.getMessage()]
    assert summary and "2985 more rejections" in summary[-1], summary


@pytest.mark.may_skip  # skips only where it does not apply (a GPU build, another OS)
def test_udp_counts_datagrams_the_kernel_dropped(sender: socket.socket) -> None:
    source = UdpSource("127.0.0.1", 0, rcvbuf=4096)
    if source._overflow_opt is None:
        pytest.skip("the kernel's drop counter (SO_RXQ_OVFL) is Linux only")
    gate = threading.Event()
    offer = source._offer

    def slow_offer(data: bytes | str, peer: str = "") -> object:
        gate.wait(10)  # hold the receiving thread so that the socket buffer fills up
        return offer(data, peer)

    source._offer = slow_offer  # type: ignore[method-assign]
    with source:
        address = ("127.0.0.1", source.port)
        for i in range(1000):
            sender.sendto(valid(i, token=None), address)
        gate.set()
        # The drop count arrives with the next datagram that gets in: send probes until one does.
        probes = 0
        while source.sample(0.0) is None or source.sample(0.0).time.ticks != 99_999:  # type: ignore[union-attr]
            sender.sendto(valid(99_999, token=None), address)
            probes += 1
            assert probes < 200, "no probe got through"
            time.sleep(0.05)
        # Every datagram was either judged by the listener or counted as dropped by the kernel.
        wait_for(lambda: source.stats().received + source.dropped == 1000 + probes)
        assert source.dropped > 0
        got = ticks_of(source)
        assert got == sorted(got) and got[-1] == 99_999


def test_udp_validator_crash_is_counted_and_does_not_stop_the_listener(
    udp: UdpSource, sender: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metabgm_edge.state as state  # every live source validates through it

    real = state.parse_message

    def buggy(data: bytes | str, *, token: str | None = None) -> object:
        if b"boom" in (data if isinstance(data, bytes) else data.encode()):
            raise KeyError("a bug in the validator")
        return real(data, token=token)

    monkeypatch.setattr(state, "parse_message", buggy)
    address = ("127.0.0.1", udp.port)
    expect_outcome(udp, lambda: sender.sendto(valid(1, note="boom"), address), {"internal_error"})
    expect_outcome(udp, lambda: sender.sendto(valid(2), address), None)
    assert ticks_of(udp) == [2]


def test_udp_bind_failure_names_the_address() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        source = UdpSource("127.0.0.1", port)
        with pytest.raises(SourceError, match=rf"udp://127\.0\.0\.1:{port}: .*in use"):
            source.start()
        source.close()
    finally:
        taken.close()


def test_close_stops_the_thread_frees_the_port_and_is_idempotent(sender: socket.socket) -> None:
    source = UdpSource("127.0.0.1", 0)
    source.start()
    source.start()  # a second start is a no-op
    port, thread = source.port, source._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    source.close()
    source.close()
    assert not thread.is_alive()
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(("127.0.0.1", port))  # the port was released
    again.close()
    with pytest.raises(SourceError, match="closed"):
        source.start()
    UdpSource("127.0.0.1", 0).close()  # closing a never-started listener is fine


# -- WebSocket --------------------------------------------------------------------------------------


@pytest.fixture
def ws() -> Iterator[WebSocketSource]:
    source = open_source(f"ws://127.0.0.1:0?token={TOKEN}&max_bytes=2048&max_connections=4")
    assert isinstance(source, WebSocketSource)
    with source:
        yield source


def client(source: WebSocketSource, **kwargs: object) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{source.port}", open_timeout=5, close_timeout=1, **kwargs)  # type: ignore[arg-type]


def test_ws_rejects_each_hostile_frame_and_delivers_every_valid_one(ws: WebSocketSource) -> None:
    frame_level = [(n, p, r) for n, p, r in HOSTILE if "utf-8" not in n and "max_bytes" not in n]
    with client(ws) as conn:
        for i, (name, payload, reasons) in enumerate(frame_level):
            expect_outcome(ws, lambda i=i: conn.send(valid(i).decode()), None)
            expect_outcome(ws, lambda p=payload: conn.send(p.decode()), reasons)
            assert ws.sample(0.0).time.ticks == i, name  # type: ignore[union-attr]
        expect_outcome(ws, lambda: conn.send(valid(500)), {"binary_frame"})  # JSON, but binary
        expect_outcome(ws, lambda: conn.send(padded(2048).decode()), None)
    assert ticks_of(ws) == [*range(len(frame_level)), 1]


def test_ws_huge_frame_and_invalid_utf8_close_only_their_own_connection(ws: WebSocketSource) -> None:
    with client(ws) as steady:
        steady.send(valid(1).decode())
        with client(ws) as huge:
            with pytest.raises(ConnectionClosed):
                huge.send("x" * 4_000_000)  # refused from the frame header: 1009 message too big
                huge.recv(timeout=5)
            assert huge.close_code == 1009
        with client(ws) as bad_text:
            with bad_text.protocol_mutex:  # a non-UTF-8 text frame (the client API would not send one)
                bad_text.protocol.send_frame(Frame(Opcode.TEXT, b'{"v":1,"note":"\xff"}'))
                bad_text.send_data()
            with pytest.raises(ConnectionClosed):
                bad_text.recv(timeout=5)
            assert bad_text.close_code == 1007
        steady.send(valid(2).decode())
        wait_for(lambda: ws.stats().accepted == 2)
    assert ws.stats().reasons == {"oversized": 1, "invalid_utf8": 1}
    assert ticks_of(ws) == [1, 2]
    wait_for(lambda: ws.connections == 0)


def test_ws_flood_on_one_connection_does_not_starve_another(
    ws: WebSocketSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NET_LOGGER)
    with client(ws) as flooder, client(ws) as game:

        def flood() -> None:
            for k in range(2000):
                flooder.send(["{nope", '{"v":7}', "[]"][k % 3])

        thread = threading.Thread(target=flood)
        thread.start()
        for i in range(50):
            game.send(valid(i).decode())
        thread.join(30)
        wait_for(lambda: ws.stats().received == 2050)
    stats = ws.stats()
    assert stats.accepted == 50
    assert stats.reasons == {"malformed_json": 667, "unknown_version": 667, "not_an_object": 666}
    assert ticks_of(ws) == list(range(50))
    net_lines = [r for r in caplog.records if r.name == NET_LOGGER and r.levelno >= logging.WARNING]
    assert len(net_lines) <= 3 * LOG_FIRST + 1


def test_ws_caps_concurrent_connections_and_recovers(ws: WebSocketSource) -> None:
    with contextlib.ExitStack() as stack:
        admitted = [stack.enter_context(client(ws)) for _ in range(4)]
        for _ in range(20):
            with pytest.raises(InvalidStatus) as info, client(ws):
                pass
            assert info.value.response.status_code == 503
        assert ws.stats().reasons == {"too_many_connections": 20}
        for conn in admitted:
            conn.send(valid(3).decode())
        wait_for(lambda: ws.stats().accepted == 4)  # (each connection has its own thread)
        admitted[0].close()
        wait_for(lambda: ws.connections == 3)
        with client(ws) as late:
            late.send(valid(4).decode())
            wait_for(lambda: ws.stats().accepted == 5)
    assert ticks_of(ws) == [3, 3, 3, 3, 4]


def raw_handshake(port: int) -> socket.socket:
    """Open a WebSocket by hand, then never answer anything (a dead peer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_ws_dead_peer_is_dropped_by_ping_timeout() -> None:
    source = WebSocketSource("127.0.0.1", 0, max_connections=1, ping_interval=0.1, ping_timeout=0.2)
    with source:
        dead = raw_handshake(source.port)
        try:
            wait_for(lambda: source.connections == 1)
            wait_for(lambda: source.connections == 0)  # the slot is freed without the peer's help
            with client(source) as conn:
                conn.send(valid(8, token=None).decode())
                wait_for(lambda: source.stats().accepted == 1)
        finally:
            dead.close()


def test_ws_refuses_browser_origins_unless_allowed(ws: WebSocketSource) -> None:
    with pytest.raises(InvalidStatus) as info:
        client(ws, origin="https://evil.example")
    assert info.value.response.status_code == 403
    assert ws.stats().reasons == {"forbidden_origin": 1}
    allowed = WebSocketSource("127.0.0.1", 0, origin="https://game.example")
    with allowed, client(allowed, origin="https://game.example") as conn:
        conn.send(valid(9, token=None).decode())
        wait_for(lambda: allowed.stats().accepted == 1)


def test_ws_close_ends_open_plain_and_stalled_connections_quickly() -> None:
    threads_before = threading.active_count()
    source = WebSocketSource("127.0.0.1", 0, open_timeout=60)
    source.start()
    with client(source) as conn:
        conn.send(valid(1, token=None).decode())
        wait_for(lambda: source.stats().accepted == 1)
        plain = socket.create_connection(("127.0.0.1", source.port), timeout=5)
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.recv(4096).startswith(b"HTTP/1.1 426")
        wait_for(lambda: source.stats().reasons == {"bad_handshake": 1})
        stalled = [socket.create_connection(("127.0.0.1", source.port), timeout=5) for _ in range(3)]
        wait_for(lambda: source.connections == 4)
        thread = source._thread
        started = time.monotonic()
        source.close()
        # Handshakes that would time out after 60 s are aborted: close() does not wait for them.
        assert time.monotonic() - started < 30
        assert thread is not None and not thread.is_alive()
        assert source.connections == 0
        with pytest.raises(ConnectionClosed):
            conn.recv(timeout=5)
        assert conn.close_code == 1001  # going away
    wait_for(lambda: threading.active_count() <= threads_before)  # no thread left behind
    for sock in [plain, *stalled]:
        sock.close()


def test_ws_bind_failure_names_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        source = WebSocketSource("127.0.0.1", port)
        with pytest.raises(SourceError, match=rf"ws://127\.0\.0\.1:{port}: .*in use"):
            source.start()


# -- logging ----------------------------------------------------------------------------------------


def test_reject_log_is_rate_limited_and_summarised() -> None:
    now = [0.0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test_listeners.reject_log")
    logger.propagate = False
    logger.addHandler(Capture())
    limiter = RejectLog(logger, lambda: "udp://x", first=3, window=60.0, clock=lambda: now[0])
    for _ in range(100):
        limiter("malformed_json", "bad\nline")
    limiter("bad_token", "nope")
    assert len(records) == 4
    assert all("\n" not in line for line in records), "sender text must not forge log lines"
    assert "summarised every 60 s" in records[2]
    now[0] = 61.0
    limiter("malformed_json", "again")
    assert "97 more rejections in the last 61 s: malformed_json x97" in records[4]
    assert records[5].endswith("again")
    limiter.flush()
    assert len(records) == 6  # nothing suppressed since the last summary
