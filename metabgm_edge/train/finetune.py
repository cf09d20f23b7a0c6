"""LoRA fine-tuning of a chat model on the paired data (the paper's Section III-B). Needs the export
extra (torch, transformers, peft); never imported by the runtime.

Each row's user message is exactly what the runtime sends (:meth:`Pair.prompt`), rendered with
the chat template the runtime uses for the model (:func:`metabgm_edge.llm.chat.render`, the
template and default system message detected as ``export llm`` detects them); the loss is on the
answer and its end-of-turn marker only. The adapter is a plain peft folder
(``adapter_config.json`` + ``adapter_model.safetensors``) that ``export llm --lora`` merges.

Reproducible: the seed fixes the LoRA initialisation, the data order and dropout; the command,
the seed, the data files' and the base model's SHA-256 and the package versions are written to
``training.json`` beside the adapter, the loss of every step to ``loss.jsonl``. ``--resume``
continues from the newest checkpoint (adapter, optimizer, schedule, random state, step) as if
the run had not stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from metabgm_edge.dataset.pairs import Pair, read_pairs
from metabgm_edge.errors import MetabgmError

log = logging.getLogger(__name__)

DEFAULT_TARGETS: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINING_FILE: Final = "training.json"
LOSS_FILE: Final = "loss.jsonl"
CHECKPOINTS: Final = "checkpoints"
KEEP_CHECKPOINTS: Final = 2


class FinetuneError(MetabgmError):
    """Fine-tuning cannot start or continue; the message says what to change."""


@dataclass
class FinetuneConfig:
    model: str
    data: list[str]
    out: str
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    layers: list[int] | None = None
    """Only these decoder layers get adapters (None: all). Upper layers only is cheaper on a CPU: the
    backward pass stops below the lowest adapted layer."""
    epochs: float = 1.0
    lr: float = 3e-4
    max_steps: int | None = None
    batch_size: int = 8
    """Rows per optimizer step."""
    micro_batch: int = 4
    """Rows per forward pass (memory); batch_size must be a multiple."""
    max_length: int = 512
    warmup: float = 0.05
    """Share of the steps with a linear warm-up; then linear decay to 0."""
    weight_decay: float = 0.0
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["narrative", "description"])
    split: str = "train"
    save_every: int = 50
    eval_rows: int = 48
    """Validation rows whose loss is measured before and after training (0: none)."""
    device: str = "auto"
    threads: int | None = None


Progress = Callable[[str], None]


def _heavy() -> tuple[Any, Any, Any]:
    try:
        import peft
        import torch
        import transformers
    except ImportError as exc:
        raise FinetuneError(
            f"finetune needs the export extra ({exc.name} is missing): pip install 'metabgm-edge[export]'"
        ) from None
    return torch, transformers, peft


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]


def load_rows(paths: Sequence[str], split: str, tasks: Sequence[str]) -> list[Pair]:
    rows = [r for path in paths for r in read_pairs(path) if r.split == split and r.task in tasks]
    if not rows:
        raise FinetuneError(f"no {'/'.join(tasks)} rows in the {split} split of {', '.join(paths)}")
    return rows


class Encoder:
    """Rows -> token ids with the runtime's chat template; labels mask the prompt."""

    def __init__(self, tokenizer: Any) -> None:
        from metabgm_edge.export.llm import detect_chat
        from metabgm_edge.export.recipe import Recipe
        from metabgm_edge.llm.chat import end_marker

        self.tokenizer = tokenizer
        self.chat = detect_chat(tokenizer, Recipe())
        self.end = end_marker(self.chat.template, self.chat.eos_token)

    def prompt_text(self, user: str) -> str:
        from metabgm_edge.llm.chat import render
        from metabgm_edge.text import ChatMessage

        return render(
            self.chat.template,
            [ChatMessage("user", user)],
            bos_token=self.chat.bos_token,
            eos_token=self.chat.eos_token,
            default_system=self.chat.default_system,
        )

    def encode(self, row: Pair) -> Example:
        prompt = self.tokenizer(self.prompt_text(row.prompt()), add_special_tokens=False)["input_ids"]
        answer = self.tokenizer(row.output + self.end, add_special_tokens=False)["input_ids"]
        return Example(row.id, list(prompt) + list(answer), [-100] * len(prompt) + list(answer))


