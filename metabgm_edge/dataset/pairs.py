"""The row format of the paired datasets, and the split into train / validation / test.

One JSON line per pair, Alpaca-style (``instruction``, ``input``, ``output``) plus what a user
needs to trust and reuse it:

- ``task``: ``narrative`` (Scene Data -> Narrative Text, the paper's Fig. 2a) or ``description``
  (Narrative Text -> Music Description Text, Fig. 2b).
- ``instruction`` is the prompt the runtime sends, with ``{input}`` where ``input`` goes; the
  user message of a chat model is ``instruction.replace("{input}", input)`` (:meth:`Pair.prompt`).
- ``scene`` is the live-state message of the scene (``describe``/``eval`` run the stages on it),
  ``scene_id`` its grid cell; ``combat`` whether Algorithm 1 read it as combat.
- ``references``: for description rows, what ``eval`` scores a generated description against: the
  musician's caption, one reference per sentence, for reverse pairs; the teacher's description
  for synthesized scenes.
- ``provenance``: kind (``scenes`` or ``reverse``), teacher, seed, source caption id and text,
  licence note.

Splits are decided by a hash of the scene's grid cell (and of the caption id for reverse pairs,
whose scene is drawn from the same split as its caption), so no scene and no caption is in two
splits, in one file or across the files made by ``dataset scenes`` and ``dataset reverse``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

from metabgm_edge.errors import MetabgmError

Split = Literal["train", "validation", "test"]
SPLITS: Final = ("train", "validation", "test")
Task = Literal["narrative", "description"]
SPLIT_PERCENT: Final = (80, 10, 10)
"""train / validation / test, by the first bytes of a SHA-256 of the scene cell or caption id."""
INPUT_SLOT: Final = "{input}"
MUSICCAPS_LICENCE: Final = (
    "Reference and description derived from a MusicCaps caption (Agostinelli et al., 'MusicLM: "
    "Generating Music From Text', 2023, Google), CC BY-SA 4.0; this row is shared under the same licence."
)
SCENES_LICENCE: Final = "Synthesized by metabgm-edge (Apache-2.0); text written by the named teacher."


class DatasetError(MetabgmError, ValueError):
    """A pairs file or captions file that cannot be read; the message names the file and line."""


class Provenance(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    kind: Literal["scenes", "reverse"]
    teacher: str
    """The text backend that wrote the generated text (``composer``, a bundle, a server)."""
    seed: int
    """The seed the teacher was given for this row."""
    caption_id: str | None = None
    """MusicCaps ``ytid`` of the source caption (reverse pairs)."""
    caption: str | None = None
    """The source caption, verbatim (reverse pairs)."""
    archetype: str | None = None
    """Which kind of scene the caption was matched to (reverse pairs, see dataset/reverse.py)."""
    licence: str = SCENES_LICENCE


class Pair(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    id: str
    split: Split
    task: Task
    instruction: str
    input: str
    output: str
    scene_id: str
    scene: dict[str, Any]
    combat: bool
    provenance: Provenance
    references: list[str] = msgspec.field(default_factory=list)

    def prompt(self) -> str:
        """The user message a chat model gets for this pair (what the runtime sends)."""
        if INPUT_SLOT in self.instruction:
            return self.instruction.replace(INPUT_SLOT, self.input)
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def split_of(key: str) -> Split:
    """The split of a scene cell or caption id: stable across runs, machines and files."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    train, validation, _ = SPLIT_PERCENT
    return "train" if bucket < train else "validation" if bucket < train + validation else "test"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Pair)


def write_pairs(path: str | Path, rows: Iterable[Pair]) -> int:
    """Write rows as JSONL (atomically: a temporary file renamed at the end); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with tmp.open("wb") as fh:
            for row in rows:
                fh.write(_encoder.encode(row) + b"\n")
                n += 1
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {exc.strerror or exc}") from None
    return n


def read_pairs(path: str | Path) -> list[Pair]:
    """Every row of a pairs file; a bad line stops with its line number."""
    return list(iter_pairs(path))


def iter_pairs(path: str | Path) -> Iterator[Pair]:
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise DatasetError(
                    f"{path}:{number}: not a pairs row ({exc}); rows are written by 'metabgm-edge dataset'"
                ) from None


def summary(rows: list[Pair]) -> str:
    """ "866 rows (433 scenes): train 692, validation 86, test 88" """
    by_split = Counter(r.split for r in rows)
    scenes = len({r.scene_id for r in rows})
    parts = ", ".join(f"{s} {by_split.get(s, 0)}" for s in SPLITS)
    return f"{len(rows)} rows ({scenes} scenes): {parts}"
