"""Text from any OpenAI-compatible server: llama.cpp's server, Ollama, vLLM, LM Studio, a hosted API.

``--text http://HOST:PORT/v1[?model=NAME][&key_env=VAR][&timeout=S][&temperature=T][&top_p=P]``
(``https://`` too) sends each stage's rendered prompt to ``POST {base}/chat/completions`` with
streaming off and reads ``choices[0].message.content``. ``openai:MODEL`` is the same against
``https://api.openai.com/v1`` (or ``$OPENAI_BASE_URL``) with the key from ``$OPENAI_API_KEY``.

The key is read from an environment variable, never from the spec (specs end up in logs):
``key_env`` names it; the default is ``METABGM_EDGE_API_KEY`` for URLs (so a key meant for one
service is not sent to another) and ``OPENAI_API_KEY`` for ``openai:``. Without a key no
``Authorization`` header is sent (local servers need none).

Time: a request may take at most ``request.timeout`` seconds (the scheduler sets it from what is
left of the text stages' share of the segment deadline), and never more than ``timeout``
(default 30 s) from the spec. The limit covers the whole call (connect, generation, reading the
answer), so a server that stalls or trickles cannot hold a worker thread past the deadline.

Every failure raises :class:`~metabgm_edge.errors.BackendError` with one line saying what happened
(refused connection, time-out, HTTP status with the server's message, an answer that is not a chat
completion); the scheduler then has the composer rules write that stage, logged and counted like
any backend's failure. Only the standard library is used (``http.client``); proxies are not used.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from metabgm_edge.errors import BackendError
from metabgm_edge.text import StageRequest

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_KEY_ENV: Final = "METABGM_EDGE_API_KEY"
OPENAI_BASE: Final = "https://api.openai.com/v1"
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
"""A chat answer of a few sentences is a few kB; anything past this is refused, not buffered."""
PROBE_TIMEOUT: Final = 10.0
_PARAMS: Final = frozenset({"model", "key_env", "timeout", "temperature", "top_p"})


def is_openai_spec(spec: str) -> bool:
    return spec.startswith(("http://", "https://", "openai:"))


class OpenAIText:
    """:class:`~metabgm_edge.text.TextBackend` over an OpenAI-compatible chat completions endpoint."""

    batches = False
    """Requests go one at a time; a server that batches (vLLM, llama.cpp's slots) does it itself."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        key_env: str = DEFAULT_KEY_ENV,
        timeout: float = DEFAULT_TIMEOUT,
        temperature: float = 0.3,
        top_p: float = 0.9,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"text server {base_url!r}: expected http://HOST:PORT/v1 or https://HOST/v1")
        try:
            port = parts.port
        except ValueError:
            raise BackendError(
                f"text server {base_url!r}: the port is not a number from 1 to 65535"
            ) from None
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/") or ""
        default_port = self.port == (443 if self.scheme == "https" else 80)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = (
            f"{self.scheme}://{shown if default_port else _netloc(self.host, self.port)}{self.path}"
        )
        self.key_env = key_env
        self.timeout = timeout
        self.temperature = temperature
        self.top_p = top_p
        self.model = model
        if self._key() and self.scheme == "http" and not _loopback(self.host):
            log.warning(
                "%s: sending the API key from $%s over plain http to %s; use https",
                self.base_url,
                key_env,
                self.host,
            )
        if self.model is None:
            self.model = self._probe_model()
        self.name = self._name()

    def _name(self) -> str:
        shown = (self.model or "?").rsplit("/", 1)[-1]  # llama.cpp names a model by its file path
        return f"openai:{shown}@{_netloc(self.host, self.port)}"

    # -- construction from a --text spec -------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str) -> OpenAIText:
        """``http(s)://HOST[:PORT]/PATH[?model=..&key_env=..&timeout=..&temperature=..&top_p=..]`` or
        ``openai:MODEL[?...]``."""
        if spec.startswith("openai:"):
            rest = spec.removeprefix("openai:")
            model, _, query = rest.partition("?")
            if not model:
                raise BackendError("openai: needs a model name, for example openai:gpt-4o-mini")
            base = os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE
            params = _params(query, spec)
            params.setdefault("model", model)
            params.setdefault("key_env", "OPENAI_API_KEY")
        else:
            parts = urlsplit(spec)
            if parts.fragment or parts.username or parts.password:
                raise BackendError(
                    f"text server {_redact(spec)!r}: no user, password or #fragment in the URL; put the "
                    "key in an environment variable (key_env=NAME)"
                )
            base = f"{parts.scheme}://{parts.netloc}{parts.path}"
            params = _params(parts.query, spec)
        kwargs: dict[str, Any] = {}
        if "model" in params:
            kwargs["model"] = params["model"]
        if "key_env" in params:
            kwargs["key_env"] = params["key_env"]
        for name, low, high in (("timeout", 0.1, 600.0), ("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
            if name in params:
                kwargs[name] = _number(params[name], name, low, high, spec)
        return cls(base, **kwargs)

    # -- the text interface ---------------------------------------------------------------------

    def generate_batch(self, requests: Sequence[StageRequest]) -> list[str]:
        return [self.generate(r) for r in requests]

    def generate(self, request: StageRequest) -> str:
        limit = self.timeout if request.timeout is None else min(self.timeout, request.timeout)
        if limit <= 0:
            raise BackendError(f"{self.name}: no time left for the {request.stage} stage")
        if self.model is None:  # the server was not reachable when the backend was opened
            self.model = self._probe_model()
            self.name = self._name()
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": request.seed,
            "stream": False,
        }
        if self.model:
            body["model"] = self.model
        t0 = time.monotonic()
        status, data = self._call("POST", "/chat/completions", body, limit)
        answer = _parse_completion(status, data, self.name)
        log.debug("%s: %s in %.2f s", self.name, request.stage, time.monotonic() - t0)
        return answer

    # -- HTTP -----------------------------------------------------------------------------------

    def _key(self) -> str | None:
        return os.environ.get(self.key_env) or None

    def _probe_model(self) -> str | None:
        """The first model the server lists (llama.cpp's server lists the one it serves)."""
        try:
            status, data = self._call("GET", "/models", None, min(self.timeout, PROBE_TIMEOUT))
            if status != 200:
                raise BackendError(f"HTTP {status}")
            listed = json.loads(data).get("data")
            model = listed[0]["id"] if isinstance(listed, list) and listed else None
            if not isinstance(model, str) or not model:
                raise BackendError("no model listed")
        except (BackendError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "%s: could not ask the server which model it serves (%s); name one with ?model=NAME. "
                "Requests go without a model name until then.",
                self.base_url,
                exc,
            )
            return None
        log.info("text server %s serves %s", self.base_url, model)
        return model

    def _call(self, method: str, path: str, body: dict[str, Any] | None, limit: float) -> tuple[int, bytes]:
        """One request that takes at most ``limit`` seconds in all; (status, body bytes).

        Socket time-outs bound each read; a watchdog shuts the socket at the deadline, so a server
        that trickles its headers or body a byte at a time cannot stretch the call either.
        """
        deadline = time.monotonic() + limit
        headers = {"Accept": "application/json", "User-Agent": "metabgm-edge"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=limit, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=limit)
        where = f"{self.base_url}{path}"
        expired = threading.Event()

        def abort() -> None:
            expired.set()
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(limit, abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, self.path + path, body=payload, headers=headers)
            _left(conn, deadline)
            response = conn.getresponse()
            chunks, size = [], 0
            while True:
                _left(conn, deadline)
                chunk = response.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise BackendError(f"{where}: answer larger than {MAX_RESPONSE_BYTES >> 20} MiB, refused")
                chunks.append(chunk)
            if expired.is_set():
                raise TimeoutError
            return response.status, b"".join(chunks)
        except TimeoutError:
            raise BackendError(f"{where}: no answer within {limit:.2f} s") from None
        except ConnectionRefusedError:
            raise BackendError(f"{where}: connection refused (is the server running?)") from None
        except (http.client.HTTPException, OSError) as exc:  # reset, closed mid-answer, DNS, TLS
            if expired.is_set():
                raise BackendError(f"{where}: no answer within {limit:.2f} s") from None
            detail = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            )
            raise BackendError(f"{where}: {detail}") from None
        finally:
            watchdog.cancel()
            conn.close()


