"""The composer's vocabulary: how often MusicCaps musicians use each word.

``vocabulary.json`` (next to this module, shipped in the wheel) is derived from the MusicCaps
captions by ``scripts/build_vocabulary.py``; see its ``attribution`` field (MusicCaps, Agostinelli
et al. 2023, CC BY-SA 4.0). The composer only writes instrument, descriptor, mood, tempo,
dynamics and genre words that this table holds, and weighs its choices by how often musicians use
them. The table is read once per process.

Fallback: if the table cannot be read (deleted or corrupt file), :func:`load_vocabulary` logs an
error and returns an empty table marked ``fallback=True``; the composer then uses its own word
lists with uniform weights, so the music never stops over a missing data file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

TABLE_NAME = "vocabulary.json"
CATEGORIES = ("instruments", "descriptors", "moods", "tempo", "dynamics", "genres")


@dataclass(frozen=True)
class Vocabulary:
    categories: dict[str, dict[str, int]]
    collocations: dict[str, dict[str, int]] = field(default_factory=dict)
    attribution: str = ""
    fallback: bool = False

    def count(self, category: str, term: str) -> int:
        return self.categories.get(category, {}).get(term, 0)

    def has(self, category: str, term: str) -> bool:
        """True when musicians use ``term`` (always true for the fallback table)."""
        return self.fallback or term in self.categories.get(category, {})

    def words(self) -> frozenset[str]:
        """Every single word of every term in the table."""
        return frozenset(w for terms in self.categories.values() for t in terms for w in t.split())

    def weight(self, category: str, term: str) -> float:
        """A choice factor that grows slowly with use: 1 + 0.15 ln(1 + count), so 1 to about 2."""
        return 1.0 + 0.15 * math.log1p(self.count(category, term))

    def pairing(self, instrument: str, descriptor: str) -> float:
        """Bonus for a descriptor musicians put right before this instrument: 0.5 ln(1 + clips)."""
        return 0.5 * math.log1p(self.collocations.get(instrument, {}).get(descriptor, 0))

    def pairings(self, instrument: str) -> dict[str, int]:
        """Descriptors attested right before ``instrument``, with clip counts."""
        return dict(self.collocations.get(instrument, {}))


def parse_table(data: Any) -> Vocabulary:
    """Validate the table's shape; raise ValueError saying what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
        raise ValueError("expected a JSON object with a 'categories' object")
    categories: dict[str, dict[str, int]] = {}
    for name in CATEGORIES:
        terms = data["categories"].get(name)
        if not isinstance(terms, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in terms.items()
        ):
            raise ValueError(f"category {name!r} must map terms to clip counts")
        categories[name] = dict(terms)
    colloc = data.get("collocations", {})
    if not isinstance(colloc, dict):
        raise ValueError("'collocations' must be an object")
    collocations = {
        str(inst): {str(d): int(n) for d, n in pairs.items() if isinstance(n, int)}
        for inst, pairs in colloc.items()
        if isinstance(pairs, dict)
    }
    return Vocabulary(categories, collocations, str(data.get("attribution", "")))


@functools.cache
def load_vocabulary() -> Vocabulary:
    """The shipped table, read once; the logged fallback (empty, uniform weights) if unreadable."""
    try:
        text = resources.files(__package__).joinpath(TABLE_NAME).read_text(encoding="utf-8")
        return parse_table(json.loads(text))
    except (OSError, ValueError) as exc:
        log.error(
            "vocabulary table %s unreadable (%s): composer falls back to its built-in words with "
            "uniform weights; reinstall metabgm-edge or run scripts/build_vocabulary.py",
            TABLE_NAME,
            exc,
        )
        return Vocabulary({name: {} for name in CATEGORIES}, fallback=True)
