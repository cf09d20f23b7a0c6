"""`metabgm-edge dataset`: the scenario grid, reverse generation, the row format and the splits."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from metabgm_edge.characterize import in_combat
from metabgm_edge.dataset.build import build_reverse, build_scenes
from metabgm_edge.dataset.captions import Caption, condense, read_captions, read_music
from metabgm_edge.dataset.pairs import DatasetError, Pair, read_pairs, split_of
from metabgm_edge.dataset.reverse import match
from metabgm_edge.dataset.scenes import BIOME_BY_ID, Constraints, SceneGrid, scene_grid
from metabgm_edge.stages import MAX_WORDS, describe, render_prompt
from metabgm_edge.state import parse_message
from metabgm_edge.text.composer import Composer
from metabgm_edge.text.musicness import musicness

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = ROOT / "data" / "musiccaps" / "musiccaps-public-dev.csv"
SHIPPED = ROOT / "data" / "pairs"


def caption(text: str, aspects: tuple[str, ...] = (), ytid: str = "x") -> Caption:
    return Caption(ytid, text, aspects)


def test_grid_scenes_are_what_the_game_makes() -> None:
    scenes = scene_grid(300, seed=1)
    assert len({s.cell.key for s in scenes}) == 300
    for scene in scenes:
        biome = BIOME_BY_ID[scene.cell.biome]
        state = scene.state
        # A valid live-state message, read back as the same state.
        assert parse_message(json.dumps({"v": 1, **_builtins(state)}))[0] == state
        if state.weather.state == "snow":
            assert biome.temperature < 0.15
        if not biome.rain:
            assert state.weather.state == "clear"
        assert state.scene.dimension == biome.dimension
        assert ("swimming" in scene.cell.flags) == (scene.cell.move == "swimming")
        close = scene.cell.hostiles in ("close", "attacked")
        assert in_combat(state) == close == scene.combat
    kinds = {s.cell.hostiles for s in scenes} | {s.state.scene.dimension for s in scenes}
    assert {"none", "far", "close", "attacked", "overworld", "the_nether", "the_end"} <= kinds
    assert scene_grid(20, seed=1)[5].state == scenes[5].state
    assert scene_grid(20, seed=2)[5].state != scenes[5].state


def _builtins(state: object) -> dict:
    import msgspec

    return {k: v for k, v in msgspec.to_builtins(state).items() if k != "v"}


def test_constraints_hold() -> None:
    grid = SceneGrid(3)
    want = Constraints(biomes=("desert", "taiga"), phases=("night",), hostiles=("attacked",))
    for _ in range(20):
        scene = grid.draw(want, unique=False)
        assert scene.cell.biome in ("desert", "taiga") and scene.cell.phase == "night"
        assert scene.state.attacked is not None and scene.combat


def test_scene_pairs_reproduce_the_runtime_prompts_and_outputs() -> None:
    teacher = Composer()
    report = build_scenes(teacher, 12, seed=5)
    assert len(report.rows) == 24 and report.failed == 0
    by_scene: dict[str, list[Pair]] = defaultdict(list)
    for row in report.rows:
        by_scene[row.id.split("/")[0]].append(row)
    for narrative_row, description_row in by_scene.values():
        assert (narrative_row.task, description_row.task) == ("narrative", "description")
        state = parse_message(json.dumps(narrative_row.scene))[0]
        result = describe(state, teacher, seed=narrative_row.provenance.seed)
        # The user message is exactly what the runtime sends, the output what the teacher wrote.
        assert narrative_row.prompt() == render_prompt("narrative", info=result.info_str)
        assert narrative_row.output == result.narrative
        assert description_row.prompt() == render_prompt("description", narrative=result.narrative)
        assert description_row.output == description_row.references[0] == result.description
        assert narrative_row.combat == result.combat
        assert narrative_row.split == split_of(narrative_row.scene_id)
    assert build_scenes(teacher, 12, seed=5).rows == report.rows


def test_captions_are_condensed_into_music_descriptions_in_the_musicians_words() -> None:
    c = caption(
        "This song features an electric guitar as the main instrument. The percussion plays a simple "
        "beat. There are no voices in this song. The mood of this song is relaxing.",
        (
            "guitar song",
            "piano backing",
            "simple percussion",
            "relaxing melody",
            "slow tempo",
            "bass",
            "no voice",
        ),
    )
    music = read_music(c)
    assert music.tempo == "a slow tempo" and music.moods == ("relaxing",)
    assert "simple percussion" in music.instruments
    assert not any(p in music.instruments for p in ("guitar song", "piano backing", "no voice"))
    text = condense(music, random.Random(0))
    assert text is not None and len(text.split()) <= MAX_WORDS and musicness(text).ok
    assert "slow tempo" in text and "relaxing" in text
    # Vocals and recording quality are not instruments; a caption without a tempo gives nothing.
    sung = caption("A female vocalist sings a sad melody.", ("soft female vocal", "low quality", "sad"))
    assert read_music(sung).instruments == ()
    assert condense(read_music(sung), random.Random(0)) is None
    assert c.sentences()[0] == "This song features an electric guitar as the main instrument."


@pytest.mark.parametrize(
    ("text", "aspects", "expected"),
    [
        (
            "Heavy metal with distorted guitars and aggressive fast drums.",
            ("metal", "fast tempo", "aggressive"),
            {"combat"},
        ),
        (
            "A calm, peaceful acoustic folk song with gentle flute.",
            ("folk", "slow tempo", "calm"),
            {"peaceful_day"},
        ),
        (
            "An eerie, mysterious ambient drone with echoing synth.",
            ("ambient", "eerie", "slow tempo"),
            {"cave", "haunted_wood"},
        ),
        (
            "A sad, melancholic piano ballad, lonely and nostalgic.",
            ("ballad", "sad", "slow tempo"),
            {"night_alone"},
        ),
        (
            "An epic orchestral piece, triumphant and heroic brass.",
            ("orchestral", "epic", "medium tempo"),
            {"vista"},
        ),
        ("Just some sounds.", (), {"peaceful_day"}),
    ],
)
def test_reverse_matching_follows_the_documented_rules(text: str, aspects: tuple, expected: set) -> None:
    assert match(caption(text, aspects), random.Random(0)).name in expected


def test_reverse_pairs_keep_caption_and_scene_in_one_split() -> None:
    captions = read_captions(CAPTIONS)[:300]
    report = build_reverse(Composer(), captions, 80, seed=3)
    assert 0 < len(report.rows) <= 80 and report.failed == 0
    for row in report.rows:
        assert row.task == "description"
        assert row.split == split_of(f"caption:{row.provenance.caption_id}") == split_of(row.scene_id)
        assert musicness(row.output).ok and len(row.output.split()) <= MAX_WORDS
        assert " ".join(row.references) == row.provenance.caption
        assert "CC BY-SA 4.0" in row.provenance.licence
        state = parse_message(json.dumps(row.scene))[0]
        assert in_combat(state) == row.combat
    assert report.skipped + len(report.rows) <= len(captions)


def test_shipped_datasets_share_no_scene_or_caption_across_splits() -> None:
    rows = read_pairs(SHIPPED / "scenes.jsonl") + read_pairs(SHIPPED / "reverse.jsonl")
    scenes: dict[str, set[str]] = defaultdict(set)
    captions: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        scenes[row.scene_id].add(row.split)
        if row.provenance.caption_id:
            captions[row.provenance.caption_id].add(row.split)
    assert all(len(s) == 1 for s in scenes.values())
    assert all(len(s) == 1 for s in captions.values())
    splits = {r.split for r in rows}
    assert splits == {"train", "validation", "test"}


def test_shipped_datasets_are_what_the_documented_commands_make(tmp_path: Path) -> None:
    """data/pairs/README.md gives these commands; the committed files are their exact output."""
    cli = [sys.executable, "-m", "metabgm_edge"]
    scenes, reverse = tmp_path / "scenes.jsonl", tmp_path / "reverse.jsonl"
    subprocess.run(
        [
            *cli,
            "dataset",
            "scenes",
            "--teacher",
            "composer",
            "--n",
            "433",
            "--seed",
            "7",
            "--out",
            str(scenes),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    subprocess.run(
        [
            *cli,
            "dataset",
            "reverse",
            "--teacher",
            "composer",
            "--captions",
            str(CAPTIONS),
            "--n",
            "1539",
            "--seed",
            "7",
            "--out",
            str(reverse),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    assert scenes.read_bytes() == (SHIPPED / "scenes.jsonl").read_bytes()
    assert reverse.read_bytes() == (SHIPPED / "reverse.jsonl").read_bytes()


def test_dataset_cli_and_bad_input(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "metabgm_edge"]
    out = tmp_path / "s.jsonl"
    done = subprocess.run(
        [*cli, "dataset", "scenes", "--teacher", "composer", "--n", "5", "--seed", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "10 rows (5 scenes)" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,hello\n")
    done = subprocess.run(
        [
            *cli,
            "dataset",
            "reverse",
            "--teacher",
            "composer",
            "--captions",
            str(bad),
            "--n",
            "5",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "r.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("Error: ") and "missing column(s) ytid" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_hostile_captions_files(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('ytid,caption,aspect_list\na,"A slow sad piano piece.","[__import__(\'os\')]"\n')
    assert read_captions(path)[0].aspects == ()  # a list literal only, never evaluated code
    path.write_text("ytid,caption,aspect_list\na," + "x" * 30_000 + ",[]\n")
    with pytest.raises(DatasetError, match="over 20000 characters"):
        read_captions(path)
    path.write_bytes(b"ytid,caption,aspect_list\na,\xff\xfe,[]\n")
    with pytest.raises(DatasetError, match="cannot parse"):
        read_captions(path)
    with pytest.raises(DatasetError, match="cannot read captions"):
        read_captions(tmp_path / "missing.csv")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"id": 1}\n')
    with pytest.raises(DatasetError, match=r"p\.jsonl:1: not a pairs row"):
        read_pairs(pairs)
