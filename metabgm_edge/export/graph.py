"""Small rewrites of the exported decoder graph before quantization (needs ``onnx``).

* :func:`last_token_logits`: the runtime samples from the last position only, so the LM head runs
  on that position alone. A prompt of 250 tokens no longer computes (and copies out) 250 rows of
  vocabulary logits: prefill gets about twice as fast on a CPU.
* :func:`untie_lm_head`: with tied embeddings the exporter feeds the LM head through a Transpose
  of the embedding table, which weight-only quantizers skip (not a constant). Materializing the
  transposed weight lets the LM head, a fifth of SmolLM2's weights, be quantized too.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def lm_head(model: onnx.ModelProto, output: str = "logits") -> onnx.NodeProto | None:
    node = _producers(model.graph).get(output)
    return node if node is not None and node.op_type == "MatMul" else None


def untie_lm_head(model: onnx.ModelProto, output: str = "logits") -> bool:
    """Replace ``Transpose(embedding)`` feeding the LM head by a transposed constant. True if done."""
    graph = model.graph
    head = lm_head(model, output)
    if head is None:
        return False
    initializers = {init.name: init for init in graph.initializer}
    if head.input[1] in initializers:
        return False
    transpose = _producers(graph).get(head.input[1])
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return False
    weight = numpy_helper.to_array(initializers[transpose.input[0]])
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    transposed = np.ascontiguousarray(weight.transpose(perm) if perm else weight.T)
    graph.initializer.append(numpy_helper.from_array(transposed, "lm_head.weight"))
    head.input[1] = "lm_head.weight"
    if not any(transpose.output[0] in node.input for node in graph.node):
        graph.node.remove(transpose)
    log.debug("untied the LM head from the embedding table (%s)", transposed.shape)
    return True


def last_token_logits(model: onnx.ModelProto, output: str = "logits") -> bool:
    """Slice the LM head's input to the last position; ``output`` becomes batch x 1 x vocab."""
    graph = model.graph
    head = lm_head(model, output)
    if head is None:
        log.warning("the logits do not come from a MatMul: keeping logits for every position")
        return False
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), "last_token/start"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "last_token/end"),
            numpy_helper.from_array(np.array([1], np.int64), "last_token/axis"),
        ]
    )
    sliced = f"{head.input[0]}/last_token"
    node = helper.make_node(
        "Slice",
        [head.input[0], "last_token/start", "last_token/end", "last_token/axis"],
        [sliced],
        name="LastTokenSlice",
    )
    graph.node.insert(list(graph.node).index(head), node)
    head.input[0] = sliced
    for value in graph.output:
        if value.name == output:
            dim = value.type.tensor_type.shape.dim[1]
            dim.ClearField("dim_param")
            dim.dim_value = 1
    return True


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save(model: onnx.ModelProto, path: str, data_file: str) -> None:
    """Save with all weights in one external file beside ``path`` (models past 2 GB need it)."""
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file,
        size_threshold=1024,
    )
