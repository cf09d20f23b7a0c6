"""``metabgm-edge eval``: BLEU-1..4, METEOR, ROUGE-L and music-ness on a test split (Tables I and II)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("eval")
@click.option(
    "--pairs",
    "pairs_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="A pairs file made by 'metabgm-edge dataset'.",
)
@click.option(
    "--text",
    "text_specs",
    multiple=True,
    required=True,
    help="A text backend to measure (repeat for several): composer, a bundle folder, http://HOST:PORT/v1.",
)
@click.option(
    "--mode", type=click.Choice(["two-stage", "direct"]), default="two-stage", show_default=True,
    help="two-stage: narrative, then description (the paper's method); direct: the description at once.",
)  # fmt: skip
@click.option("--ablation", is_flag=True, help="Run direct and two-stage for every backend (Table I).")
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["train", "validation", "test"]),
    help="Which split of the scene pairs to score.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N items of the split.")
@click.option("--seed", default=0, show_default=True, help="Item i gets seed SEED + i.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="Also write every description (JSONL).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the result as JSON to this file.")
def eval_command(
    pairs_path: str,
    text_specs: tuple[str, ...],
    mode: str,
    ablation: bool,
    split: str,
    limit: int | None,
    seed: int,
    predictions: str | None,
    as_json: bool,
    out: str | None,
) -> None:
    """Score music descriptions against a pairs file's references, several backends as rows.

    Each backend runs the stages on every scene of the split (the 20-word cut included); the
    table is laid out like the paper's, with its own rows printed below for reference.
    """
    from metabgm_edge.dataset.pairs import read_pairs
    from metabgm_edge.evaluation.metrics import require_wordnet
    from metabgm_edge.evaluation.run import as_json as result_json
    from metabgm_edge.evaluation.run import (
        format_table,
        load_items,
        predictions_rows,
        run_backend,
        teachers_of,
    )
    from metabgm_edge.text import open_text_backend

    require_wordnet()
    rows = read_pairs(pairs_path)
    items = load_items(rows, split)
    if limit:
        items = items[:limit]
    if not items:
        raise click.ClickException(f"{pairs_path} has no description rows in the {split} split")
    modes = ["direct", "two-stage"] if ablation else [mode]
    teachers = teachers_of(rows, split)
    results = []
    for spec in text_specs:
        backend = open_text_backend(spec)
        if backend.name in teachers:
            click.echo(
                f"note: {backend.name} wrote the references of this split; its scores measure agreement "
                "with itself, not quality",
                err=True,
            )
        for m in modes:
            bar = click.progressbar(
                length=len(items), label=f"{backend.name} {m}", file=click.get_text_stream("stderr")
            )
            with bar:
                result = run_backend(backend, items, m, seed=seed, progress=lambda _d, _t, b=bar: b.update(1))
            results.append(result)
        del backend
    if predictions:
        with Path(predictions).open("w", encoding="utf-8") as fh:
            for result in results:
                for line in predictions_rows(result):
                    fh.write(json.dumps(line) + "\n")
    refs = sum(len(i.references) for i in items) / len(items)
    header = (
        f"eval: {pairs_path}, {split} split, {len(items)} scenes, {refs:.1f} references each; "
        "corpus BLEU-n (cumulative, smoothing: Chen & Cherry method 1), METEOR (nltk, WordNet 3.0), "
        "ROUGE-L F1 (rouge-score, stemmed); ×100; seconds per segment for the stages the mode runs"
    )
    meta: dict[str, Any] = {"pairs": pairs_path, "split": split, "items": len(items), "seed": seed}
    encoded = json.dumps(result_json(results, **meta), indent=2)
    if out:
        Path(out).write_text(encoded + "\n", encoding="utf-8")
    click.echo(encoded if as_json else format_table(results, ablation=ablation, header=header))
