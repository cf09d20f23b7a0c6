"""Where metabgm-edge keeps a player's files: engines, profiles, logs and recordings.

Each folder is decided here and nowhere else, first rule that applies:

1. ``--data-dir DIR`` (the global flag): ``DIR/engines``, ``DIR/profiles``, ``DIR/logs``, ``DIR/recordings``;
2. the folder's own environment variable: ``METABGM_EDGE_ENGINES``, ``METABGM_EDGE_PROFILES``,
   ``METABGM_EDGE_LOGS``, ``METABGM_EDGE_RECORDINGS``;
3. ``METABGM_EDGE_DATA_DIR``: the same four folders under it;
4. engines only, and only when not running as the packaged build: ``./engines`` when it is a folder
   (a developer's checkout, where ``export --out engines/NAME`` writes);
5. the platform's folders (platformdirs conventions): engines and profiles in the user data folder
   (``~/.local/share/metabgm-edge`` on Linux, ``%LOCALAPPDATA%\\metabgm-edge`` on Windows,
   ``~/Library/Application Support/metabgm-edge`` on macOS), logs in the user log folder, recordings
   in ``metabgm-edge`` under the user's Music folder.

Nothing here creates a folder: :func:`ensure` does, when something is about to be written, and a
folder that cannot be created is one clear error naming it and the variable that moves it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Final, Literal

import msgspec

from metabgm_edge.errors import MetabgmError

APP: Final = "metabgm-edge"
Kind = Literal["engines", "profiles", "logs", "recordings"]
KINDS: Final[tuple[Kind, ...]] = ("engines", "profiles", "logs", "recordings")
DATA_ENV: Final = "METABGM_EDGE_DATA_DIR"
ENV: Final[dict[Kind, str]] = {kind: f"METABGM_EDGE_{kind.upper()}" for kind in KINDS}

_data_dir_flag: Path | None = None


class Folder(msgspec.Struct, frozen=True):
    kind: str
    path: str
    why: str
    """Which rule chose it: ``--data-dir``, an environment variable, ``./engines`` or ``platform``."""


def frozen() -> bool:
    """Whether this is the packaged build (a frozen executable), not a Python install."""
    return bool(getattr(sys, "frozen", False))


def set_data_dir(path: str | Path | None) -> None:
    """The global ``--data-dir`` flag (None: not given)."""
    global _data_dir_flag
    _data_dir_flag = Path(path).expanduser() if path else None


def data_root() -> Path:
    """The data folder itself (--data-dir, $METABGM_EDGE_DATA_DIR, or the platform's user data folder):
    where things with no folder of their own go (``cuda/`` for NVIDIA libraries, ``minecraft/``)."""
    if _data_dir_flag is not None:
        return _data_dir_flag
    base = os.environ.get(DATA_ENV)
    if base:
        return Path(base).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def _platform_dir(kind: Kind) -> Path:
    import platformdirs

    if kind == "logs":
        return Path(platformdirs.user_log_dir(APP, appauthor=False))
    if kind == "recordings":
        return Path(platformdirs.user_music_dir()) / APP
    return Path(platformdirs.user_data_dir(APP, appauthor=False)) / kind


def locate(kind: Kind) -> Folder:
    """Where ``kind`` lives here, and why (see the module's docstring for the order)."""
    if _data_dir_flag is not None:
        return Folder(kind, str(_data_dir_flag / kind), "--data-dir")
    own = os.environ.get(ENV[kind])
    if own:
        return Folder(kind, str(Path(own).expanduser()), f"${ENV[kind]}")
    base = os.environ.get(DATA_ENV)
    if base:
        return Folder(kind, str(Path(base).expanduser() / kind), f"${DATA_ENV}")
    if kind == "engines" and not frozen() and Path("engines").is_dir():
        return Folder(kind, "engines", "./engines (a checkout)")
    return Folder(kind, str(_platform_dir(kind)), "platform")


def folder(kind: Kind) -> Path:
    return Path(locate(kind).path)


def engines_dir() -> Path:
    return folder("engines")


def ensure(kind: Kind) -> Path:
    """The folder for ``kind``, created if needed; one clear error when it cannot be."""
    where = locate(kind)
    path = Path(where.path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MetabgmError(
            f"cannot create the {kind} folder {path} ({where.why}): {exc.strerror or exc}; "
            f"set {ENV[kind]} or --data-dir to a folder you can write"
        ) from None
    return path


def default_file(kind: Kind, stem: str, suffix: str) -> Path:
    """``<kind folder>/<stem>-YYYYmmdd-HHMMSS<suffix>``: a new file's default name (recordings, logs)."""
    return ensure(kind) / time.strftime(f"{stem}-%Y%m%d-%H%M%S{suffix}")


def find_profile(spec: str | Path) -> Path:
    """A listener profile: ``spec`` as a path when it exists; else, for a bare name (``calm`` or
    ``calm.toml``), that file in the profiles folder; else ``spec`` unchanged (its reader says why)."""
    path = Path(spec).expanduser()
    if path.exists() or len(path.parts) != 1:
        return path
    profiles = folder("profiles")
    for candidate in (path.name, f"{path.name}.toml", f"{path.name}.json"):
        if (profiles / candidate).is_file():
            return profiles / candidate
    return path


def all_folders() -> list[Folder]:
    return [locate(kind) for kind in KINDS]