def _left(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Give the socket only what is left of the call's time."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _parse_completion(status: int, data: bytes, name: str) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if status != 200:
        message = ""
        if isinstance(doc, dict):
            err = doc.get("error")
            message = err.get("message", "") if isinstance(err, dict) else str(err or doc.get("detail", ""))
        else:
            message = data[:200].decode("utf-8", "replace")
        raise BackendError(f"{name}: HTTP {status}: {_one_line(message) or 'no message'}")
    if not isinstance(doc, dict):
        raise BackendError(f"{name}: the answer is not JSON")
    choices = doc.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise BackendError(f"{name}: the answer has no choices[0].message.content string")
    if isinstance(first, dict) and first.get("finish_reason") == "length":
        log.debug("%s: the answer reached max_tokens", name)
    return content.strip()


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _params(query: str, spec: str) -> dict[str, str]:
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise BackendError(f"text server {_redact(spec)!r}: cannot read the query {query!r}") from None
    if "key" in raw or "api_key" in raw:
        raise BackendError(
            "do not put the API key in --text (it would show in logs and process lists): export it, "
            "for example METABGM_EDGE_API_KEY=..., or name the variable with key_env=NAME"
        )
    unknown = sorted(set(raw) - _PARAMS)
    if unknown:
        raise BackendError(
            f"text server {_redact(spec)!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_PARAMS))}"
        )
    return {k: v[-1] for k, v in raw.items()}


def _number(value: str, name: str, low: float, high: float, spec: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise BackendError(f"text server {_redact(spec)!r}: {name} must be a number from {low:g} to {high:g}")
    return number


def _redact(spec: str) -> str:
    parts = urlsplit(spec)
    if parts.password:
        return spec.replace(parts.password, "***")
    return spec


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return all(info[4][0].startswith("127.") or info[4][0] == "::1" for info in infos)
