"""The command line as a user meets it: one-line errors instead of tracebacks, nothing silently
ignored, consistent wording; and `render --continue-from`, `describe`, `record`, `schema`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner

from metabgm_edge.cli import main
from metabgm_edge.playback.wav import read_wav
from metabgm_edge.state import example_message, parse_message

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed entry point (``run``), as a user runs it."""
    code = "from metabgm_edge.cli import run; run()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# -- consistency -------------------------------------------------------------------------------------


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix}{name} ")
    return out


def test_every_option_of_every_command_says_what_it_does() -> None:
    missing = [
        f"{name} {opt.opts[0]}"
        for name, cmd in _commands(main)
        for opt in cmd.params
        if isinstance(opt, click.Option) and not opt.hidden and not (opt.help or "").strip()
    ]
    assert not missing, missing


def test_play_help_names_no_argument_it_does_not_take() -> None:
    result = CliRunner().invoke(main, ["play", "--help"])
    assert result.exit_code == 0
    summary = result.output.split("Options:")[0]
    assert "SOURCE" not in summary and "--source" in summary


def test_render_takes_duration_like_every_other_command(tmp_path: Path) -> None:
    out = tmp_path / "a.wav"
    result = CliRunner().invoke(main, ["render", "calm piano", "--duration", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_wav(out)[0].shape[0] == 2 * 32000
    assert "{" not in result.output and "'" not in result.output  # a sentence, not a Python dict
    legacy = CliRunner().invoke(main, ["render", "calm piano", "--seconds", "1", "--out", str(out)])
    assert legacy.exit_code == 0  # the old spelling still works


def test_counts_are_worded_for_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["-q", "play", "--fast", "--duration", "3", "--text", "composer",
                                       "--out", str(tmp_path / "x.wav")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "in 1 segment on" in result.output and "1 segments" not in result.output
    assert "0 deadline misses" in result.output


# -- one-line errors ---------------------------------------------------------------------------------


def test_library_errors_and_usage_errors_share_one_prefix(tmp_path: Path) -> None:
    library = one_line_error(
        cli("play", "--fast", "--duration", "2", "--profile", str(tmp_path / "none.toml"))
    )
    assert library.startswith("Error: cannot read profile")
    usage = one_line_error(cli("play", "--fast", "--source", "sim:forest"))
    assert usage.startswith("Error: --fast with a simulated source needs --duration")


@pytest.mark.parametrize(
    "args",
    [
        ["play", "--fast", "--duration", "2", "--out", "{blocker}/x.wav"],
        ["play", "--fast", "--duration", "2", "--log", "{blocker}/x.jsonl"],
        ["record", "sim:forest", "--duration", "2", "--out", "{blocker}/x.jsonl"],
        ["render", "calm piano", "--out", "{blocker}/x.wav"],
        ["play", "--fast", "--duration", "2", "--out", "{folder}"],
    ],
    ids=["play --out", "play --log", "record --out", "render --out", "a folder"],
)
def test_an_unwritable_output_is_one_line_and_nothing_starts(tmp_path: Path, args: list[str]) -> None:
    blocker = tmp_path / "a-file"  # a file where a folder should be: fails even for root
    blocker.write_text("x")
    args = [a.format(blocker=blocker, folder=tmp_path) for a in args]
    line = one_line_error(cli(*args))
    assert str(blocker) in line or str(tmp_path) in line, line


def test_a_sample_period_longer_than_the_interval_is_refused() -> None:
    line = one_line_error(cli("play", "--fast", "--duration", "5", "--sample-period", "20"))
    assert "--sample-period" in line and "longer than the interval" in line


def test_a_named_device_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    line = one_line_error(cli("play", "--duration", "2", "--device", "no-such-device-xyz", "--out", str(out)))
    assert "--device" in line
    assert not out.exists()  # no silent fallback to a file


@pytest.mark.parametrize("description", ["", "   "])
def test_render_refuses_an_empty_description(tmp_path: Path, description: str) -> None:
    out = tmp_path / "x.wav"
    line = one_line_error(cli("render", description, "--out", str(out)))
    assert "description is empty" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"this is text, not audio", "not a RIFF/WAVE file"), (b"RIFF\x24\x00\x00\x00WAVEfmt ", "fmt chunk")],
    ids=["not a WAV", "cut short"],
)
def test_continuing_from_a_bad_file_is_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    line = one_line_error(
        cli("render", "calm piano", "--continue-from", str(bad), "--out", str(tmp_path / "o.wav"))
    )
    assert reason in line and line.count(str(bad)) == 1, line


