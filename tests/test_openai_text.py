"""Text from an OpenAI-compatible server: a real llama.cpp server on loopback (including its death),
and a hand-written loopback server that misbehaves in the ways real ones do."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llama_server import ALIAS, LlamaServer, free_port

from metabgm_edge.audio import open_audio_backend
from metabgm_edge.errors import BackendError
from metabgm_edge.playback.wav import read_wav
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.sources import open_source
from metabgm_edge.stages import MAX_WORDS, describe
from metabgm_edge.state import state_from_dict
from metabgm_edge.text import ChatMessage, StageRequest, open_text_backend
from metabgm_edge.text.openai_compat import OpenAIText

ROOT = Path(__file__).resolve().parent.parent
FOREST = state_from_dict(
    {"scene": {"biome": "forest"}, "time": {"phase": "day"}, "movement": {"state": "walking"}}
)


def request(timeout: float | None = None, **kw: Any) -> StageRequest:
    return StageRequest(
        stage="description",
        messages=[ChatMessage("user", "Describe calm forest music.")],
        characterized={},
        combat=False,
        max_new_tokens=kw.pop("max_new_tokens", 24),
        seed=kw.pop("seed", 3),
        timeout=timeout,
    )


# -- a loopback server that answers what the test tells it to ---------------------------------------


class Fake:
    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                mode = fake.mode
                if mode == "ok":
                    answer = {
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": " A slow piano piece. "},
                                "finish_reason": "stop",
                            }
                        ]
                    }
                    self._send(200, json.dumps(answer).encode())
                elif mode == "overloaded":
                    self._send(
                        503, json.dumps({"error": {"message": "model is overloaded\nretry later"}}).encode()
                    )
                elif mode == "not json":
                    self._send(200, b"<html>gateway</html>")
                elif mode == "no choices":
                    self._send(200, json.dumps({"choices": []}).encode())
                elif mode == "null content":
                    self._send(200, json.dumps({"choices": [{"message": {"content": None}}]}).encode())
                elif mode == "huge":
                    self.send_response(200)
                    self.send_header("Content-Length", str(8 << 20))
                    self.end_headers()
                    for _ in range(128):
                        self.wfile.write(b" " * 65536)
                elif mode == "stall":
                    fake.release.wait(20)
                elif mode == "trickle":  # a byte every 0.2 s: each read is quick, the answer never ends
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(100):
                        if fake.release.wait(0.2):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                elif mode == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = Fake()
    yield server
    server.close()


def test_request_is_a_plain_chat_completion_without_streaming(fake: Fake, monkeypatch) -> None:
    monkeypatch.delenv("METABGM_EDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    backend = open_text_backend(f"{fake.url}?temperature=0.2")
    assert backend.name == f"openai:fake-model@127.0.0.1:{fake.server.server_address[1]}"
    assert backend.generate(request()) == "A slow piano piece."
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {
        "messages": [{"role": "user", "content": "Describe calm forest music."}],
        "max_tokens": 24,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 3,
        "stream": False,
        "model": "fake-model",
    }
    # A key meant for OpenAI is not sent to another server unless the spec says so.
    assert "Authorization" not in sent["headers"]
    monkeypatch.setenv("METABGM_EDGE_API_KEY", "local-secret")
    backend.generate(request())
    assert fake.requests[-1]["headers"]["Authorization"] == "Bearer local-secret"
    named = open_text_backend(f"{fake.url}?model=other&key_env=OPENAI_API_KEY")
    named.generate(request())
    assert fake.requests[-1]["body"]["model"] == "other"
    assert fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-not-for-this-server"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("overloaded", r"HTTP 503: model is overloaded retry later"),
        ("not json", "the answer is not JSON"),
        ("no choices", r"no choices\[0\]\.message\.content"),
        ("null content", r"no choices\[0\]\.message\.content"),
        ("huge", "answer larger than 4 MiB, refused"),
        ("reset", r"chat/completions: "),
    ],
)
def test_a_bad_answer_is_one_clear_error(fake: Fake, mode: str, message: str) -> None:
    backend = open_text_backend(f"{fake.url}?model=m")
    fake.mode = mode
    with pytest.raises(BackendError, match=message) as caught:
        backend.generate(request())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["stall", "trickle"])
def test_the_whole_call_ends_within_the_stages_time(fake: Fake, mode: str) -> None:
    backend = open_text_backend(f"{fake.url}?model=m&timeout=20")
    fake.mode = mode
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within 0\.50 s"):
        backend.generate(request(timeout=0.5))
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(BackendError, match="no time left"):
        backend.generate(request(timeout=0.0))


def test_a_server_that_is_down(monkeypatch, caplog) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with caplog.at_level(logging.WARNING):
        backend = open_text_backend(url)  # opening never fails: play must start and fall back
    assert "could not ask the server which model" in caplog.text
    with pytest.raises(BackendError, match="connection refused"):
        backend.generate(request())


def test_specs(monkeypatch) -> None:
    with pytest.raises(BackendError, match="do not put the API key"):
        open_text_backend("http://127.0.0.1:1/v1?key=sk-123")
    with pytest.raises(BackendError, match="no user, password"):
        open_text_backend("http://user:sk-123@127.0.0.1:1/v1")
    with pytest.raises(BackendError, match=r"unknown parameter\(s\) temp"):
        open_text_backend("http://127.0.0.1:1/v1?temp=1")
    with pytest.raises(BackendError, match=r"timeout must be a number from 0\.1 to 600"):
        open_text_backend("http://127.0.0.1:1/v1?model=m&timeout=nan")
    with pytest.raises(BackendError, match="port is not a number"):
        open_text_backend("http://127.0.0.1:99999/v1?model=m")
    with pytest.raises(BackendError, match="openai: needs a model name"):
        open_text_backend("openai:")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    backend = open_text_backend("openai:gpt-4o-mini?timeout=2")
    assert isinstance(backend, OpenAIText)
    assert (backend.base_url, backend.model, backend.key_env, backend.timeout) == (
        "http://127.0.0.1:9/v1",
        "gpt-4o-mini",
        "OPENAI_API_KEY",
        2.0,
    )
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert open_text_backend("openai:gpt-4o-mini").base_url == "https://api.openai.com/v1"


# -- a stalled server in a session: the fallback, and the worker freed for the next segment --------


def test_a_stalled_server_takes_the_composer_fallback_and_frees_the_worker(
    fake: Fake, tmp_path: Path, caplog
) -> None:
    fake.mode = "stall"
    backend = open_text_backend(f"{fake.url}?model=m")
    s = Session(
        open_source("sim:forest", seed=1),
        backend,
        open_audio_backend("synth"),
        options=PlayOptions(fast=True, duration=8.0, interval=2.0),
        out=tmp_path / "out.wav",
    )
    with caplog.at_level(logging.WARNING):
        stats = s.run()
    assert stats.segments >= 4
    text_fallbacks = sum(v for k, v in stats.fallbacks.items() if k.startswith("text.narrative."))
    assert text_fallbacks == stats.segments  # every segment's narrative came from the composer
    # The server call ended with the stage's time, so no segment started with the worker still busy
    # (within a segment, the description finds the narrative's time used up, and takes the composer).
    assert (
        "still busy with a call that missed its deadline; composer rules write the narrative"
        not in caplog.text
    )
    assert read_wav(tmp_path / "out.wav")[0].shape[0] == 8 * 32000


# -- the real llama.cpp server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()


@pytest.mark.slow
def test_llama_cpp_server_writes_both_stages(llama: LlamaServer) -> None:
    backend = open_text_backend(f"{llama.url}?timeout=180")  # generous: CI machines are shared
    assert backend.name == f"openai:{ALIAS}@127.0.0.1:{llama.port}"  # the model it serves, asked
    for mode in ("two-stage", "direct"):
        result = describe(FOREST, backend, mode=mode, seed=1)
        assert result.backend == backend.name
        assert len(result.description.split()) <= MAX_WORDS and len(result.description) > 10
        if mode == "two-stage":
            assert result.narrative and len(result.narrative.split()) >= 5
    # Seeded: the same request gives the same text.
    assert backend.generate(request(seed=9)) == backend.generate(request(seed=9))


@pytest.mark.slow
def test_play_with_a_server_that_is_killed_mid_session(tmp_path: Path) -> None:
    server = LlamaServer(tmp_path / "server.log")
    try:
        backend = open_text_backend(f"{server.url}?timeout=180")  # a busy machine is slow, not broken
        s = Session(
            open_source("sim:tour?leg=10", seed=2),
            backend,
            open_audio_backend("synth"),
            options=PlayOptions(fast=True, duration=50.0, interval=10.0, deadline=120.0),
            out=tmp_path / "out.wav",
            log_path=tmp_path / "log.jsonl",
        )
        seen: list[Any] = []

        def on_segment(rec: Any) -> None:
            seen.append(rec)
            if len(seen) == 2:
                server.kill()

        s.on_segment = on_segment
        stats = s.run()
    finally:
        server.stop()
    before, after = seen[:2], seen[2:]
    assert all(not r.fallbacks for r in before), [r.fallbacks for r in before]  # the server wrote these
    assert len(after) >= 3
    for rec in after:
        assert rec.fallbacks == ["text.narrative.error", "text.description.error"]
        assert rec.description and rec.text_backend == backend.name
    assert stats.fallbacks == {"text.narrative.error": len(after), "text.description.error": len(after)}
    audio = read_wav(tmp_path / "out.wav")[0]
    assert audio.shape[0] == 50 * 32000 and stats.starvations == 0


@pytest.mark.slow
def test_play_cli_with_a_server(llama: LlamaServer, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metabgm_edge",
            "play",
            "--fast",
            "--duration",
            "20",
            "--deadline",
            "120",
            "--text",
            llama.url,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"text server {llama.url} serves {ALIAS}" in done.stderr  # says which model serves the text
    assert "played 20.0 s" in done.stdout
