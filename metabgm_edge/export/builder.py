"""The fused decoder, built by onnxruntime-genai's model builder from a loaded transformers model.

The builder writes the graph the field runs LLMs with on ONNX Runtime: packed QKV projections,
GroupQueryAttention with the rotary embedding inside, SkipSimplifiedLayerNormalization,
MatMulNBits weights (4 or 8 bits; the embedding shared with the LM head through
GatherBlockQuantized when the model ties them), logits of the last position only, and a KV cache
that past and present share in place. SmolLM2-135M: about 350 nodes, against about 3,150 for the
same model exported by torch and optimized by onnxruntime.

The builder is pure Python (onnx-ir, onnxruntime's quantizer, torch, transformers) and is run in
this process on the model already loaded and merged here: its own loader would read the weights a
second time, in fp32 (a 7B model: 27 GB), where this export loads them once in the recipe's
``load_dtype``. Only its graph is kept; the bundle's tokenizer, chat template and manifest are
written by :mod:`metabgm_edge.export.llm`. Pinned to one version (``export`` extra), since its
Python entry points are not a stable API.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import shutil
from pathlib import Path
from typing import Any, Final

from metabgm_edge.export.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

BUILDER_EP: Final = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "NvTensorRtRtx"}
"""The builder's execution-provider flavour per target: TensorRT bundles get the graph built for
TensorRT-RTX (fp16, its layer-norm expansion), which the CUDA provider runs as well."""

GRAPH_FILES: Final = ("model.onnx", "model.onnx.data")


def _import_builder() -> tuple[Any, Any]:
    try:
        from onnxruntime_genai.models import builder

        # Importing it put its own folder on sys.path: its modules import each other by bare name.
        base = importlib.import_module("builders.base")
    except ImportError as exc:
        raise RecipeError(
            f"the fused decoder needs onnxruntime-genai's model builder ({exc}): "
            "pip install 'metabgm-edge[export]'"
        ) from None
    return builder, base


def build_decoder(model: Any, tokenizer: Any, recipe: Recipe, out: Path, work: Path) -> Path:
    """Write ``model.onnx`` + ``model.onnx.data`` for ``recipe``'s target and quantization into
    ``out``; the builder's own output and its log go to ``work``. Returns the graph's path."""
    builder, base = _import_builder()
    hf_dir = work / "hf"
    graph_dir = work / "graph"
    hf_dir.mkdir(parents=True, exist_ok=True)
    if not model.config.architectures:  # configs made from GGUF files name none; the builder needs it
        model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(hf_dir)  # the builder reads config and tokenizer, not the weights
    tokenizer.save_pretrained(hf_dir)
    options = ["prune_lm_head=true", "hf_token=false", f"block_size={recipe.block_size}"]
    if recipe.quant == "int8":
        options.append(
            "shared_embeddings=false"
        )  # its quantizer shares only 4-bit tables (see share_embedding)
    if recipe.target == "cpu" and recipe.quant in ("int4", "int8"):
        options.append("accuracy_level=4")  # int8 activations in MatMulNBits (what the CPU is fast at)
    log_file = work / "builder.log"
    quant_log = logging.getLogger("onnxruntime.quantization")
    level = quant_log.level
    quant_log.setLevel(logging.WARNING)  # one INFO line per weight otherwise
    original = base.Model.load_weights
    base.Model.load_weights = lambda self, _path: model  # the weights already loaded and merged
    try:
        with log_file.open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            args = (
                None,
                str(hf_dir),
                str(graph_dir),
                recipe.quant,
                BUILDER_EP[recipe.target],
                str(work / "cache"),
            )
            extra = builder.parse_extra_options(*args, options)
            builder.create_model(*args, **extra)
    except Exception as exc:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:] if log_file.exists() else []
        raise RecipeError(
            f"onnxruntime-genai's model builder failed for {type(model).__name__} ({recipe.quant}, "
            f"{recipe.target}): {exc}"
            + (f" (last lines of {log_file.name}: {' | '.join(tail)})" if tail else "")
        ) from exc
    finally:
        base.Model.load_weights = original
        quant_log.setLevel(level)
    out.mkdir(parents=True, exist_ok=True)
    for name in GRAPH_FILES:
        if not (graph_dir / name).is_file():
            raise RecipeError(f"onnxruntime-genai's model builder wrote no {name} (see {log_file})")
        shutil.move(str(graph_dir / name), out / name)
    if recipe.quant == "int8" and getattr(model.config, "tie_word_embeddings", False):
        share_embedding(out / GRAPH_FILES[0])
    return out / GRAPH_FILES[0]


def share_embedding(graph_file: Path) -> bool:
    """Read the token embedding out of the LM head's 8-bit weights (GatherBlockQuantized), as the
    builder itself does for 4-bit ones, and drop the float table: for a model that ties the two
    (SmolLM2) the int8 bundle then holds its largest matrix once, in 8 bits (SmolLM2: 267 -> 154 MB).
    True if done; False where the graph has no such pair."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(graph_file))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gather = next(
        (n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and "input_ids" in n.input),
        None,
    )
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output), None)
    if gather is None or head is None:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    table = numpy_helper.to_array(inits[gather.input[0]])
    if attrs.get("bits") != 8 or len(head.input) > 3 or table.shape != (attrs["N"], attrs["K"]):
        return False
    shape_name = "/model/embed_tokens/shape"
    graph.initializer.append(numpy_helper.from_array(np.array([attrs["N"], -1], np.int64), shape_name))
    reshaped = "/model/embed_tokens/Reshape/output_0"
    nodes = [
        helper.make_node(
            "Reshape", [head.input[1], shape_name], [reshaped], name="/model/embed_tokens/Reshape"
        ),
        helper.make_node(
            "GatherBlockQuantized",
            [reshaped, gather.input[1], head.input[2]],
            list(gather.output),
            name="/model/embed_tokens/GatherBlockQuantized",
            domain="com.microsoft",
            bits=8,
            block_size=attrs["block_size"],
            gather_axis=0,
            quantize_axis=1,
        ),
    ]
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    graph.initializer.remove(inits[gather.input[0]])
    data = graph_file.with_name(graph_file.name + ".data")
    data.unlink()
    onnx.save_model(
        model, str(graph_file), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )  # fmt: skip
    return True
