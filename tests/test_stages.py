"""The two stages: prompts as the paper gives them, the 20-word cut, profiles, packaged prompts."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from metabgm_edge.errors import BackendError
from metabgm_edge.listener_profile import Profile, load_profile
from metabgm_edge.stages import describe, enforce_profile, limit_words, prompt_template, render_prompt
from metabgm_edge.state import state_from_dict
from metabgm_edge.text import StageRequest
from metabgm_edge.text.composer import Composer

FIG_2B = (
    "Imagine you are a music composer. Now, please help me compose music for the following scene: \n"
    "{scene}\nThe music can include rhythm, melody, instruments, mood, or key changes. Please use no "
    "more than 20 words to provide a brief and fluent music description."
)
NIGHT = state_from_dict(
    {"scene": {"biome": "forest"}, "time": {"ticks": 18000}, "weather": {"state": "rain"}}
)


class Recording:
    """A text backend that records its requests and answers with fixed text."""

    name = "recording"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.requests: list[StageRequest] = []

    def generate(self, request: StageRequest) -> str:
        self.requests.append(request)
        return self.answers[request.stage]


def test_description_prompt_is_fig_2b_verbatim() -> None:
    assert prompt_template("description") == FIG_2B


def test_two_stages_chain_narrative_into_description_prompt() -> None:
    backend = Recording({"narrative": "Rain drums on the leaves.", "description": "Soft piano in D minor."})
    result = describe(NIGHT, backend)
    first, second = backend.requests
    assert first.stage == "narrative" and "Biome: forest" in first.messages[0].content
    assert "Phase: night" in first.messages[0].content
    assert second.stage == "description"
    assert second.messages[0].content == FIG_2B.replace("{scene}", "Rain drums on the leaves.")
    assert result.narrative == "Rain drums on the leaves."
    assert result.description == "Soft piano in D minor."
    assert set(result.timings) == {"characterize", "narrative", "description"}


def test_direct_mode_is_one_request() -> None:
    backend = Recording({"direct": "Calm strings."})
    result = describe(NIGHT, backend, mode="direct")
    assert [r.stage for r in backend.requests] == ["direct"]
    assert "Biome: forest" in backend.requests[0].messages[0].content
    assert result.narrative is None and result.description == "Calm strings."


def test_long_descriptions_are_cut_to_20_words(caplog) -> None:
    caplog.set_level(logging.INFO, logger="metabgm_edge")
    long = " ".join(f"word{i}" for i in range(40))
    result = describe(NIGHT, Recording({"narrative": "x", "description": long}))
    assert len(result.description.split()) == 20 and result.cut
    assert "cut to 20 words" in caplog.text
    assert limit_words("one two three") == ("one two three", False)


def test_labels_and_quotes_are_cleaned() -> None:
    answers = {"narrative": "x", "description": '  Music description: "Soft harp."  '}
    result = describe(NIGHT, Recording(answers))
    assert result.description == "Soft harp."


def test_empty_text_is_an_error_not_a_description() -> None:
    with pytest.raises(BackendError, match="no text"):
        describe(NIGHT, Recording({"narrative": "x", "description": "  "}))


def test_profile_reaches_the_prompt_and_the_output(tmp_path: Path) -> None:
    path = tmp_path / "me.toml"
    path.write_text(
        'name = "me"\nprefer_genres = ["ambient"]\navoid_instruments = ["drums"]\nintensity = 0.2\n'
    )
    profile = load_profile(path)
    backend = Recording({"narrative": "x", "description": "Driving drums and soft pads."})
    result = describe(NIGHT, backend, profile=profile)
    prompt = backend.requests[1].messages[0].content
    assert prompt.startswith(FIG_2B.replace("{scene}", "x"))
    assert "prefers ambient" in prompt and "never use drums" in prompt
    assert "drum" not in result.description.lower()
    assert enforce_profile("Piano, drums, and bass.", profile) == "Piano, and bass."


def test_bad_profile_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("intensity = 3\n")
    with pytest.raises(Exception, match="invalid profile"):
        load_profile(path)
    assert Profile().prompt_line() == ""


def test_composer_is_deterministic_and_scene_aware() -> None:
    composer = Composer()
    a = describe(NIGHT, composer, seed=3)
    b = describe(NIGHT, composer, seed=3)
    assert a.description == b.description and a.narrative == b.narrative
    combat = state_from_dict({"hostiles": [{"name": "zombie", "distance": 2.0}], "health": {"value": 6}})
    assert describe(combat, composer).description != a.description
    assert render_prompt("narrative", info="Scene: Biome: forest").count("Scene: Biome: forest") == 1


@pytest.mark.slow
def test_prompts_load_from_an_installed_wheel(tmp_path: Path, repo_root: Path) -> None:
    """The wheel carries prompts/ inside the package; an install without the checkout finds them."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(repo_root)],
        capture_output=True, text=True,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.fail(f"wheel build failed: {build.stderr[-2000:]}")
    wheel = next(tmp_path.glob("metabgm_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"metabgm_edge/prompts/narrative.txt", "metabgm_edge/prompts/description.txt",
            "metabgm_edge/prompts/direct.txt"} <= set(names)  # fmt: skip
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from metabgm_edge.stages import prompt_template, __file__ as f; "
        "print(f); print(prompt_template('description'))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert str(site) in run.stdout.splitlines()[0]
    assert "no more than 20 words" in run.stdout


# -- the listener's avoid lists: word forms, synonyms, and the audio side ---------------------------

AVOIDS = Profile(name="no-drums-no-strings", avoid_instruments=["drums", "strings"], avoid_genres=["metal"])


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("A tense piece with a string quartet and soft piano.", ["string", "quartet"], ["soft piano"]),
        (
            "Battle music: driving drumming, a drummer's fills, heavy drumbeats and brass.",
            ["drum"],
            ["brass"],
        ),
        ("Ambient pads over hand percussion and violins, slow.", ["percussion", "violin"], ["pads", "slow"]),
        ("Epic orchestral music with thundering timpani, cellos and choir.", ["timpani", "cello"], ["choir"]),
        ("Heavy metal riffs, distorted guitar.", ["metal"], ["distorted guitar"]),
        (
            "A stringent, organic harpsichord theme, beating with life.",
            [],
            ["stringent", "harpsichord", "beating"],
        ),
    ],
)
def test_avoided_instruments_go_in_every_word_form_and_synonym(
    text: str, gone: list[str], kept: list[str]
) -> None:
    out = enforce_profile(text, AVOIDS)
    for word in gone:
        assert word not in out.lower(), out
    for word in kept:
        assert word in out, out
    assert "  " not in out and ", ," not in out and " ." not in out and not out.startswith(","), out


