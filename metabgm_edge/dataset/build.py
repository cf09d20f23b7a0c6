"""Build the paired datasets: ``dataset scenes`` and ``dataset reverse``.

Both write :class:`~metabgm_edge.dataset.pairs.Pair` rows whose ``instruction`` is the prompt the
runtime sends (``prompts/narrative.txt``, ``prompts/description.txt``) with ``{input}`` in place
of the data, so a model fine-tuned on them sees at run time exactly what it learned from.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from metabgm_edge.characterize import characterize, in_combat, info_str, scene_data
from metabgm_edge.dataset.captions import Caption, condense, read_music
from metabgm_edge.dataset.pairs import INPUT_SLOT, MUSICCAPS_LICENCE, Pair, Provenance, split_of
from metabgm_edge.dataset.reverse import match
from metabgm_edge.dataset.scenes import SceneGrid, cell_key
from metabgm_edge.stages import NARRATIVE_TOKENS, clean_text, describe, prompt_template, render_prompt
from metabgm_edge.state import SceneState
from metabgm_edge.text import ChatMessage, StageRequest, TextBackend

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class BuildReport:
    rows: list[Pair] = field(default_factory=list)
    failed: int = 0
    """Scenes or captions the teacher failed on (logged, left out)."""
    skipped: int = 0
    """Captions that name no tempo, mood or instrument (reverse only)."""


def scene_message(state: SceneState) -> dict[str, Any]:
    """The live-state message of a scene without the fields left at null (shorter rows, same state)."""

    def compact(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: compact(v) for k, v in value.items() if v is not None and v != {}}
        return value

    return compact(msgspec.to_builtins(state))


def narrative_instruction() -> str:
    return render_prompt("narrative", info=INPUT_SLOT)


def description_instruction() -> str:
    return render_prompt("description", narrative=INPUT_SLOT)


def build_scenes(teacher: TextBackend, n: int, seed: int, progress: Progress | None = None) -> BuildReport:
    """``n`` grid scenes -> (Scene Data -> Narrative) and (Narrative -> Description) pairs."""
    report = BuildReport()
    grid = SceneGrid(seed)
    for i in range(n):
        scene = grid.draw()
        row_seed = seed * 100_000 + i
        try:
            result = describe(scene.state, teacher, mode="two-stage", seed=row_seed)
        except Exception as exc:  # one bad answer must not lose the rest of the data set
            log.warning("teacher %s failed on scene %d (%s); left out", teacher.name, i, exc)
            report.failed += 1
        else:
            assert result.narrative is not None
            key = cell_key(scene)
            common = {
                "scene_id": key,
                "split": split_of(key),
                "scene": scene_message(scene.state),
                "combat": result.combat,
                "provenance": Provenance(kind="scenes", teacher=teacher.name, seed=row_seed),
            }
            report.rows.append(
                Pair(
                    id=f"scenes-{seed}-{i:04d}/narrative",
                    task="narrative",
                    instruction=narrative_instruction(),
                    input=result.info_str,
                    output=result.narrative,
                    **common,
                )
            )
            report.rows.append(
                Pair(
                    id=f"scenes-{seed}-{i:04d}/description",
                    task="description",
                    instruction=description_instruction(),
                    input=result.narrative,
                    output=result.description,
                    references=[result.description],
                    **common,
                )
            )
        if progress:
            progress(i + 1, n)
    return report


def _usable(captions: list[Caption], seed: int) -> Iterator[tuple[Caption, str]]:
    rng = random.Random(f"metabgm-reverse|{seed}")
    order = sorted(captions, key=lambda c: c.ytid)
    rng.shuffle(order)
    for caption in order:
        description = condense(read_music(caption), random.Random(f"{seed}|{caption.ytid}"))
        if description is not None:
            yield caption, description


def build_reverse(
    teacher: TextBackend, captions: list[Caption], n: int, seed: int, progress: Progress | None = None
) -> BuildReport:
    """Up to ``n`` captions -> a matched scene, its narrative by the teacher, and the caption
    condensed into a description: (Narrative -> Description) pairs."""
    report = BuildReport()
    usable = list(_usable(captions, seed))
    report.skipped = len(captions) - len(usable)
    chosen = usable[:n]
    grid = SceneGrid(seed, "reverse")
    template = prompt_template("reverse")
    for i, (caption, description) in enumerate(chosen):
        rng = random.Random(f"{seed}|match|{caption.ytid}")
        archetype = match(caption, rng)
        split = split_of(f"caption:{caption.ytid}")
        same_split = lambda cell, s=split: split_of(f"scene:{cell.key}") == s  # noqa: E731
        scene = grid.draw(archetype.want, same_split, unique=False)
        combat = in_combat(scene.state)
        characterized = characterize(scene_data(scene.state), combat)
        info = info_str(characterized)
        prompt = template.replace("{caption}", caption.caption).replace("{info_str}", info)
        row_seed = seed * 100_000 + i
        request = StageRequest(
            stage="narrative",
            messages=[ChatMessage("user", prompt)],
            characterized=characterized,
            combat=combat,
            seed=row_seed,
            max_new_tokens=NARRATIVE_TOKENS,
        )
        try:
            narrative = clean_text(teacher.generate(request))
            if not narrative:
                raise ValueError("no text")
        except Exception as exc:
            log.warning("teacher %s failed on caption %s (%s); left out", teacher.name, caption.ytid, exc)
            report.failed += 1
        else:
            report.rows.append(
                Pair(
                    id=f"reverse-{seed}-{caption.ytid}/description",
                    split=split,
                    task="description",
                    instruction=description_instruction(),
                    input=narrative,
                    output=description,
                    scene_id=cell_key(scene),
                    scene=scene_message(scene.state),
                    combat=combat,
                    references=caption.sentences() or [caption.caption],
                    provenance=Provenance(
                        kind="reverse",
                        teacher=teacher.name,
                        seed=row_seed,
                        caption_id=caption.ytid,
                        caption=caption.caption,
                        archetype=archetype.name,
                        licence=MUSICCAPS_LICENCE,
                    ),
                )
            )
        if progress:
            progress(i + 1, len(chosen))
    return report
