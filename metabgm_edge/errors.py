"""Exceptions with messages that say what went wrong and what to change."""

from __future__ import annotations


class MetabgmError(Exception):
    """Base class of this package's errors."""


class MessageError(MetabgmError, ValueError):
    """A live-state message was rejected. ``reason`` is a short code used in counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceError(MetabgmError, ValueError):
    """A --source URI could not be opened."""


class BundleError(MetabgmError):
    """An exported bundle is missing, corrupt or does not match this machine. Names the file."""


class BackendError(MetabgmError):
    """A text or audio backend could not be loaded."""


NO_ONNXRUNTIME = (
    "onnxruntime is not installed: pip install 'metabgm-edge[cpu]' (or 'metabgm-edge[gpu]' on a "
    "machine with an NVIDIA GPU)"
)
"""What to say when neither onnxruntime package is there (they are extras: see pyproject.toml)."""
