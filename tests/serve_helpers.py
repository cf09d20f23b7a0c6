"""Helpers of the serve tests: a cuttable TCP proxy, silence and pitch-class checks of a stream."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
from collections.abc import Sequence

import numpy as np

SR = 32000


class CuttingProxy:
    """Forwards loopback TCP connections to ``target``; :meth:`cut` drops every open connection
    (the client sees the network go away) while new ones are still accepted."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._server.close()


def silent_runs(
    audio: np.ndarray, *, window: float = 0.05, threshold: float = 1e-3
) -> list[tuple[float, float]]:
    """(start, length) in seconds of every run of windows whose RMS is under ``threshold``."""
    n = round(window * SR)
    frames = audio.shape[0] // n
    rms = np.sqrt((audio[: frames * n].reshape(frames, n, -1) ** 2).mean(axis=(1, 2)))
    runs, start = [], None
    for i, quiet in enumerate(rms < threshold):
        if quiet and start is None:
            start = i
        elif not quiet and start is not None:
            runs.append((start * window, (i - start) * window))
            start = None
    if start is not None:
        runs.append((start * window, (frames - start) * window))
    return runs


def rendered(audio: np.ndarray, segments: Sequence[tuple[float, bool]]) -> np.ndarray:
    """The audio rendered for the segments' own windows: each ``(start s, came with a fallback)``
    from its start to the next one's, where neither came with a fallback (the music extended
    before a late or failed segment plays in the slot of the segment before it; the last segment's
    end is unknown)."""
    parts = [
        audio[round(a * SR) : round(b * SR)]
        for (a, fell_a), (b, fell_b) in itertools.pairwise(segments)
        if not fell_a and not fell_b
    ]
    return np.concatenate(parts) if parts else audio[:0]


def chroma(audio: np.ndarray) -> np.ndarray:
    """The pitch-class energy profile (12 bins, C first) of a stereo clip, normalised."""
    mono = audio.mean(axis=1)
    n = 1 << 14
    profile = np.zeros(12)
    f = np.fft.rfftfreq(n, 1 / SR)
    sel = (f > 60) & (f < 2000)
    pcs = (np.round(12 * np.log2(f[sel] / 261.6256)) % 12).astype(int)
    for i in range(0, max(1, mono.shape[0] - n), n // 2):
        piece = mono[i : i + n]
        if piece.shape[0] < n:
            break
        spec = np.abs(np.fft.rfft(piece * np.hanning(n))) ** 2
        np.add.at(profile, pcs, spec[sel])
    return profile / max(profile.sum(), 1e-12)


MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
"""Krumhansl-Kessler key profiles, tonic first."""
PITCHES = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7,
           "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}  # fmt: skip


def described_key(description: str) -> tuple[int, str] | None:
    """(tonic pitch class, mode) of "in G minor" in a description, or None."""
    m = re.search(r"\bin ([A-G][#b]?) (major|minor)\b", description)
    return (PITCHES[m.group(1)], m.group(2)) if m else None


def key_profile(key: tuple[int, str]) -> np.ndarray:
    tonic, mode = key
    return np.roll(MAJOR if mode == "major" else MINOR, tonic)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])
