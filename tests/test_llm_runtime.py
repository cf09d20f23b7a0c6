"""The LLM runtime: chat templates, sampling, provider choice and the generation loop on real
onnxruntime sessions. Bundles come from a tiny random LLaMA exported once per session."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import llm_fixtures
import msgspec
import numpy as np
import pytest

from metabgm_edge import bundle
from metabgm_edge.errors import BundleError
from metabgm_edge.llm import LLM, GenerationConfig, chat, sampling
from metabgm_edge.ort import device
from metabgm_edge.ort import session as providers
from metabgm_edge.text import ChatMessage, StageRequest, TextBackend, open_text_backend
from metabgm_edge.text.llm import LLMText

tiny_llama = llm_fixtures.tiny_llama
tiny_bundle = llm_fixtures.tiny_bundle

USER = ChatMessage("user", "Describe the rain.")


def request(text: str = "Describe the rain.", **changes: object) -> StageRequest:
    base = StageRequest(
        stage="narrative",
        messages=[ChatMessage("user", text)],
        characterized={},
        combat=False,
        max_new_tokens=12,
    )
    return msgspec.structs.replace(base, **changes)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(folder: Path, **changes: object) -> None:
    manifest = bundle.read_manifest(folder)
    bundle.write_manifest(folder, msgspec.structs.replace(manifest, **changes))


# -- chat templates -------------------------------------------------------------------------------


def test_chatml_adds_the_default_system_message() -> None:
    text = chat.render("chatml", [USER], default_system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe the rain.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own = chat.render("chatml", [ChatMessage("system", "Sys."), USER], default_system="Be brief.")
    assert own.startswith("<|im_start|>system\nSys.<|im_end|>") and "Be brief." not in own


def test_llama2_inst_format_with_system_and_history() -> None:
    messages = [
        ChatMessage("system", "You compose music."),
        ChatMessage("user", "First?"),
        ChatMessage("assistant", "Piano."),
        ChatMessage("user", "Second?"),
    ]
    assert chat.render("llama2", messages) == (
        "<s>[INST] <<SYS>>\nYou compose music.\n<</SYS>>\n\nFirst? [/INST] Piano. </s>"
        "<s>[INST] Second? [/INST]"
    )
    assert chat.render("llama2", [USER]) == "<s>[INST] Describe the rain. [/INST]"


@pytest.mark.parametrize(
    ("template", "messages", "message"),
    [
        ("llama2", [ChatMessage("assistant", "x")], "start with a user"),
        ("llama2", [USER, USER], "alternate"),
        ("llama2", [USER, ChatMessage("assistant", "x")], "last message must be the user's"),
        ("chatml", [], "at least one message"),
        ("vicuna", [USER], "unknown chat template"),
    ],
)
def test_chat_template_misuse_is_a_clear_error(template: str, messages, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chat.render(template, messages)


# -- sampling -------------------------------------------------------------------------------------


def test_repetition_penalty_matches_transformers_semantics() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = sampling.apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # the caller's row is untouched


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = np.array([0.05, 0.5, 0.3, 0.15])
    ids, kept = sampling.top_p_candidates(probs, 0.8)
    assert ids.tolist() == [1, 2]
    assert np.allclose(kept, [0.5 / 0.8, 0.3 / 0.8])
    wide = np.full(1000, 1 / 1000)
    ids, kept = sampling.top_p_candidates(wide, 0.5)
    assert ids.size == 500 and np.isclose(kept.sum(), 1.0)
    flat = np.full(200_000, 1 / 200_000)  # every token under the floor: the top-k slice must grow
    ids, kept = sampling.top_p_candidates(flat, 0.5)
    assert abs(ids.size - 100_000) <= 1 and np.isclose(kept.sum(), 1.0)  # float cumsum of equal values
    rng = np.random.default_rng(5)
    for _ in range(50):  # against a full sort
        probs = rng.dirichlet(np.full(3000, rng.choice([0.01, 0.3, 3.0])))
        top_p = float(rng.uniform(0.2, 0.95))
        order = np.argsort(probs)[::-1]
        k = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
        assert sorted(sampling.top_p_candidates(probs, top_p)[0]) == sorted(order[:k])


def test_sampling_is_seeded_and_greedy_is_argmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=500).astype(np.float32)
    none = np.array([], dtype=np.int64)

    def draw(seed: int) -> list[int]:
        gen = np.random.Generator(np.random.PCG64(seed))
        return [
            sampling.next_token(
                logits, none, do_sample=True, temperature=1.0, top_p=0.95, repetition_penalty=1.0, rng=gen
            )
            for _ in range(20)
        ]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    greedy = sampling.next_token(
        logits, none, do_sample=False, temperature=1.0, top_p=1.0, repetition_penalty=1.0, rng=rng
    )
    assert greedy == int(np.argmax(logits))


def test_ngram_blocker_forbids_a_repeated_ngram() -> None:
    blocker = sampling.NgramBlocker(3)
    for token in [5, 6, 7, 1, 5, 6]:
        blocker.add(token)
    assert blocker.banned() == [7]  # 5 6 7 was written: 7 may not follow 5 6 again
    logits = np.zeros(10, dtype=np.float32)
    logits[7] = 9.0
    token = sampling.next_token(
        logits,
        np.array([], dtype=np.int64),
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        rng=np.random.default_rng(0),
        banned=blocker.banned(),
    )
    assert token != 7
    assert sampling.NgramBlocker(0).banned() == []


# -- device probe and provider choice -------------------------------------------------------------


def test_tensorrt_version_decoding() -> None:
    assert device.decode_trt_version(100900) == "10.9.0"
    assert device.decode_trt_version(101302) == "10.13.2"
    assert device.decode_trt_version(8601) == "8.6.1"


def engine(**changes: object) -> bundle.Engine:
    base = bundle.Engine(
        graph="decoder", model_file="model_ctx.onnx", tensorrt_version="10.9.0", gpu_arch="sm_89",
        onnxruntime_version="1.32.0",
    )  # fmt: skip
    return msgspec.structs.replace(base, **changes)


def test_engine_used_only_on_exact_match(monkeypatch) -> None:
    monkeypatch.setattr(providers.ort, "__version__", "1.32.0")
    monkeypatch.setattr(device, "gpu", lambda index=0: device.Gpu(0, "RTX 4070", "sm_89"))
    monkeypatch.setattr(device, "tensorrt_version", lambda: "10.9.0")
    assert providers.engine_mismatch(engine()) is None
    reason = providers.engine_mismatch(engine(gpu_arch="sm_86", tensorrt_version="10.8.0"))
    assert reason is not None
    assert "sm_89" in reason and "sm_86" in reason and "10.8.0" in reason
    assert "onnxruntime here is 1.32.0" in (
        providers.engine_mismatch(engine(onnxruntime_version="1.31.0")) or ""
    )
    monkeypatch.setattr(device, "gpu", lambda index=0: None)
    assert providers.engine_mismatch(engine()) == "no CUDA GPU on this machine"


def test_provider_chain_follows_the_target() -> None:
    from test_bundle import make_manifest

    assert providers.chain_for(make_manifest(target="tensorrt").target) == [
        "tensorrt_rtx",
        "tensorrt",
        "cuda",
        "cpu",
    ]
    assert providers.chain_for("cuda") == ["cuda", "cpu"]
    assert providers.chain_for("cpu") == ["cpu"]
    assert providers.chain_for("tensorrt", ["cpu"]) == ["cpu"]
    with pytest.raises(ValueError, match="unknown provider"):
        providers.chain_for("cpu", ["rocm"])


def test_tensorrt_switches_are_written_as_onnxruntime_reads_them() -> None:
    # onnxruntime's Python layer refuses "1" / "0" for the TensorRT provider's on/off options.
    opts = providers.trt_options(trt_fp16_enable=True, trt_engine_cache_enable=False, device_id=0, x=None)
    assert opts == {"trt_fp16_enable": "True", "trt_engine_cache_enable": "False", "device_id": "0"}
    (name, given), *_ = providers.provider_list("tensorrt")
    assert name == "TensorrtExecutionProvider" and given["trt_fp16_enable"] == "True"


def test_threads_spin_inside_a_run_and_stop_when_it_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Waking sleeping threads for each of a decode step's ~340 kernels cost a third of the decode
    # rate; spinning between runs would burn the game's cores while Python samples.
    monkeypatch.delenv(providers.SPIN_ENV, raising=False)
    options = providers.session_options(2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    monkeypatch.setenv(providers.SPIN_ENV, "never")
    assert providers.session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv(providers.SPIN_ENV, "always")
    always = providers.session_options(2)
    assert always.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError):  # not set: the threads also spin for a while after a run
        always.get_session_config_entry("session.force_spinning_stop")


@pytest.mark.export
def test_a_bad_spin_policy_is_one_error_line_naming_the_variable(tiny_bundle: Path) -> None:
    exe = Path(sys.executable).with_name("metabgm-edge")
    env = {**os.environ, providers.SPIN_ENV: "sometimes"}
    result = subprocess.run(
        [str(exe), "describe", "-", "--text", str(tiny_bundle), "--mode", "direct"],
        input="{}", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: METABGM_EDGE_ORT_SPIN='sometimes' must be one of run, always, never"
    ]


# -- the generation loop on a real session (tiny random LLaMA) -----------------------------------


@pytest.mark.export
def test_generation_respects_max_new_tokens_and_seed(tiny_bundle: Path) -> None:
    llm = LLM.load(tiny_bundle)
    assert llm.provider == "cpu"
    a = llm.chat([USER], GenerationConfig(max_new_tokens=10, do_sample=True, seed=7, no_repeat_ngram_size=0))
    b = llm.chat([USER], GenerationConfig(max_new_tokens=10, do_sample=True, seed=7, no_repeat_ngram_size=0))
    c = llm.chat([USER], GenerationConfig(max_new_tokens=10, do_sample=True, seed=8, no_repeat_ngram_size=0))
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    assert len(a.token_ids) <= 10
    assert a.stop_reason in ("max_new_tokens", "stop_token")
    assert a.prompt_tokens == len(llm.encode(llm.render_chat([USER])))


@pytest.mark.export
def test_kv_cache_steps_equal_one_full_pass(tiny_bundle: Path) -> None:
    """Feeding tokens one by one through the cache gives the logits of feeding them at once."""
    llm = LLM.load(tiny_bundle)
    ids = llm.encode(llm.render_chat([USER]))
    whole = llm.start().forward(ids)
    state = llm.start()
    state.forward(ids[:3])
    for token in ids[3:-1]:
        state.forward([token])
    stepped = state.forward([ids[-1]])
    assert state.length == len(ids)
    np.testing.assert_allclose(stepped, whole, atol=1e-4)

    llm.max_chunk = 4  # as under a TensorRT profile of at most 4 prompt tokens per step
    chunked = llm.start()
    np.testing.assert_allclose(chunked.forward(ids), whole, atol=1e-4)
    assert chunked.length == len(ids)


@pytest.mark.export
def test_stop_token_and_stop_string(tiny_bundle: Path, tmp_path: Path) -> None:
    llm = LLM.load(tiny_bundle)
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
    first = llm.chat([USER], greedy)
    assert len(first.token_ids) == 8 and first.stop_reason == "max_new_tokens"

    folder = copy_bundle(tiny_bundle, tmp_path / "stops")
    manifest = bundle.read_manifest(folder)
    section = manifest.llm
    stops = [*section.generation.stop_token_ids, first.token_ids[2]]
    generation = msgspec.structs.replace(section.generation, stop_token_ids=stops)
    rewrite_manifest(folder, llm=msgspec.structs.replace(section, generation=generation))
    stopped = LLM.load(folder).chat([USER], greedy)
    assert stopped.stop_reason == "stop_token"
    assert stopped.token_ids == first.token_ids[:2]

    piece = llm.decode(first.token_ids[3:5])
    cut = llm.chat([USER], msgspec.structs.replace(greedy, stop_strings=[piece]))
    assert cut.stop_reason == "stop_string"
    assert piece not in cut.text
    assert first.text.startswith(cut.text)


@pytest.mark.export
def test_prompt_longer_than_the_context_is_a_clear_error(tiny_bundle: Path) -> None:
    llm = LLM.load(tiny_bundle)
    with pytest.raises(ValueError, match="at most 256"):
        llm.generate([5] * 300)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        llm.generate([5, 6], GenerationConfig(max_new_tokens=0))


@pytest.mark.export
def test_llm_text_is_a_text_backend(tiny_bundle: Path) -> None:
    backend = open_text_backend(str(tiny_bundle))
    assert isinstance(backend, LLMText)
    assert isinstance(backend, TextBackend)
    assert "tiny-fp32" in backend.name and "cpu" in backend.name
    one = backend.generate(request(seed=3))
    assert one == backend.generate(request(seed=3))
    assert one == one.strip()
    direct = backend.llm.chat(request().messages, GenerationConfig(max_new_tokens=12, seed=3))
    assert one == direct.text.strip()
    assert 0 < len(direct.token_ids) <= 12


@pytest.mark.may_skip  # skips only where it does not apply (a GPU build, another OS)
@pytest.mark.export
def test_gpu_bundle_falls_back_to_cpu_with_the_reasons_logged(
    tiny_bundle: Path, tmp_path: Path, caplog
) -> None:
    """A TensorRT bundle on this machine: each better provider is skipped with a logged reason."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a GPU provider; the CPU fallback is not what runs here")
    folder = copy_bundle(tiny_bundle, tmp_path / "trt")
    shutil.copy(folder / "model.onnx", folder / "model_ctx.onnx")  # stands in for the EPContext model
    rewrite_manifest(folder, target="tensorrt", engines=[engine()])
    with caplog.at_level(logging.INFO, logger="metabgm_edge"):
        llm = LLM.load(folder)
    assert llm.provider == "cpu"
    assert len(llm.skipped_providers) == 3
    if not providers.rtx_installed():
        assert "not using tensorrt_rtx: the TensorRT-RTX EP is not installed" in llm.skipped_providers[0]
    assert "not using tensorrt: this onnxruntime" in llm.skipped_providers[1]
    assert "TensorrtExecutionProvider" in llm.skipped_providers[1]
    assert "not using cuda" in llm.skipped_providers[2]
    assert "not using tensorrt" in caplog.text and "runs on cpu" in caplog.text
    assert llm.chat([USER], GenerationConfig(max_new_tokens=3)).token_ids


