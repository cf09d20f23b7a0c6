"""`metabgm-edge report`: a PNG of a real session (scene, descriptions, latencies, spectrogram)."""

from __future__ import annotations

import itertools
import json
import logging
import struct
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from click.testing import CliRunner

from metabgm_edge.audio import open_audio_backend
from metabgm_edge.cli import main
from metabgm_edge.report import INSTALL_HINT, build_figure, heard_spans, load_log, pick_session, stft_db
from metabgm_edge.scheduler import PlayOptions, Session
from metabgm_edge.sources import open_source
from metabgm_edge.text.composer import Composer

pytest.importorskip("matplotlib")

DURATION = 40.0


@pytest.fixture(scope="module")
def session_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real fast session: sim:tour with 8 s legs (forest, nightfall, storm, cave, combat...)."""
    folder = tmp_path_factory.mktemp("session")
    log_path, wav = folder / "session.jsonl", folder / "session.wav"
    session = Session(
        open_source("sim:tour?leg=8", seed=3),
        Composer(),
        open_audio_backend("synth"),
        options=PlayOptions(fast=True, duration=DURATION, seed=3),
        out=wav,
        log_path=log_path,
    )
    stats = session.run()
    assert stats.segments >= 4
    return log_path, wav


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_of_a_real_session_is_a_readable_png(session_files: tuple[Path, Path], tmp_path: Path) -> None:
    log_path, wav = session_files
    out = tmp_path / "report.png"
    result = CliRunner().invoke(main, ["report", str(log_path), "--audio", str(wav), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("wrote") == 1 and f"wrote {out}" in result.output  # said once
    width, height = png_size(out)
    assert 1200 <= width <= 4000
    assert 900 <= height <= 6000
    assert out.stat().st_size > 100_000  # a spectrogram and text, not an empty canvas


def test_report_defaults_to_the_log_name_with_png(session_files: tuple[Path, Path], tmp_path: Path) -> None:
    log_path, _ = session_files
    copy = tmp_path / "run.jsonl"
    copy.write_bytes(log_path.read_bytes())
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "run.png")[0] > 0


def test_every_panel_shares_the_session_time_axis(session_files: tuple[Path, Path]) -> None:
    log_path, wav = session_files
    records = load_log(log_path)[-1]
    fig, axes = build_figure(log_path, audio=wav)
    assert {"scene", "health", "music", "latency", "spectrogram"} <= set(axes)
    x0, x1 = axes["spectrogram"].get_xlim()
    assert (x0, x1) == pytest.approx((0.0, DURATION))
    for name in ("scene", "health", "music", "latency"):
        assert axes[name].get_xlim() == pytest.approx((x0, x1)), name
    # The spectrogram covers the WAV, placed at 0 in a fast session.
    mesh = axes["spectrogram"].collections[0]
    xs = np.asarray(mesh.get_coordinates())[..., 0]
    assert xs.min() < 1.0 and xs.max() > DURATION - 1.0
    # One box per segment heard, each labelled with its index; the description list names them all.
    spans = [h for h in heard_spans(records) if h.start < DURATION]
    assert len(axes["music"].patches) == len(spans)
    labels = " ".join(t.get_text() for t in axes["music"].texts)
    for h in spans:
        assert f"#{h.index}" in labels
    listing = axes["text"].texts[0].get_text()
    for rec in records:
        assert rec.description in listing
    # Latency bars: one per segment and stage, their heights the logged timings.
    heights = sorted(round(p.get_height(), 9) for p in axes["latency"].patches if p.get_fill())
    logged = sorted(
        round(v, 9)
        for r in records
        for k, v in r.timings.items()
        if k in ("characterize", "narrative", "description", "audio")
    )
    assert heights == pytest.approx(logged)
    del fig


def test_malformed_lines_are_skipped_with_their_line_numbers(
    session_files: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [
        line for line in session_files[0].read_text(encoding="utf-8").splitlines() if '"summary"' not in line
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join([
            good[0],
            "this is not json",
            "",
            '{"index": "three"}',
            good[1][: len(good[1]) // 2],  # a line cut short (the writer was killed)
            '{"index": 5, "start": NaN}',
            *good[2:],
        ]) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="metabgm_edge.report"):
        sessions = load_log(bad)
    assert len(sessions) == 1
    assert [r.index for r in sessions[0]] == [0, *range(2, len(good))]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for lineno in (2, 4, 5, 6):
        assert f"line {lineno}:" in warned
    assert "line 3:" not in warned  # a blank line is not an error

    out = tmp_path / "bad.png"
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "line 2" in result.output
    assert png_size(out)[0] > 0


def test_a_log_with_no_valid_line_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("nope\n{]\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(junk), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no valid segment record" in result.output
    assert not (tmp_path / "x.png").exists()


def test_a_corrupt_wav_is_a_clear_error(session_files: tuple[Path, Path], tmp_path: Path) -> None:
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"ID3\x03 this is an mp3, not a wav")
    result = CliRunner().invoke(main, ["report", str(session_files[0]), "--audio", str(fake),
                                       "--out", str(tmp_path / "x.png")])  # fmt: skip
    assert result.exit_code == 1
    assert "not a RIFF/WAVE file" in result.output


def test_an_appended_log_reports_the_last_session_unless_asked(
    session_files: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = session_files[0].read_text(encoding="utf-8")
    first = text.splitlines()[:3]
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join(first) + "\n" + text, encoding="utf-8")  # two logs in one file
    sessions = load_log(twice)
    assert [len(s) for s in sessions] == [3, len(text.splitlines()) - 1]  # the summary line is no record
    with caplog.at_level(logging.WARNING, logger="metabgm_edge.report"):
        assert pick_session(sessions, None, twice) is sessions[-1]
    assert "holds 2 sessions" in caplog.text
    assert pick_session(sessions, 1, twice) is sessions[0]
    with pytest.raises(ValueError, match=r"--session must be 1\.\.2"):
        pick_session(sessions, 3, twice)


def test_a_transition_drops_queued_music_that_was_never_heard(session_files: tuple[Path, Path]) -> None:
    records = load_log(session_files[0])[-1]
    start, second, third = records[0], records[1], records[2]
    # start plays [0, 20); the next segment is appended after it; a transition at 12 s cuts in.
    old = {"heard_at": None, "audible_at": None}  # a log from before the scheduler logged heard_at
    cut = msgspec.structs.replace(third, join="transition", queued_at=12.0, audio_seconds=20.0, **old)
    spans = heard_spans([
        msgspec.structs.replace(start, queued_at=0.0, audio_seconds=20.0, **old),
        msgspec.structs.replace(second, join="append", queued_at=10.0, audio_seconds=10.0, **old),
        cut,
    ])  # fmt: skip
    assert [(h.index, h.start, h.end) for h in spans] == [(start.index, 0.0, 12.0), (third.index, 12.0, 32.0)]


def test_heard_spans_follow_the_logged_joins(session_files: tuple[Path, Path]) -> None:
    records = load_log(session_files[0])[-1]
    spans = heard_spans(records)
    # A segment a sharp change cut in before (its join was still ahead) is never heard.
    heard = [
        r for i, r in enumerate(records) if all(r.heard_at < later.heard_at for later in records[i + 1 :])
    ]
    assert len(heard) >= len(records) - 1
    assert [h.index for h in spans] == [r.index for r in heard]
    for span, rec in zip(spans, heard, strict=True):
        assert span.start == rec.heard_at
    for span, after in itertools.pairwise(spans):
        assert span.end == pytest.approx(after.start)


def test_a_pretty_printed_json_file_is_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps({"index": 0, "start": 0.0, "nested": {"a": [1, 2, 3]}}, indent=2) * 1)
    result = CliRunner().invoke(main, ["report", str(pretty), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "one JSON document" in result.output and "one JSON object per line" in result.output
    assert result.output.count("not a session-log record") == 5  # not one warning per line of it
    assert "more lines skipped (lines 6-" in result.output


def test_stft_finds_a_tone_where_and_when_it_plays() -> None:
    sr = 32000
    t = np.arange(sr) / sr
    signal = np.concatenate([np.zeros(sr, np.float32), np.sin(2 * np.pi * 1000 * t).astype(np.float32)])
    db, times, freqs = stft_db(signal, sr)
    assert db.shape == (freqs.size, times.size)
    peak = freqs[np.argmax(db[:, times > 1.2].mean(axis=1))]
    assert abs(peak - 1000) <= freqs[1]
    assert db[:, times < 0.8].max() < -100  # silence before the tone
    assert db[:, times > 1.2].max() == pytest.approx(0.0, abs=1.5)  # a full-scale sine is ~0 dB
    long = np.zeros(sr * 600, np.float32)  # ten minutes: the hop grows, the columns stay bounded
    assert stft_db(long, sr, max_columns=500)[1].size <= 501


def test_without_matplotlib_the_error_says_what_to_install(
    session_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = CliRunner().invoke(main, ["report", str(session_files[0]), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert INSTALL_HINT in result.output