def batches(examples: Sequence[Example], micro: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled micro-batches of similar lengths (less padding on a CPU)."""
    order = list(examples)
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), micro * 16):
        chunk = sorted(order[start : start + micro * 16], key=lambda e: len(e.input_ids))
        out.extend(chunk[i : i + micro] for i in range(0, len(chunk), micro))
    rng.shuffle(out)
    return out


def collate(torch: Any, batch: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Left-padded tensors, so every answer ends at the last position (see :func:`answer_loss`)."""
    width = max(len(e.input_ids) for e in batch)
    ids, labels, mask, positions = [], [], [], []
    for e in batch:
        gap = width - len(e.input_ids)
        ids.append([pad_id] * gap + e.input_ids)
        labels.append([-100] * gap + e.labels)
        mask.append([0] * gap + [1] * len(e.input_ids))
        positions.append([0] * gap + list(range(len(e.input_ids))))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
        "position_ids": torch.tensor(positions),
    }


def answer_loss(torch: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Mean cross-entropy over the answer tokens of a batch, and their count.

    Answers end at the last position (left padding), so only the last ``keep`` positions go
    through the LM head (``logits_to_keep``): the head's 49k-word vocabulary over the prompt's
    positions would cost as much as a fifth of the model and teach nothing.
    """
    labels = batch["labels"]
    answer = int((labels != -100).sum(dim=1).max())
    keep = min(answer + 1, labels.shape[1])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
    )
    logits = out.logits[:, :-1, :]
    target = labels[:, labels.shape[1] - keep + 1 :]
    tokens = int((target != -100).sum())
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100
    )
    return loss, tokens


# -- training -----------------------------------------------------------------------------------


def _device(torch: Any, wanted: str) -> str:
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("--device cuda: torch sees no CUDA GPU here; use --device cpu or auto")
    return wanted


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _mean_loss(
    torch: Any, model: Any, examples: Sequence[Example], micro: int, pad: int, device: str
) -> float:
    """Token-weighted loss on the answers of ``examples``."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro):
            batch = collate(torch, examples[start : start + micro], pad)
            loss, tokens = answer_loss(torch, model, {k: v.to(device) for k, v in batch.items()})
            total += loss.item() * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


@dataclass
class FinetuneResult:
    adapter: Path
    steps: int
    train_loss_first: float | None
    train_loss_last: float | None
    validation_loss_before: float | None
    validation_loss_after: float | None
    seconds: float


def finetune(
    config: FinetuneConfig, *, resume: bool = False, command: str = "", progress: Progress | None = None
) -> FinetuneResult:
    """Train a LoRA adapter per ``config``; the adapter is written to ``config.out``."""
    from metabgm_edge.export.llm import load_model
    from metabgm_edge.export.recipe import RecipeError, resolve_model

    say = progress or (lambda line: print(line, file=sys.stderr))
    torch, _, peft = _heavy()
    if config.batch_size % config.micro_batch:
        raise FinetuneError(
            f"--batch-size {config.batch_size} must be a multiple of --micro-batch {config.micro_batch}"
        )
    out = Path(config.out)
    ckpt_root = out / CHECKPOINTS
    if out.exists() and not resume and any(out.iterdir()):
        raise FinetuneError(
            f"{out} exists and is not empty: pass --resume to continue it, or choose another --out"
        )
    try:
        source = resolve_model(config.model)
    except RecipeError as exc:
        raise FinetuneError(str(exc)) from None

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(torch, config.device)
    t_start = time.perf_counter()

    say(f"loading {source.name} ...")
    model, tokenizer = load_model(source)
    encoder = Encoder(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    rows = load_rows(config.data, config.split, config.tasks)
    examples, dropped = [], 0
    for row in rows:
        example = encoder.encode(row)
        if len(example.input_ids) > config.max_length:
            dropped += 1
            continue
        examples.append(example)
    if dropped:
        say(f"left out {dropped} rows longer than --max-length {config.max_length} tokens")
    if not examples:
        raise FinetuneError("no rows fit --max-length")
    validation: list[Example] = []
    if config.eval_rows:
        try:
            val_rows = load_rows(config.data, "validation", config.tasks)
        except FinetuneError:
            val_rows = []
        picked = random.Random(f"{config.seed}|validation").sample(
            val_rows, min(config.eval_rows, len(val_rows))
        )
        validation = [e for e in (encoder.encode(r) for r in picked) if len(e.input_ids) <= config.max_length]

    lora = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        layers_to_transform=list(config.layers) if config.layers else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = peft.get_peft_model(model, lora)
    except ValueError as exc:  # a target module the model does not have
        raise FinetuneError(f"--targets {','.join(config.targets)}: {exc}") from None
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accum = config.batch_size // config.micro_batch
    steps_per_epoch = max(1, math.ceil(len(examples) / config.batch_size))
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(config.warmup * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, warmup))

    step, first_loss, val_before = 0, None, None
    if resume:
        step, first_loss, val_before = _restore(torch, peft, model, optimizer, scheduler, ckpt_root, say)
    out.mkdir(parents=True, exist_ok=True)
    say(
        f"{len(examples)} rows ({', '.join(config.tasks)}), {trainable / 1e6:.2f} M trainable parameters "
        f"(LoRA r={config.r}, alpha={config.alpha}, {','.join(config.targets)}), {total} steps of "
        f"{config.batch_size} rows, lr {config.lr:g}, seed {config.seed}, on {device}"
    )
    if validation and step == 0:
        val_before = _mean_loss(torch, model, validation, config.micro_batch, pad, device)
        say(f"validation loss before: {val_before:.4f} ({len(validation)} rows)")

    # The data order is a function of the seed and the epoch alone, so a resumed run sees the
    # same batches as one that never stopped.
    def epoch_batches(epoch: int) -> list[list[Example]]:
        return batches(examples, config.micro_batch, random.Random(f"{config.seed}|epoch|{epoch}"))

    cache: dict[int, list[list[Example]]] = {}
    micro_per_epoch = len(epoch_batches(0))
    model.train()
    loss_log = (out / LOSS_FILE).open("a", encoding="utf-8")
    t_loop = time.perf_counter()
    done_here = 0
    last_loss = None
    avg = None
    try:
        while step < total:
            losses = []
            for k in range(accum):
                epoch, pos = divmod(step * accum + k, micro_per_epoch)
                if epoch not in cache:
                    cache.clear()
                    cache[epoch] = epoch_batches(epoch)
                batch = collate(torch, cache[epoch][pos], pad)
                loss, _ = answer_loss(torch, model, {key: value.to(device) for key, value in batch.items()})
                (loss / accum).backward()
                losses.append(loss.item())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            done_here += 1
            last_loss = sum(losses) / len(losses)
            first_loss = last_loss if first_loss is None else first_loss
            avg = last_loss if avg is None else 0.9 * avg + 0.1 * last_loss
            elapsed = time.perf_counter() - t_loop
            per_step = elapsed / done_here
            loss_log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(last_loss, 5),
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": round(time.perf_counter() - t_start, 1),
                    }
                )
                + "\n"
            )
            loss_log.flush()
            _bar(say, step, total, last_loss, avg, per_step)
            if step % config.save_every == 0 and step < total:
                _checkpoint(torch, model, optimizer, scheduler, ckpt_root, step, first_loss, val_before)
    except KeyboardInterrupt:
        if done_here:
            _checkpoint(torch, model, optimizer, scheduler, ckpt_root, step, first_loss, val_before)
            say(f"\nstopped at step {step}; continue with --resume")
        raise
    finally:
        loss_log.close()
    val_after = None
    if validation:
        val_after = _mean_loss(torch, model, validation, config.micro_batch, pad, device)
        say(f"validation loss after: {val_after:.4f}" + (f" (before {val_before:.4f})" if val_before else ""))
    model.save_pretrained(str(out))
    finish_adapter(out, config.model, command)
    _write_training(
        out,
        config,
        command,
        source,
        step,
        first_loss,
        last_loss,
        val_before,
        val_after,
        trainable,
        time.perf_counter() - t_start,
        device,
        torch,
    )
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return FinetuneResult(
        out, step, first_loss, last_loss, val_before, val_after, time.perf_counter() - t_start
    )