# -- refusing bad bundles at start ----------------------------------------------------------------


@pytest.mark.export
def test_flipped_byte_in_the_weights_is_refused_at_load(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = copy_bundle(tiny_bundle, tmp_path / "flipped")
    data = folder / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"model\.onnx\.data is corrupt"):
        LLMText.load(folder)


@pytest.mark.export
def test_missing_tokenizer_is_refused_at_load(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = copy_bundle(tiny_bundle, tmp_path / "missing")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"missing tokenizer\.json"):
        LLM.load(folder)


@pytest.mark.export
def test_manifest_that_does_not_match_the_model_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = copy_bundle(tiny_bundle, tmp_path / "mismatch")
    manifest = bundle.read_manifest(folder)
    cache = msgspec.structs.replace(manifest.llm.cache, num_layers=manifest.llm.cache.num_layers + 1)
    rewrite_manifest(folder, llm=msgspec.structs.replace(manifest.llm, cache=cache))
    with pytest.raises(BundleError, match=r"model\.onnx lacks the KV cache its manifest describes"):
        LLM.load(folder)
    graph = manifest.graphs["decoder"]
    renamed = msgspec.structs.replace(graph, inputs=[*graph.inputs[:-1], "something_else"])
    rewrite_manifest(folder, llm=manifest.llm, graphs={"decoder": renamed})
    with pytest.raises(BundleError, match=r"model\.onnx does not have the inputs and outputs"):
        LLM.load(folder)


