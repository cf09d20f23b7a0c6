"""`metabgm-edge finetune`: LoRA on paired data; resume; the adapter exports and runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llm_fixtures
import pytest
from llm_fixtures import SMOLLM2, make_tiny_llama, require_export_extra

from metabgm_edge.dataset.pairs import Pair, Provenance, read_pairs, write_pairs

ROOT = Path(__file__).resolve().parent.parent
# The session-scoped SmolLM2 export, shared with test_llm_export (built once per run).
smollm2 = llm_fixtures.smollm2
smollm2_bundle = llm_fixtures.smollm2_bundle
PAIRS = ROOT / "data" / "pairs"


def tiny_pairs(path: Path) -> Path:
    """Short rows the tiny test model can hold (its context is 256 tokens)."""
    texts = [
        ("calm forest", "slow piano"),
        ("night storm", "dark cello"),
        ("zombie fight", "fast drums"),
        ("sunny plains", "happy flute"),
        ("deep cave", "eerie pad"),
        ("snow field", "soft bells"),
    ]
    rows = []
    for i, (scene, music) in enumerate(texts * 2):
        split = "validation" if i >= 10 else "train"
        rows.append(
            Pair(
                id=f"t{i}",
                split=split,
                task="description",
                instruction="Music for: {input}",
                input=scene,
                output=music,
                scene_id=f"s{i}",
                scene={"v": 1},
                combat=False,
                provenance=Provenance(kind="scenes", teacher="test", seed=i),
            )
        )
    write_pairs(path, rows)
    return path


def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path) -> None:
    require_export_extra()
    from safetensors.torch import load_file

    from metabgm_edge.train.finetune import FinetuneConfig, finetune

    model = make_tiny_llama(tmp_path / "tiny", template="chatml")
    data = tiny_pairs(tmp_path / "pairs.jsonl")

    def config(out: str) -> FinetuneConfig:
        return FinetuneConfig(
            model=str(model),
            data=[str(data)],
            out=str(tmp_path / out),
            r=4,
            alpha=8,
            lr=5e-3,
            max_steps=4,
            batch_size=2,
            micro_batch=1,
            save_every=1,
            eval_rows=2,
            seed=3,
            threads=1,
        )

    whole = finetune(config("whole"), progress=lambda _: None)
    assert whole.steps == 4
    assert whole.validation_loss_after < whole.validation_loss_before

    def stop_at_step_3(line: str) -> None:
        if "step 3/4" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(config("parts"), progress=stop_at_step_3)
    assert (tmp_path / "parts" / "checkpoints" / "step-000003").is_dir()
    resumed = finetune(config("parts"), resume=True, progress=lambda _: None)
    assert resumed.steps == 4
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert (a[key] == b[key]).all(), key
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "whole" / "loss.jsonl").read_text().splitlines()
    ]
    parts = [
        json.loads(line)["loss"] for line in (tmp_path / "parts" / "loss.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 4 and parts == losses[:3] + losses[3:]
    info = json.loads((tmp_path / "whole" / "training.json").read_text())
    assert info["config"]["seed"] == 3 and info["data"][0]["sha256"]
    # Not empty and not a resume: refused with a clear message.
    from metabgm_edge.train.finetune import FinetuneError

    with pytest.raises(FinetuneError, match="exists and is not empty"):
        finetune(config("whole"), progress=lambda _: None)


@pytest.mark.slow
@pytest.mark.export
def test_smollm2_few_steps_lower_the_loss_change_the_output_and_export(
    tmp_path: Path, smollm2_bundle
) -> None:
    """The CLI on the shipped data: a few steps lower the validation loss; the adapter merges in
    `export llm --lora`, and the bundle runs without torch and writes something else than the base."""
    require_export_extra()
    small = tmp_path / "pairs.jsonl"
    rows = [r for r in read_pairs(PAIRS / "reverse.jsonl") if r.split in ("train", "validation")]
    write_pairs(
        small, [r for r in rows if r.split == "train"][:16] + [r for r in rows if r.split == "validation"][:6]
    )
    adapter = tmp_path / "adapter"
    cli = [sys.executable, "-m", "metabgm_edge"]
    done = subprocess.run(
        [
            *cli,
            "finetune",
            "--model",
            SMOLLM2,
            "--data",
            str(small),
            "--out",
            str(adapter),
            "--tasks",
            "description",
            "--layers",
            "22-29",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--micro-batch",
            "2",
            "--lr",
            "3e-3",
            "--eval-rows",
            "6",
            "--seed",
            "1",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads((adapter / "training.json").read_text())
    assert info["validation_loss_after"] < info["validation_loss_before"]
    assert "--max-steps 3" in info["command"] and info["base_model"]["sha256"]
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert "ETA" in done.stderr and "validation loss" in done.stdout

    bundle = tmp_path / "tuned-int8"
    done = subprocess.run(
        [
            *cli,
            "export",
            "llm",
            "--model",
            SMOLLM2,
            "--lora",
            str(adapter),
            "--quant",
            "int8",
            "--out",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["adapter"] == str(adapter)

    base = smollm2_bundle("int8")
    probe = (
        "import json, sys\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None; sys.modules['peft'] = None\n"
        "from metabgm_edge.llm.runtime import GenerationConfig\n"
        "from metabgm_edge.text import ChatMessage\n"
        "from metabgm_edge.text.llm import LLMText\n"
        "from metabgm_edge.stages import render_prompt\n"
        "prompt = render_prompt('description', narrative='Rain falls on a dark spruce forest at night.')\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    llm = LLMText.load(path).llm\n"
        "    config = GenerationConfig(max_new_tokens=30, do_sample=False)\n"
        "    out[path] = llm.chat([ChatMessage('user', prompt)], config).text\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(base), str(bundle)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    texts = json.loads(done.stdout)
    assert texts[str(bundle)].strip() and texts[str(bundle)] != texts[str(base)]


def test_finetune_cli_refuses_bad_options(tmp_path: Path) -> None:
    data = tiny_pairs(tmp_path / "pairs.jsonl")
    cli = [sys.executable, "-m", "metabgm_edge", "finetune", "--model", "nowhere", "--data", str(data)]
    done = subprocess.run(
        [*cli, "--out", str(tmp_path / "a"), "--tasks", "poetry"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "use narrative, description or both" in done.stderr
    done = subprocess.run(
        [*cli, "--out", str(tmp_path / "a"), "--layers", "x-y"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "FROM-TO" in done.stderr


def test_the_shipped_adapter_and_its_recipe() -> None:
    """What play --text auto gets after `export --recipe export/smollm2-135m-metabgm.toml`."""
    from metabgm_edge.export.recipe import load_recipe

    tuned = load_recipe(ROOT / "export" / "smollm2-135m-metabgm.toml")
    base = load_recipe(ROOT / "export" / "smollm2-135m-instruct.toml")
    assert tuned.lora == "adapters/smollm2-135m-metabgm" and tuned.model == base.model == SMOLLM2
    assert tuned.generation == base.generation  # the two bundles differ by the adapter alone
    adapter = ROOT / tuned.lora
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert (adapter / "adapter_model.safetensors").stat().st_size < 8 << 20
    info = json.loads((adapter / "training.json").read_text())
    assert info["config"]["seed"] == 7 and info["steps"] == info["config"]["max_steps"]
    assert info["validation_loss_after"] < info["validation_loss_before"]
    assert not (adapter / "checkpoints").exists()