def finish_adapter(out: Path, model_spec: str, command: str) -> None:
    """Make the saved peft folder what is shipped: weights in float16 (half the size; merged into
    fp32 weights the difference is below float16's resolution of the LoRA product; checkpoints stay
    float32 for exact resumes), the base model named by its spec rather than this machine's path,
    and a README with the command instead of peft's empty model card."""
    import torch
    from safetensors.torch import load_file, save_file

    path = out / "adapter_model.safetensors"
    weights = load_file(str(path))
    half = {k: v.to(torch.float16).contiguous() for k, v in weights.items()}
    save_file(half, str(path), metadata={"format": "pt"})
    path.chmod(0o644)
    config_path = out / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = model_spec
    config_path.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# LoRA adapter for {model_spec}\n\n"
        "Made by `metabgm-edge finetune` (training.json has the configuration, the seed, the data and "
        "base model checksums and the losses; loss.jsonl the loss of every step):\n\n"
        f"```sh\n{command}\n```\n\n"
        f"Merge and export: `metabgm-edge export llm --model {model_spec} --lora {out} "
        "--out engines/NAME`.\n",
        encoding="utf-8",
    )


def _bar(say: Progress, step: int, total: int, loss: float, avg: float, per_step: float) -> None:
    """One progress line: redrawn in place on a terminal, every 2 % of the run in a log."""
    width = 24
    filled = int(width * step / total)
    eta = per_step * (total - step)
    line = (
        f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{total} loss {loss:.4f} (avg {avg:.4f}) "
        f"{per_step:.1f} s/step ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
    )
    if sys.stderr.isatty():
        print("\r" + line, end="" if step < total else "\n", file=sys.stderr, flush=True)
    elif step == total or step % max(1, total // 50) == 0:
        say(line)


def _checkpoint(
    torch: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    root: Path,
    step: int,
    first: float | None,
    val_before: float | None,
) -> None:
    folder = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    torch.save(
        {
            "step": step,
            "first_loss": first,
            "validation_loss_before": val_before,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        },
        tmp / "trainer_state.pt",
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(
    torch: Any, peft: Any, model: Any, optimizer: Any, scheduler: Any, root: Path, say: Progress
) -> tuple[int, float | None, float | None]:
    found = sorted(root.glob("step-*"))
    if not found:
        raise FinetuneError(f"--resume: no checkpoint in {root}")
    latest = found[-1]
    from safetensors.torch import load_file

    weights = load_file(str(latest / "adapter_model.safetensors"))
    peft.set_peft_model_state_dict(model, weights)
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    say(f"resuming from {latest} (step {state['step']})")
    return int(state["step"]), state.get("first_loss"), state.get("validation_loss_before")


def _write_training(
    out: Path,
    config: FinetuneConfig,
    command: str,
    source: Path,
    steps: int,
    first: float | None,
    last: float | None,
    val_before: float | None,
    val_after: float | None,
    trainable: int,
    seconds: float,
    device: str,
    torch: Any,
) -> None:
    from importlib import metadata

    versions = {}
    for dist in ("metabgm-edge", "torch", "transformers", "peft"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info = {
        "command": command,
        "config": asdict(config),
        "base_model": {
            "spec": config.model,
            "file": source.name,
            "sha256": sha256_file(source) if source.is_file() else None,
        },
        "data": [{"path": p, "sha256": sha256_file(Path(p))} for p in config.data],
        "steps": steps,
        "trainable_parameters": trainable,
        "train_loss_first_step": first,
        "train_loss_last_step": last,
        "validation_loss_before": val_before,
        "validation_loss_after": val_after,
        "seconds": round(seconds, 1),
        "device": device,
        "threads": torch.get_num_threads(),
        "versions": versions,
    }
    (out / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
