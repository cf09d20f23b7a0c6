"""`metabgm-edge eval`: the table of the paper's Tables I and II, on a pairs file's test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llama_server import free_port

from metabgm_edge.dataset.pairs import read_pairs, write_pairs
from metabgm_edge.evaluation.metrics import EvalError, require_wordnet, score
from metabgm_edge.evaluation.run import load_items, run_backend
from metabgm_edge.text.composer import Composer

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "data" / "pairs"


@pytest.fixture(autouse=True)
def _wordnet() -> None:
    try:
        require_wordnet()
    except EvalError as exc:
        pytest.skip(f"no WordNet here: {exc}")


def small_test_split(path: Path, n: int = 6) -> Path:
    rows = [r for r in read_pairs(PAIRS / "reverse.jsonl") if r.split == "test"][:n]
    write_pairs(path, rows)
    return path


def test_eval_scores_what_the_backend_wrote_against_the_references() -> None:
    rows = [r for r in read_pairs(PAIRS / "reverse.jsonl") if r.split == "test"][:8]
    items = load_items(rows, "test")
    assert [i.references for i in items] == [r.references for r in rows]
    result = run_backend(Composer(), items, "two-stage", seed=4)
    hyps = [p.description for p in result.predictions]
    assert result.scores == score(hyps, [i.references for i in items]).as_dict()
    assert result.musicness == 100.0 and result.errors == 0 and result.n == 8
    assert all(p.narrative for p in result.predictions)
    again = run_backend(Composer(), items, "two-stage", seed=4)
    assert [p.description for p in again.predictions] == hyps  # item i always gets seed + i
    direct = run_backend(Composer(), items, "direct", seed=4)
    assert all(p.narrative is None for p in direct.predictions)
    assert [p.description for p in direct.predictions] != hyps


def test_eval_cli_ablation_json_and_a_dead_backend(tmp_path: Path) -> None:
    pairs = small_test_split(tmp_path / "pairs.jsonl")
    dead = f"http://127.0.0.1:{free_port()}/v1?model=m"
    preds = tmp_path / "preds.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metabgm_edge",
            "eval",
            "--pairs",
            str(pairs),
            "--text",
            "composer",
            "--text",
            dead,
            "--ablation",
            "--json",
            "--predictions",
            str(preds),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    labels = [r["label"] for r in out["results"]]
    assert labels == [
        "composer + Direct",
        "composer + Two-Stage",
        f"openai:m@127.0.0.1:{dead.split(':')[2].split('/')[0]} + Direct",
        f"openai:m@127.0.0.1:{dead.split(':')[2].split('/')[0]} + Two-Stage",
    ]
    composer, server = out["results"][1], out["results"][3]
    assert composer["n"] == 6 and composer["errors"] == 0 and composer["musicness"] == 100.0
    assert 0 < composer["bleu1"] <= 100 and 0 < composer["rouge_l"] <= 100 and composer["meteor"] > 0
    # A backend that fails is measured as failing: no composer fallback inside eval.
    assert server["errors"] == 6 and server["bleu1"] == 0 and server["musicness"] == 0
    assert out["paper"]["table_i"][1][0] == "LLaMA-2-7B-Chat + Two-Stage Generation"
    assert len(preds.read_text().splitlines()) == 4 * 6

    table = subprocess.run(
        [sys.executable, "-m", "metabgm_edge", "eval", "--pairs", str(pairs), "--text", "composer"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    assert "composer + Two-Stage" in table.stdout and "MetaBGM" in table.stdout  # Table II beside it
    assert "not directly comparable" in table.stdout and "method 1" in table.stdout


def test_eval_warns_when_a_backend_wrote_the_references(tmp_path: Path) -> None:
    rows = [r for r in read_pairs(PAIRS / "scenes.jsonl") if r.split == "test"][:4]
    write_pairs(tmp_path / "p.jsonl", rows)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metabgm_edge",
            "eval",
            "--pairs",
            str(tmp_path / "p.jsonl"),
            "--text",
            "composer",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "composer wrote the references of this split" in done.stderr
    empty = tmp_path / "e.jsonl"
    write_pairs(empty, [r for r in rows if r.task == "narrative"])
    done = subprocess.run(
        [sys.executable, "-m", "metabgm_edge", "eval", "--pairs", str(empty), "--text", "composer"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "no description rows in the test split" in done.stderr
