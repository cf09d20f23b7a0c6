"""Batched generation (what ``serve`` runs when several players' stages arrive together) gives
each request exactly what it gets alone: tokens, stop reasons, sampled or greedy."""

from __future__ import annotations

from pathlib import Path

import llm_fixtures
import pytest

from metabgm_edge.llm import LLM, GenerationConfig
from metabgm_edge.text import ChatMessage, StageRequest
from metabgm_edge.text.llm import LLMText

tiny_llama = llm_fixtures.tiny_llama
tiny_bundle = llm_fixtures.tiny_bundle
smollm2 = llm_fixtures.smollm2
smollm2_bundle = llm_fixtures.smollm2_bundle

PROMPTS = [
    "The rain falls on the forest at night",
    "Zombies",
    "A calm morning over the plains, the desert and the snowy mountains, with flutes and strings",
    "Drums build tension as",
    "The orchestra",
]


def alone(llm: LLM, prompts: list[str], configs: list[GenerationConfig]) -> list[tuple[list[int], str]]:
    return [
        (r.token_ids, r.stop_reason)
        for r in (llm.generate(p, c) for p, c in zip(prompts, configs, strict=True))
    ]


def together(llm: LLM, prompts: list[str], configs: list[GenerationConfig]) -> list[tuple[list[int], str]]:
    return [(r.token_ids, r.stop_reason) for r in llm.generate_batch(prompts, configs)]


@pytest.mark.parametrize("do_sample", [False, True])
def test_a_batch_gives_each_prompt_what_it_gets_alone(tiny_bundle: Path, do_sample: bool) -> None:
    llm = LLM.load(tiny_bundle)
    configs = [
        GenerationConfig(max_new_tokens=n, do_sample=do_sample, temperature=0.9, seed=seed)
        for n, seed in zip([24, 5, 31, 1, 17], [3, 1, 4, 1, 5], strict=True)
    ]
    expected = alone(llm, PROMPTS, configs)
    got = together(llm, PROMPTS, configs)
    assert got == expected
    assert [len(t) for t, _ in got] != [len(got[0][0])] * len(got)  # rows end at different steps
    assert together(llm, PROMPTS[::-1], configs[::-1]) == expected[::-1]  # the order does not matter
    assert together(llm, PROMPTS, configs) == expected  # a reused batch state starts clean


def test_a_row_that_stops_early_leaves_the_others_alone(tiny_bundle: Path) -> None:
    llm = LLM.load(tiny_bundle)
    first = llm.generate(PROMPTS[0], GenerationConfig(max_new_tokens=12, do_sample=False))
    text = llm.decode(first.token_ids[:4])
    stop = text.split()[-1] if text.split() else text
    configs = [
        GenerationConfig(max_new_tokens=12, do_sample=False, stop_strings=[stop]),
        GenerationConfig(max_new_tokens=30, do_sample=False),
    ]
    prompts = PROMPTS[:2]
    expected = alone(llm, prompts, configs)
    assert expected[0][1] == "stop_string"
    assert together(llm, prompts, configs) == expected


def test_llm_text_batches_requests(tiny_bundle: Path) -> None:
    backend = LLMText.load(tiny_bundle)
    assert backend.batches
    requests = [
        StageRequest(
            stage="narrative",
            messages=[ChatMessage("user", p)],
            characterized={},
            combat=False,
            max_new_tokens=10 + i,
            seed=i,
        )
        for i, p in enumerate(PROMPTS)
    ]
    assert backend.generate_batch(requests) == [backend.generate(r) for r in requests]
    assert backend.generate_batch([]) == []


@pytest.mark.slow
def test_smollm2_batch_equals_one_by_one(smollm2_bundle) -> None:  # type: ignore[no-untyped-def]
    llm = LLM.load(smollm2_bundle("int8"))
    prompts = [llm.render_chat([ChatMessage("user", p)]) for p in PROMPTS[:3]]
    configs = [GenerationConfig(max_new_tokens=24, seed=i) for i in range(3)]  # the bundle's sampling
    assert together(llm, prompts, configs) == alone(llm, prompts, configs)
