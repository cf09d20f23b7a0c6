"""Where things live: engines, profiles, logs, recordings (flag, environment, checkout, platform)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metabgm_edge import cli, paths
from metabgm_edge.errors import MetabgmError
from metabgm_edge.listener_profile import load_profile


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No flag, none of the variables, HOME and XDG folders in tmp_path, cwd an empty folder."""
    for var in [paths.DATA_ENV, *paths.ENV.values()]:
        monkeypatch.delenv(var, raising=False)
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_MUSIC_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    paths.set_data_dir(None)
    yield tmp_path
    paths.set_data_dir(None)


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux folders")
def test_platform_folders_by_default(clean: Path) -> None:
    home = clean / "home"
    assert paths.folder("engines") == home / ".local/share/metabgm-edge/engines"
    assert paths.folder("profiles") == home / ".local/share/metabgm-edge/profiles"
    assert paths.folder("logs") == home / ".local/state/metabgm-edge/log"
    assert paths.folder("recordings") == home / "Music/metabgm-edge"
    assert all(f.why == "platform" for f in paths.all_folders())
    assert not (home / ".local").exists()  # looking up creates nothing


def test_lookup_order_flag_then_own_variable_then_data_dir_then_checkout(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("engines").mkdir()  # a checkout's engines/ in the working directory
    assert paths.locate("engines") == paths.Folder("engines", "engines", "./engines (a checkout)")
    assert paths.locate("recordings").why == "platform"  # only engines has the checkout rule
    monkeypatch.setenv(paths.DATA_ENV, str(clean / "data"))
    assert paths.folder("engines") == clean / "data" / "engines"
    assert paths.folder("logs") == clean / "data" / "logs"
    monkeypatch.setenv("METABGM_EDGE_ENGINES", str(clean / "mine"))
    assert paths.locate("engines").why == "$METABGM_EDGE_ENGINES"
    assert paths.folder("engines") == clean / "mine"
    assert paths.folder("profiles") == clean / "data" / "profiles"
    paths.set_data_dir(clean / "flag")
    assert [paths.folder(k) for k in paths.KINDS] == [clean / "flag" / k for k in paths.KINDS]


def test_the_packaged_build_ignores_the_working_directory(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("engines").mkdir()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert paths.frozen()
    assert paths.locate("engines").why == "platform"


def test_an_unwritable_folder_is_one_clear_error(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = clean / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("METABGM_EDGE_RECORDINGS", str(blocker / "recordings"))
    with pytest.raises(MetabgmError, match=r"cannot create the recordings folder .*METABGM_EDGE_RECORDINGS"):
        paths.default_file("recordings", "metabgm-edge", ".wav")


def test_a_profile_by_name_comes_from_the_profiles_folder(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.DATA_ENV, str(clean / "data"))
    profiles = paths.ensure("profiles")
    (profiles / "calm.toml").write_text('name = "calm"\navoid_instruments = ["drums"]\n')
    assert load_profile("calm").name == "calm"
    assert load_profile("calm.toml").avoid_instruments == ["drums"]
    Path("calm").write_text('name = "here"\n')  # a file that exists wins
    assert load_profile("calm").name == "here"
    with pytest.raises(MetabgmError, match="cannot read profile"):
        load_profile("nobody")


def test_play_without_a_device_records_into_the_recordings_folder(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("metabgm_edge.playback.sinks.probe_output", lambda *a, **k: "no output device")
    result = CliRunner().invoke(
        cli.main,
        ["--data-dir", str(clean / "data"), "play", "--duration", "2", "--interval", "2",
         "--text", "composer", "--audio", "synth"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    wavs = list((clean / "data" / "recordings").glob("metabgm-edge-*.wav"))
    assert len(wavs) == 1 and str(wavs[0]) in result.output
    assert not list(Path.cwd().iterdir())  # nothing in the working directory
    assert not (clean / "data" / "logs").exists()  # a Python install writes a session log only with --log


def test_the_packaged_build_keeps_a_session_log(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv(paths.DATA_ENV, str(clean / "data"))
    out = clean / "out.wav"
    result = CliRunner().invoke(
        cli.main,
        ["play", "--fast", "--duration", "4", "--interval", "2", "--out", str(out), "--text", "composer"],
    )
    assert result.exit_code == 0, result.output
    logs = list((clean / "data" / "logs").glob("session-*.jsonl"))
    assert len(logs) == 1
    assert json.loads(logs[0].read_text().splitlines()[0])
    assert out.is_file()  # a path given is used as given


def test_auto_finds_bundles_in_the_engines_folder(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr("metabgm_edge.bundle.default_bundle", lambda d, kind, gpu: seen.append(d))
    monkeypatch.setenv("METABGM_EDGE_ENGINES", str(clean / "eng"))
    cli.open_text("auto")
    assert seen == [clean / "eng"]


def test_doctor_shows_each_folder_and_why(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metabgm_edge.doctor import check_folders

    monkeypatch.setenv("METABGM_EDGE_LOGS", str(clean / "logs-here"))
    check = check_folders()
    assert check.status == "ok"
    assert check.data["logs"] == {
        "path": str(clean / "logs-here"),
        "why": "$METABGM_EDGE_LOGS",
        "exists": False,
    }
    assert check.detail.startswith("Python install")
    (clean / "a-file").write_text("a file where a folder would go")
    monkeypatch.setenv("METABGM_EDGE_LOGS", str(clean / "a-file" / "logs"))
    broken = check_folders()
    assert (
        broken.status == "error" and "NOT WRITABLE" in broken.detail and "METABGM_EDGE_LOGS" in broken.detail
    )
