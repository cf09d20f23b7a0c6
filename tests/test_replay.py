"""Replay: recorded sessions in original timing or as fast as possible; bad lines skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metabgm_edge.acquisition import Acquisition, FastClock
from metabgm_edge.errors import SourceError
from metabgm_edge.sources import open_source


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def msg(t: float, biome: str, **kw) -> str:
    return json.dumps({"v": 1, "t": t, "scene": {"biome": biome}, **kw})


def test_replay_follows_recorded_times(tmp_path: Path) -> None:
    f = write(tmp_path / "s.jsonl", [msg(0, "forest"), msg(3.5, "river"), msg(9, "desert")])
    src = open_source(f"replay:{f}")
    src.start()
    assert [src.sample(t).scene.biome for t in (0, 3.4, 3.5, 8.9, 9.0, 50)] == [
        "forest", "forest", "river", "river", "desert", "desert",
    ]  # fmt: skip
    assert src.finished


def test_bad_lines_are_skipped_counted_and_the_rest_plays(tmp_path: Path, caplog) -> None:
    lines = [
        msg(0, "forest"),
        "{not json",
        json.dumps({"v": 1, "scene": {"biome": "x"}}),  # no t
        msg(1, "river", temperature="hot"),
        json.dumps({"v": 1, "t": 2, "temperature": 1e999}).replace("inf", "1e999"),
        msg(2, "lake"),
        msg(0.5, "backwards"),
        "",
        msg(4, "plains"),
    ]
    src = open_source(f"replay:{write(tmp_path / 's.jsonl', lines)}")
    src.start()
    stats = src.stats()
    assert stats.accepted == 3 and stats.rejected == 5
    assert stats.reasons == {
        "malformed_json": 2, "missing_time": 1, "invalid_field": 1, "time_goes_back": 1,
    }  # fmt: skip
    assert src.sample(5).scene.biome == "plains"
    assert ":2: skipped" in caplog.text


def test_replay_as_fast_as_possible_through_acquisition(tmp_path: Path) -> None:
    lines = [msg(t, "forest" if t < 30 else "desert") for t in range(0, 60)]
    src = open_source(f"replay:{write(tmp_path / 's.jsonl', lines)}")
    acq = Acquisition(src, interval=10.0, clock=FastClock())
    acq.start()
    segs = []
    while (seg := acq.next_segment(timeout=10)) is not None:
        segs.append(seg)
    acq.stop()
    assert len(segs) == 6
    assert [s.latest.scene.biome for s in segs] == ["forest"] * 2 + ["desert"] * 4


def test_missing_or_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        open_source(f"replay:{tmp_path / 'nope.jsonl'}").start()
    with pytest.raises(SourceError, match="no valid message"):
        open_source(f"replay:{write(tmp_path / 'e.jsonl', ['{}'])}").start()
