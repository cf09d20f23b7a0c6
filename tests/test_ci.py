"""Under `make test` (METABGM_EDGE_NO_SKIPS=1) a skipped test fails the run: on CI everything is
installed, so a group that skips is a group that silently did not run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_pytest(tmp_path: Path, body: str, strict: bool) -> subprocess.CompletedProcess[str]:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "METABGM_EDGE_NO_SKIPS"}
    if strict:
        env["METABGM_EDGE_NO_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


SKIPS = 'import pytest\n\ndef test_a():\n    pytest.skip("PulseAudio is not installed")\n'
MODULE_SKIP = 'import pytest\npytest.importorskip("no_such_module_anywhere")\n\ndef test_a():\n    pass\n'
MAY_SKIP = (
    "import pytest\n\n@pytest.mark.may_skip\ndef test_a():\n"
    '    pytest.skip("this onnxruntime has TensorRT")\n'
)


def test_a_skip_fails_the_run_under_make_test(tmp_path: Path) -> None:
    strict = run_pytest(tmp_path, SKIPS, strict=True)
    assert strict.returncode == 1, strict.stdout
    assert "skips are failures here" in strict.stdout and "PulseAudio is not installed" in strict.stdout
    assert run_pytest(tmp_path, SKIPS, strict=False).returncode == 0  # a developer's run may skip


def test_a_module_that_skips_fails_too(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, MODULE_SKIP, strict=True).returncode == 1


def test_a_test_marked_may_skip_does_not_fail(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, MAY_SKIP, strict=True).returncode == 0
