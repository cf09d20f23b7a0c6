"""Shared fixtures: paths, and a fresh logger state per test."""

from __future__ import annotations

import logging
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