@pytest.mark.export
def test_garbage_manifest_is_refused_at_load(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = copy_bundle(tiny_bundle, tmp_path / "garbage")
    (folder / "manifest.json").write_bytes(b"\x00\xffnot json")
    with pytest.raises(BundleError, match=r"manifest\.json is not a valid bundle manifest"):
        open_text_backend(str(folder))


# -- no torch, no transformers --------------------------------------------------------------------


@pytest.mark.export
def test_runtime_imports_neither_torch_nor_transformers(tiny_bundle: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from metabgm_edge.text import ChatMessage, StageRequest, open_text_backend
        backend = open_text_backend({str(tiny_bundle)!r})
        text = backend.generate(StageRequest(stage="narrative", messages=[ChatMessage("user", "Rain.")],
                                             characterized={{}}, combat=False, max_new_tokens=5))
        import metabgm_edge.bundle, metabgm_edge.llm.runtime
        names = ("torch", "transformers", "optimum", "peft")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in names)
        print("HEAVY", heavy)
        print("TEXT", bool(text))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "TEXT True" in done.stdout


# -- provider options, packaging, old bundles ------------------------------------------------------


def test_each_tensorrt_provider_gets_its_own_option_spelling_and_never_shares_a_session() -> None:
    assert providers.rtx_options(enable_cuda_graph=True, nv_dump_subgraphs=False, x=None, n=3) == {
        "enable_cuda_graph": "1",
        "nv_dump_subgraphs": "0",
        "n": "3",
    }
    profile = bundle.ShapeProfile(
        min={"input_ids": [1, 1], "attention_mask": [1, 64]},
        opt={"input_ids": [1, 8], "attention_mask": [1, 64]},
        max={"input_ids": [1, 16], "attention_mask": [1, 64]},
    )
    assert providers.profile_options(profile, "tensorrt_rtx")["nv_profile_opt_shapes"] == (
        "input_ids:1x8;attention_mask:1x64"
    )
    assert providers.profile_options(profile, "tensorrt")["trt_profile_max_shapes"] == (
        "input_ids:1x16,attention_mask:1x64"
    )
    for name in ("tensorrt", "cuda", "cpu"):
        listed = [p if isinstance(p, str) else p[0] for p in providers.provider_list(name)]
        assert providers.ORT_NAMES["tensorrt_rtx"] not in listed
        assert listed[-1] == "CPUExecutionProvider"
    (_trt, given), *_ = providers.provider_list("tensorrt", {"tensorrt": {"trt_engine_cache_enable": True}})
    assert given["trt_engine_cache_enable"] == "True"


def test_tensorrt_rtx_says_why_it_is_not_used(monkeypatch) -> None:
    monkeypatch.setattr(providers, "rtx_installed", lambda: False)
    providers.rtx_plugin.cache_clear()
    try:
        reason = providers.rtx_plugin()
        assert isinstance(reason, str) and "pip install 'metabgm-edge[rtx]'" in reason
        assert providers._why_not("tensorrt_rtx", None, []) == reason
    finally:
        providers.rtx_plugin.cache_clear()


def test_two_onnxruntime_packages_are_named_with_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(providers, "onnxruntime_distributions", lambda: ["onnxruntime 1.32.0"])
    assert providers.packaging_problem() is None
    both = ["onnxruntime 1.32.0", "onnxruntime-gpu 1.31.1"]
    monkeypatch.setattr(providers, "onnxruntime_distributions", lambda: both)
    problem = providers.packaging_problem()
    assert (
        problem
        and "installed together" in problem
        and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
    )


@pytest.mark.export
def test_a_bundle_without_the_in_place_cache_is_refused_with_re_export(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    import json

    folder = copy_bundle(tiny_bundle, tmp_path / "old")
    raw = json.loads((folder / "manifest.json").read_text())
    del raw["llm"]["cache"]["buffer"]  # what bundles with the concatenated cache look like
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"buffer.*re-export the bundle"):
        LLM.load(folder)


@pytest.mark.export
def test_without_onnxruntime_a_bundle_is_a_clear_error_and_auto_uses_the_composer(tiny_bundle: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["onnxruntime"] = None  # as if neither onnxruntime package were installed
        from metabgm_edge.errors import MetabgmError
        from metabgm_edge.text import open_text_backend
        try:
            open_text_backend({str(tiny_bundle)!r})
        except MetabgmError as exc:
            print("ERROR", exc)
        from metabgm_edge.cli import open_text
        print("AUTO", type(open_text("auto")).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime is not installed: pip install 'metabgm-edge[cpu]'" in done.stdout
    assert "AUTO Composer" in done.stdout


@pytest.mark.export
def test_generation_reuses_its_buffers_and_stays_deterministic(tiny_bundle: Path) -> None:
    llm = LLM.load(tiny_bundle)
    config = GenerationConfig(max_new_tokens=12, do_sample=True, seed=5, no_repeat_ngram_size=0)
    first = llm.chat([USER], config)
    buffers = [b.data_ptr() for b in llm._states[0]._kv]
    llm.chat(
        [ChatMessage("user", "A much longer question about the storm over the plains at night.")], config
    )
    again = llm.chat([USER], config)
    assert again.token_ids == first.token_ids
    assert len(llm._states) == 1 and [b.data_ptr() for b in llm._states[0]._kv] == buffers