# -- render --continue-from --------------------------------------------------------------------------


def test_render_continues_a_preview_and_a_play_recording(tmp_path: Path) -> None:
    runner = CliRunner()
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    a = runner.invoke(
        main, ["render", "calm piano in D major at 90 BPM", "--duration", "3", "--out", str(first)]
    )
    assert a.exit_code == 0 and "segment 1: D major, 90 BPM" in a.output, a.output
    b = runner.invoke(main, ["render", "calm piano", "--duration", "3", "--continue-from", str(first),
                             "--out", str(second)])  # fmt: skip
    assert b.exit_code == 0, b.output
    assert "segment 2: D major, 90 BPM" in b.output  # key and tempo carried on by the anchor
    played = tmp_path / "played.wav"
    p = runner.invoke(
        main, ["-q", "play", "--fast", "--duration", "12", "--text", "composer", "--out", str(played)]
    )
    assert p.exit_code == 0, p.output
    assert read_wav(played)[1].metadata is not None  # play --out stores the anchor too
    c = runner.invoke(main, ["render", "calm piano", "--duration", "2", "--continue-from", str(played),
                             "--out", str(tmp_path / "third.wav")])  # fmt: skip
    assert c.exit_code == 0, c.output
    assert "next: segment 1:" not in c.output  # it continued, it did not start afresh


# -- describe ----------------------------------------------------------------------------------------


def test_describe_a_scene_file_stdin_and_json(tmp_path: Path) -> None:
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps(example_message()))
    runner = CliRunner()
    text = runner.invoke(main, ["describe", str(scene), "--text", "composer"])
    assert text.exit_code == 0, text.output
    assert "characterized:" in text.output and "narrative" in text.output and "description" in text.output
    assert "Hostile Entity" in text.output  # a zombie 4 blocks away: the combat key set
    piped = runner.invoke(main, ["describe", "-", "--text", "composer", "--json"], input=scene.read_text())
    assert piped.exit_code == 0, piped.output
    data = json.loads(piped.output)
    assert data["combat"] is True and len(data["description"].split()) <= 20


def test_describe_a_source_one_line_per_segment() -> None:
    result = CliRunner().invoke(main, ["describe", "--text", "composer", "--source", "sim:tour?leg=5",
                                       "--segments", "4", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["segment"] for line in lines] == [0, 1, 2, 3]
    assert all(line["description"] for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{scene}", "--source", "sim:tour"], "not both"),
        (["{scene}", "--segments", "3"], "--segments"),
        (["{scene}", "--interval", "5"], "--interval"),
        ([], "SCENE.json"),
    ],
    ids=["file and source", "segments without source", "interval without source", "nothing"],
)
def test_describe_refuses_options_that_would_be_ignored(
    tmp_path: Path, args: list[str], message: str
) -> None:
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps(example_message()))
    result = CliRunner().invoke(
        main, ["describe", "--text", "composer", *(a.format(scene=scene) for a in args)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


# -- record, schema ----------------------------------------------------------------------------------


def test_record_writes_a_file_that_replays(tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    runner = CliRunner()
    rec = runner.invoke(
        main, ["record", "sim:storm", "--duration", "12", "--sample-period", "1", "--out", str(out)]
    )
    assert rec.exit_code == 0, rec.output
    lines = out.read_text().splitlines()
    assert rec.output.strip() == f"recorded {len(lines)} states to {out}"
    times = [json.loads(line)["t"] for line in lines]
    assert times == sorted(times) and times[0] == 0.0 and len(lines) >= 12
    for line in lines:
        parse_message(line)  # every line is a valid message
    args = ["-q", "describe", "--text", "composer", "--source", f"replay:{out}", "--segments", "1", "--json"]
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "thunder" in json.loads(again.output.splitlines()[0])["info_str"].lower()  # the storm, replayed


def test_schema_is_a_json_schema_the_example_meets() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    runner = CliRunner()
    schema = json.loads(runner.invoke(main, ["schema"]).output)
    example = json.loads(runner.invoke(main, ["schema", "--example"]).output)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(example, schema)
    state, envelope = parse_message(msgspec.json.encode(example))
    assert state.scene.biome == example["scene"]["biome"] and envelope.t == example["t"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "health": {"value": "full"}}, schema)
