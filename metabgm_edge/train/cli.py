"""``metabgm-edge finetune``: a LoRA adapter from paired data. Only click is imported here; torch,
transformers and peft when a run starts (the export extra)."""

from __future__ import annotations

import shlex
import sys

import click

from metabgm_edge.train.finetune import DEFAULT_TARGETS


@click.command()
@click.option("--model", required=True, help="Base model: HF folder, .gguf file, or package:MODULE/FILE.")
@click.option(
    "--data",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Pairs file from 'metabgm-edge dataset' (repeat for several); its train split is used.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Adapter folder to write.")
@click.option("--r", "rank", default=8, show_default=True, type=click.IntRange(1, 256), help="LoRA rank.")
@click.option("--alpha", default=16, show_default=True, type=click.IntRange(1, 1024), help="LoRA alpha.")
@click.option("--dropout", default=0.05, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="LoRA dropout.")  # fmt: skip
@click.option(
    "--targets",
    default=",".join(DEFAULT_TARGETS),
    show_default=True,
    help="Comma-separated module names to adapt.",
)
@click.option("--layers", help="Only these decoder layers, e.g. 15-29 (cheaper on a CPU) [all].")
@click.option("--epochs", default=1.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Passes over the training pairs (fractions allowed).")  # fmt: skip
@click.option("--lr", default=3e-4, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Learning rate (AdamW).")  # fmt: skip
@click.option(
    "--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps (overrides --epochs)."
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Rows per step.")
@click.option(
    "--micro-batch", default=4, show_default=True, type=click.IntRange(min=1), help="Rows per pass."
)
@click.option(
    "--max-length", default=512, show_default=True, type=click.IntRange(min=16), help="Tokens per row."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the LoRA init, data order, dropout.")
@click.option(
    "--tasks", default="narrative,description", show_default=True, help="Which pairs to learn from."
)
@click.option(
    "--save-every", default=50, show_default=True, type=click.IntRange(min=1), help="Checkpoint period."
)
@click.option(
    "--eval-rows",
    default=48,
    show_default=True,
    type=click.IntRange(min=0),
    help="Validation rows whose loss is measured before and after (0: none).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train: auto takes CUDA when torch sees a GPU.")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads [torch's default].")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
def finetune(
    model: str,
    data: tuple[str, ...],
    out: str,
    rank: int,
    alpha: int,
    dropout: float,
    targets: str,
    layers: str | None,
    epochs: float,
    lr: float,
    max_steps: int | None,
    batch_size: int,
    micro_batch: int,
    max_length: int,
    seed: int,
    tasks: str,
    save_every: int,
    eval_rows: int,
    device: str,
    threads: int | None,
    resume: bool,
) -> None:
    """Fine-tune a chat model with LoRA on paired data (needs the export extra).

    The adapter (OUT/adapter_config.json, adapter_model.safetensors) feeds
    'metabgm-edge export llm --lora OUT' as it is; OUT/training.json records the command, seed,
    data and model checksums; OUT/loss.jsonl the loss of every step.
    """
    from metabgm_edge.errors import MetabgmError
    from metabgm_edge.train.finetune import FinetuneConfig
    from metabgm_edge.train.finetune import finetune as run_finetune

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    if not task_list or set(task_list) - {"narrative", "description"}:
        raise click.BadParameter("use narrative, description or both", param_hint="--tasks")
    layer_list = None
    if layers:
        try:
            low, _, high = layers.partition("-")
            layer_list = list(range(int(low), int(high or low) + 1))
        except ValueError:
            raise click.BadParameter("use FROM-TO, e.g. 15-29", param_hint="--layers") from None
        if not layer_list or layer_list[0] < 0:
            raise click.BadParameter("use FROM-TO with 0 <= FROM <= TO", param_hint="--layers")
    config = FinetuneConfig(
        model=model,
        data=list(data),
        out=out,
        r=rank,
        alpha=alpha,
        dropout=dropout,
        targets=[t.strip() for t in targets.split(",") if t.strip()],
        layers=layer_list,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        batch_size=batch_size,
        micro_batch=micro_batch,
        max_length=max_length,
        seed=seed,
        tasks=task_list,
        save_every=save_every,
        eval_rows=eval_rows,
        device=device,
        threads=threads,
    )
    args = sys.argv[sys.argv.index("finetune") + 1 :] if "finetune" in sys.argv else []
    command = "metabgm-edge finetune " + " ".join(shlex.quote(a) for a in args)
    try:
        result = run_finetune(
            config, resume=resume, command=command, progress=lambda s: click.echo(s, err=True)
        )
    except MetabgmError as exc:
        raise click.ClickException(str(exc)) from None
    losses = ""
    if result.train_loss_first is not None and result.train_loss_last is not None:
        losses = f"; train loss {result.train_loss_first:.3f} -> {result.train_loss_last:.3f}"
    if result.validation_loss_before is not None and result.validation_loss_after is not None:
        losses += (
            f"; validation loss {result.validation_loss_before:.3f} -> {result.validation_loss_after:.3f}"
        )
    click.echo(f"wrote adapter {result.adapter} in {result.steps} steps, {result.seconds:.0f} s{losses}")
