"""``metabgm-edge dataset``: the paired data of the paper's Section III-A."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

TEACHER_HELP = (
    "Text backend that writes the pairs: composer, a bundle folder, or an OpenAI-compatible server "
    "(http://HOST:PORT/v1[?model=NAME], openai:MODEL)."
)


def _progress(label: str) -> Any:
    state: dict[str, Any] = {}

    def step(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label=label, file=click.get_text_stream("stderr"))
            state["bar"].__enter__()
        state["bar"].update(1)
        if done == total:
            state["bar"].__exit__(None, None, None)

    return step


def _musicness(rows: list[Any]) -> str:
    from metabgm_edge.text.musicness import musicness

    outputs = [r.output for r in rows if r.task == "description"]
    if not outputs:
        return "no descriptions"
    share = sum(musicness(o).ok for o in outputs) / len(outputs)
    return f"music-ness of the descriptions {100 * share:.0f} %"


@click.group()
def dataset() -> None:
    """Make paired training and evaluation data (Alpaca-style JSONL with provenance and splits).

    \b
    metabgm-edge dataset scenes --teacher composer --n 433 --seed 7 --out data/pairs/scenes.jsonl
    metabgm-edge dataset reverse --teacher composer --captions data/musiccaps/musiccaps-public-dev.csv \\
        --n 1539 --seed 7 --out data/pairs/reverse.jsonl
    """


@dataset.command()
@click.option("--teacher", required=True, help=TEACHER_HELP)
@click.option("--n", "count", required=True, type=click.IntRange(1, 100_000), help="How many scenes.")
@click.option("--seed", required=True, type=int, help="Seed of the scenario grid and of the teacher.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
def scenes(teacher: str, count: int, seed: int, out: str) -> None:
    """Synthesize N scenes from the scenario grid; the teacher writes each one's narrative and
    music description (two pairs per scene)."""
    from metabgm_edge.dataset.build import build_scenes
    from metabgm_edge.dataset.pairs import summary, write_pairs
    from metabgm_edge.text import open_text_backend

    backend = open_text_backend(teacher)
    report = build_scenes(backend, count, seed, _progress("scenes"))
    write_pairs(out, report.rows)
    failed = f"; the teacher failed on {report.failed} (left out)" if report.failed else ""
    click.echo(
        f"wrote {out}: {summary(report.rows)}; teacher {backend.name}; {_musicness(report.rows)}{failed}"
    )


@dataset.command()
@click.option("--teacher", required=True, help=TEACHER_HELP)
@click.option(
    "--captions",
    "captions_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV in the MusicCaps columns (ytid, caption, aspect_list, ...).",
)
@click.option("--n", "count", required=True, type=click.IntRange(1, 100_000), help="At most this many pairs.")
@click.option(
    "--seed", required=True, type=int, help="Seed of the caption order, the scenes and the teacher."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
def reverse(teacher: str, captions_path: str, count: int, seed: int, out: str) -> None:
    """Reverse generation: match musicians' captions to scenes; the teacher writes each scene's
    narrative, the caption condensed to 20 words is the description (one pair per caption)."""
    from metabgm_edge.dataset.build import build_reverse
    from metabgm_edge.dataset.captions import read_captions
    from metabgm_edge.dataset.pairs import summary, write_pairs
    from metabgm_edge.text import open_text_backend

    captions = read_captions(captions_path)
    backend = open_text_backend(teacher)
    report = build_reverse(backend, captions, count, seed, _progress("captions"))
    write_pairs(out, report.rows)
    kinds = Counter(r.provenance.archetype for r in report.rows)
    top = ", ".join(f"{k} {v}" for k, v in kinds.most_common())
    notes = [f"{report.skipped} of {len(captions)} captions name no tempo, mood or instrument (not used)"]
    if len(report.rows) + report.failed < count:
        notes.append(f"only {len(report.rows) + report.failed} usable captions for --n {count}")
    if report.failed:
        notes.append(f"the teacher failed on {report.failed} (left out)")
    click.echo(
        f"wrote {out}: {summary(report.rows)}; teacher {backend.name}; {_musicness(report.rows)}; "
        f"scenes: {top}; " + "; ".join(notes)
    )
