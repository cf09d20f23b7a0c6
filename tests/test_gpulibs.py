"""The NVIDIA libraries of the GPU providers: read from the provider library, each missing one named
with how to get it, and the session on the CPU instead (the GPU build on a PC without CUDA)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from metabgm_edge import bundle
from metabgm_edge.doctor import check_gpu_libraries, tiny_model
from metabgm_edge.ort import gpulibs
from metabgm_edge.ort.session import open_graph

PYBIND = Path(ort.__file__).parent / "capi"


@pytest.fixture(autouse=True)
def fresh() -> None:
    gpulibs.prepare.cache_clear()
    yield
    gpulibs.prepare.cache_clear()


@pytest.mark.skipif(sys.platform != "linux", reason="ELF")
def test_elf_needed_reads_what_readelf_reads() -> None:
    library = next(PYBIND.glob("onnxruntime_pybind11_state*.so"))
    needed = gpulibs.elf_needed(library)
    assert "libc.so.6" in needed
    if shutil.which("readelf"):
        out = subprocess.run(
            ["readelf", "-d", str(library)], capture_output=True, text=True, check=True
        ).stdout
        expected = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
        assert needed == expected
    assert gpulibs.elf_needed(Path(__file__)) == []  # not an ELF file


def fake_cuda_build(monkeypatch: pytest.MonkeyPatch, needs: list[str]) -> None:
    """This onnxruntime, as if it were onnxruntime-gpu whose CUDA provider needs ``needs``."""
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(gpulibs, "_provider_library", lambda provider: Path(ort.__file__))
    monkeypatch.setattr(gpulibs, "elf_needed", lambda path: needs)
    monkeypatch.setattr(gpulibs, "cuda_major", lambda: "13")  # onnxruntime-gpu 1.31 on PyPI: CUDA 13


@pytest.mark.skipif(sys.platform != "linux", reason="Linux library names")
def test_each_missing_library_is_named_with_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_build(monkeypatch, ["libcublasLt.so.13", "libcudnn.so.9", "libstdc++.so.6", "libz.so.1"])
    libs = gpulibs.prepare()
    names = [m.library for m in libs.missing["cuda"]]
    assert names == ["libcuda.so.1", "libcublasLt.so.13", "libcudnn.so.9"]  # libz loads here: not listed
    reason = libs.reason("cuda")
    assert reason.startswith("missing libcuda.so.1 (the NVIDIA driver): install the NVIDIA driver")
    assert "missing libcublasLt.so.13 (cuBLAS): the CUDA 13 Toolkit's runtime libraries" in reason
    assert "missing libcudnn.so.9 (cuDNN 9): cuDNN 9 for CUDA 13 (developer.nvidia.com/cudnn)" in reason
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in reason
    assert gpulibs.CUDA_DIR_ENV in reason
    assert "tensorrt" not in libs.missing  # this build has no TensorRT provider
    check = check_gpu_libraries()
    assert check.status == "missing" and "libcudnn.so.9" in check.detail


def test_a_gpu_bundle_plays_on_the_cpu_and_says_which_library_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_cuda_build(monkeypatch, ["libcudnn.so.9"])
    (tmp_path / "model.onnx").write_bytes(tiny_model())
    graph = bundle.Graph(file="model.onnx", inputs=["x"], outputs=["y"], opset=13)
    manifest = bundle.Manifest(
        kind="llm", name="t", created="2026-12-01T00:00:00Z", source=bundle.ModelSource(model="m"),
        quantization="fp16", target="cuda", versions={}, graphs={"square": graph},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        opened = open_graph(tmp_path, manifest, "square")
    assert opened.provider == "cpu"
    assert any("not using cuda" in r.message and "libcudnn.so.9" in r.message for r in caplog.records), [
        r.message for r in caplog.records
    ]


def test_libraries_in_the_cuda_folder_are_loaded_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "cuda"
    (folder / "lib").mkdir(parents=True)
    libz = next(
        (
            p
            for p in (Path("/lib/x86_64-linux-gnu/libz.so.1"), Path("/usr/lib/x86_64-linux-gnu/libz.so.1"))
            if p.exists()
        ),
        None,
    )
    if libz is None:
        pytest.skip("no libz.so.1 to copy here")
    shutil.copy(libz, folder / "lib" / "libz.so.1")
    (folder / "lib" / "README.txt").write_text("not a library")
    monkeypatch.setenv(gpulibs.CUDA_DIR_ENV, str(folder))
    fake_cuda_build(monkeypatch, [])
    libs = gpulibs.prepare()
    assert libs.searched[0] == str(folder)
    assert libs.preloaded == [str(folder / "lib" / "libz.so.1")]


def test_a_cpu_onnxruntime_needs_no_gpu_library() -> None:
    if set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        pytest.skip("this onnxruntime has GPU providers")
    libs = gpulibs.prepare()
    assert libs.missing == {} and libs.reason("cuda") is None
    assert check_gpu_libraries().status == "ok"


def test_windows_names_follow_the_cuda_version() -> None:
    assert gpulibs.windows_needs("cuda", "12")[:4] == [
        "cudart64_12.dll", "cublas64_12.dll", "cublasLt64_12.dll", "cufft64_11.dll"
    ]  # fmt: skip
    assert "cufft64_12.dll" in gpulibs.windows_needs("cuda", "13")
    assert gpulibs.windows_needs("tensorrt", "13") == ["nvinfer_10.dll", "nvonnxparser_10.dll"]