class Scripted:
    """A text backend that ignores the profile, as an LLM may: it always writes ``description``."""

    name = "scripted"

    def __init__(self, description: str) -> None:
        self.description = description

    def generate(self, request: StageRequest) -> str:
        return "A scene." if request.stage == "narrative" else self.description


def test_the_synthesizer_leaves_out_what_the_listener_avoids(tmp_path: Path) -> None:
    """The audio side too: a groovy rhythm brings drums of their own accord, "bowed" strings are
    strings; with the profile the audio backend is told what to leave out and plays neither."""
    from metabgm_edge.audio import open_audio_backend
    from metabgm_edge.scheduler import PlayOptions, Session
    from metabgm_edge.sources import open_source

    description = "An energetic, groovy anthem at 140 BPM in E minor with electric guitar and bowed strings."

    def anchor(profile: Profile) -> Any:
        s = Session(
            open_source("sim:forest"), Scripted(description), open_audio_backend("synth"),
            options=PlayOptions(fast=True, duration=12.0), profile=profile, use_device=False,
        )  # fmt: skip
        s.run()
        return s._anchor

    free = anchor(Profile())
    assert free.drums is not None and "strings" in free.instruments  # what the description asks for
    kept_out = anchor(AVOIDS)
    assert kept_out.drums is None
    assert not {"strings", "cello", "pizz"} & set(kept_out.instruments), kept_out.instruments
    assert (
        AVOIDS.audio_description("Calm piano.")
        == "Calm piano. Without drums, without strings, without cello."
    )
