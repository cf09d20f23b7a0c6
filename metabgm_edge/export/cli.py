"""``metabgm-edge export``: make runtime bundles from models. Needs ``pip install 'metabgm-edge[export]'``.

Only click and the standard library are imported here; torch, transformers and optimum are
imported when an export runs, and their absence is reported with the pip command to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

QUANTS = ("int4", "int8", "fp16", "fp32")
TARGETS = ("cpu", "cuda", "tensorrt")


def _run(recipe_path: Path | None, force: bool, kind: str | None = None, **flags: Any) -> None:
    """Run the export a recipe (and flags) describe; ``kind`` is what the subcommand exports."""
    from metabgm_edge.errors import MetabgmError
    from metabgm_edge.export.recipe import Recipe, RecipeError, load_recipe, merge

    try:
        recipe = load_recipe(recipe_path) if recipe_path else Recipe(kind=kind or "llm")
        if kind is not None and recipe.kind != kind:
            raise RecipeError(
                f"{recipe_path} is a {recipe.kind} recipe: run `metabgm-edge export {recipe.kind}`"
            )
        recipe = merge(recipe, **flags)
        progress = lambda line: click.echo(line, err=True)  # noqa: E731
        if recipe.kind == "musicgen":
            from metabgm_edge.export.musicgen import export_musicgen

            export_musicgen(recipe, force=force, progress=progress)
        else:
            from metabgm_edge.export.llm import export_llm

            export_llm(recipe, force=force, progress=progress)
    except (RecipeError, MetabgmError) as exc:
        raise click.ClickException(str(exc)) from None
    except ModuleNotFoundError as exc:  # the packaged build leaves the export tools out
        raise click.ClickException(
            f"export needs the export extra ({exc.name} is missing): pip install 'metabgm-edge[export]' "
            "(the packaged build plays bundles but cannot make them)"
        ) from None
    except MemoryError:
        raise click.ClickException("the export ran out of memory; see the recipe for what it needs") from None


@click.group(invoke_without_command=True)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run the export a recipe describes (export/NAME.toml).",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.pass_context
def export(ctx: click.Context, recipe: Path | None, force: bool) -> None:
    """Make runtime bundles from models (needs the export extra).

    \b
    metabgm-edge export --recipe export/smollm2-135m-instruct.toml
    metabgm-edge export llm --model path/to/model.gguf --quant int4 --out engines/my-model
    metabgm-edge export musicgen --model path/to/musicgen-small --quant int8 --out engines/musicgen-small-int8
    """
    ctx.ensure_object(dict)
    ctx.obj["recipe"] = recipe
    ctx.obj["force"] = force
    if ctx.invoked_subcommand is None:
        if recipe is None:
            click.echo(ctx.get_help())
            return
        _run(recipe, force)


@export.command("llm")
@click.option("--model", help="HF model folder, .gguf file, or package:MODULE/FILE.")
@click.option("--lora", help="peft LoRA adapter folder to merge into the weights.")
@click.option("--quant", type=click.Choice(QUANTS), help="Weight precision (default int8).")
@click.option("--target", type=click.Choice(TARGETS), help="Where the bundle runs (default cpu).")
@click.option("--out", help="Bundle folder to write, e.g. engines/NAME.")
@click.option("--name", help="Bundle name (default: the --out folder's name).")
@click.option("--chat-template", type=click.Choice(["chatml", "llama2"]), help="Default: from the tokenizer.")
@click.option(
    "--load-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Weights while exporting."
)
@click.option("--context-length", type=click.IntRange(min=16), help="Prompt + answer tokens (KV buffer).")
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Start from a recipe; the flags given override it.",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.pass_context
def llm(
    ctx: click.Context,
    recipe_path: Path | None,
    force: bool,
    chat_template: str | None,
    **flags: Any,
) -> None:
    """Export a causal LM (HF folder or GGUF, optional LoRA) into an ONNX Runtime bundle."""
    obj = ctx.obj or {}
    _run(
        recipe_path or obj.get("recipe"),
        force or obj.get("force", False),
        "llm",
        chat_template=chat_template,
        **flags,
    )


@export.command("musicgen")
@click.option("--model", help="A transformers MusicGen folder (e.g. facebook/musicgen-small, downloaded).")
@click.option("--quant", type=click.Choice(QUANTS), help="Decoder weights: int8/int4/fp32 (CPU), fp16 (GPU).")
@click.option("--target", type=click.Choice(TARGETS), help="Where the bundle runs (default cpu).")
@click.option("--out", help="Bundle folder to write, e.g. engines/NAME.")
@click.option("--name", help="Bundle name (default: the --out folder's name).")
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Start from a recipe (export/musicgen-*.toml); the flags given override it.",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.pass_context
def musicgen(ctx: click.Context, recipe_path: Path | None, force: bool, **flags: Any) -> None:
    """Export MusicGen (text encoder, decoder with KV cache, EnCodec) into an ONNX Runtime bundle."""
    obj = ctx.obj or {}
    _run(recipe_path or obj.get("recipe"), force or obj.get("force", False), "musicgen", **flags)
