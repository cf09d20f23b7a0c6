"""``metabgm-edge eval``: generate a description for every test scene with each backend and score it.

Items are the ``description`` rows of one split of a pairs file: the scene (a live-state message)
goes through the same stages ``play`` runs (:func:`metabgm_edge.stages.describe`, two-stage or
direct, the 20-word cut included), and the description is scored against the row's references
(:mod:`.metrics`) and for music-ness (:mod:`metabgm_edge.text.musicness`). Item *i* always gets
seed ``seed + i``, so a run is repeatable. A backend that raises on an item scores an empty
description there (0 on every metric), and the failures are counted: eval does not fall back to
the composer, it measures the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from metabgm_edge.dataset.pairs import Pair
from metabgm_edge.evaluation.metrics import score
from metabgm_edge.stages import Mode, describe
from metabgm_edge.state import SceneState
from metabgm_edge.text import TextBackend
from metabgm_edge.text.musicness import musicness

log = logging.getLogger(__name__)

MODE_LABEL: Final = {"two-stage": "Two-Stage", "direct": "Direct"}

PAPER_TABLE_I: Final = (
    ("LLaMA-2-7B-Chat + Direct Generation", 44.06, 18.26, 6.85, 3.22, 17.41, 18.87),
    ("LLaMA-2-7B-Chat + Two-Stage Generation", 51.66, 23.89, 8.78, 3.79, 20.86, 20.07),
    ("GPT-3.5-Turbo + Direct Generation", 50.07, 15.62, 4.08, 2.01, 22.38, 20.1),
    ("GPT-3.5-Turbo + Two-Stage Generation", 58.84, 21.63, 9.89, 4.86, 17.52, 21.21),
)
PAPER_TABLE_II: Final = (
    ("LLaMA-2-7B", 31.05, 12.46, 4.46, 2.09, 17.97, 16.57),
    ("LLaMA-2-13B", 32.77, 16.7, 7.96, 3.11, 20.77, 19.05),
    ("ChatGLM-3-6B", 41.94, 16.12, 6.49, 3.44, 18.33, 17.44),
    *PAPER_TABLE_I,
    ("MetaBGM", 54.61, 24.13, 10.08, 4.9, 15.79, 19.36),
)
PAPER_NOTE: Final = (
    "the paper's rows (Liu, Wang et al.), on its own test set: 304 LP-MusicCaps descriptions of 13 "
    "Minecraft tracks; not the same references, so not directly comparable"
)


@dataclass(frozen=True)
class Item:
    id: str
    state: SceneState
    references: list[str]


@dataclass
class Prediction:
    id: str
    description: str
    narrative: str | None
    cut: bool
    seconds: float
    error: str | None = None


@dataclass
class BackendResult:
    backend: str
    mode: str
    n: int
    errors: int
    scores: dict[str, float]
    musicness: float
    """Share (×100) of descriptions naming a tempo, an instrument and a mood and ending as a sentence."""
    musicness_parts: dict[str, float]
    seconds_median: float
    seconds_max: float
    """Seconds per item for the stages the mode runs (both stages for two-stage)."""
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend} + {MODE_LABEL.get(self.mode, self.mode)}"


def load_items(rows: Sequence[Pair], split: str) -> list[Item]:
    """The description rows of ``split``, in file order, one item per row."""
    from metabgm_edge.state import state_from_dict

    items = []
    for row in rows:
        if row.task != "description" or row.split != split:
            continue
        refs = [r for r in row.references if r.strip()] or [row.output]
        items.append(Item(row.id, state_from_dict({k: v for k, v in row.scene.items() if k != "v"}), refs))
    return items


def teachers_of(rows: Sequence[Pair], split: str) -> set[str]:
    """Backends that wrote references of this split (scored against themselves, they are not tested)."""
    return {
        r.provenance.teacher
        for r in rows
        if r.task == "description" and r.split == split and r.provenance.kind == "scenes"
    }


def run_backend(
    backend: TextBackend,
    items: Sequence[Item],
    mode: Mode,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BackendResult:
    predictions: list[Prediction] = []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        try:
            result = describe(item.state, backend, mode=mode, seed=seed + i)
        except Exception as exc:  # measured, not hidden: an empty description scores 0
            log.warning("%s failed on %s (%s: %s)", backend.name, item.id, type(exc).__name__, exc)
            predictions.append(Prediction(item.id, "", None, False, time.perf_counter() - t0, str(exc)))
        else:
            spent = sum(v for k, v in result.timings.items() if k != "characterize")
            predictions.append(Prediction(item.id, result.description, result.narrative, result.cut, spent))
        if progress:
            progress(i + 1, len(items))
    hyps = [p.description for p in predictions]
    scores = score(hyps, [item.references for item in items]).as_dict()
    checks = [musicness(p.description, cut=p.cut) for p in predictions]
    n = max(len(checks), 1)
    parts = {
        "tempo": 100.0 * sum(c.tempo for c in checks) / n,
        "instrument": 100.0 * sum(c.instrument for c in checks) / n,
        "mood": 100.0 * sum(c.mood for c in checks) / n,
        "sentence": 100.0 * sum(c.sentence for c in checks) / n,
    }
    seconds = [p.seconds for p in predictions] or [0.0]
    return BackendResult(
        backend=backend.name,
        mode=mode,
        n=len(items),
        errors=sum(p.error is not None for p in predictions),
        scores=scores,
        musicness=100.0 * sum(c.ok for c in checks) / n,
        musicness_parts=parts,
        seconds_median=statistics.median(seconds),
        seconds_max=max(seconds),
        predictions=predictions,
    )


COLUMNS: Final = ("B-1", "B-2", "B-3", "B-4", "METEOR", "R-L", "music-ness", "s/seg p50", "max", "errors")
_WIDTHS: Final = tuple(max(8, len(c) + 2) for c in COLUMNS)


def format_table(results: Sequence[BackendResult], *, ablation: bool, header: str) -> str:
    width = max([len(r.label) for r in results] + [len(p[0]) for p in PAPER_TABLE_II]) + 2
    lines = [
        header,
        "",
        "Model".ljust(width) + "".join(c.rjust(w) for c, w in zip(COLUMNS, _WIDTHS, strict=True)),
    ]
    for r in results:
        s = r.scores
        cells = [s["bleu1"], s["bleu2"], s["bleu3"], s["bleu4"], s["meteor"], s["rouge_l"], r.musicness,
                 r.seconds_median, r.seconds_max]  # fmt: skip
        text = "".join(f"{v:{w}.2f}" for v, w in zip(cells, _WIDTHS, strict=False))
        lines.append(r.label.ljust(width) + text + f"{r.errors:{_WIDTHS[-1]}d}")
    lines += ["", f"For reference, {PAPER_NOTE}:"]
    for name, *values in PAPER_TABLE_I if ablation else PAPER_TABLE_II:
        lines.append(
            name.ljust(width) + "".join(f"{v:{w}.2f}" for v, w in zip(values, _WIDTHS, strict=False))
        )
    return "\n".join(lines)


def as_json(results: Sequence[BackendResult], **meta: Any) -> dict[str, Any]:
    return {
        **meta,
        "results": [
            {
                "backend": r.backend,
                "mode": r.mode,
                "label": r.label,
                "n": r.n,
                "errors": r.errors,
                **r.scores,
                "musicness": r.musicness,
                "musicness_parts": r.musicness_parts,
                "seconds_median": r.seconds_median,
                "seconds_max": r.seconds_max,
            }
            for r in results
        ],
        "paper": {
            "note": PAPER_NOTE,
            "columns": ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l"],
            "table_i": [[name, *values] for name, *values in PAPER_TABLE_I],
            "table_ii": [[name, *values] for name, *values in PAPER_TABLE_II],
        },
    }


def predictions_rows(result: BackendResult) -> list[dict[str, Any]]:
    return [
        {"backend": result.backend, "mode": result.mode, **dataclasses.asdict(p)} for p in result.predictions
    ]
