"""Where Q/DQ goes so that TensorRT fuses the INT8 graph: the rules NVIDIA's own quantizer applies.

TensorRT builds an explicitly quantized network by fusing each Q/DQ pair into the layers around it,
so the placement decides which fusions happen. Sources: the TensorRT Developer Guide, "Explicit
Quantization" chapter, section "Q/DQ Layer-Placement Recommendations"
(docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html),
and NVIDIA Model Optimizer's ONNX quantizer (github.com/NVIDIA/Model-Optimizer,
`modelopt/onnx/quantization/`), which implements those recommendations as graph rules. Rule by rule
(guide recommendation; ModelOpt file and function as in nvidia-modelopt 0.47.0, the version measured
against; later sources split `graph_utils.py` into `qdq_graph.py`, `graph_selection.py` and
`graph_indexing.py`, with the same function names):

* weighted ops: Conv/ConvTranspose inputs quantized, weights per channel (guide: quantize all inputs of
  weighted operations; `int8.py`, `quantize_static(per_channel=True)`);
* convolution outputs stay float, so conv + bias + ReLU fuse (guide: by default do not quantize the outputs
  of weighted operations; `partitioning.py`, BatchNormalization/ReLU join the conv's partition);
* residual Add: only the residual input is quantized, the input produced by a convolution's fused
  epilogue stays float (guide: quantize the residual input of a skip connection, TensorRT fuses the
  element-wise addition into the preceding weighted layer; `graph_utils.py`, `build_non_residual_input_map`
  and `remove_partial_input_qdq`);
* the node that writes a graph output stays float unless it is a Conv/Gemm/MatMul (`partitioning.py`,
  `get_skipped_output_layers`);
* Convs with fewer than 16 input or output channels stay float unless an int8 kernel fits them
  (`graph_utils.py`, `find_nodes_from_convs_to_exclude`; no compact FCN has such a conv);
* Adds with a constant operand (edgeseg's folded normalisation) stay float (`partitioning.py`,
  `find_quantizable_nodes`: a pointwise op with a constant input).

Residual Add, as ModelOpt decides it: an input whose producer is a convolution's fused epilogue
(Conv/ConvTranspose, then optionally bias/scale constants, BatchNormalization, ReLU, with copy ops in
between) is a "backbone" input. With one backbone input, that input is fused (unless the other input
branches off that very conv); with two, the one on the longer path back to the two inputs' lowest common
ancestor is the fused (non-residual) one: in fcn-*'s decoder that is the upsampling ConvTranspose, and the
projected encoder skip (a 1x1 Conv) is the quantized residual. Dilated convolutions are Conv nodes with
`dilations` and follow the same rules.

Output layer, measured against Model Optimizer 0.47 on fcn-medium and fcn-context exports
(`benchmarks/RESULTS.md`): only the node that writes the graph output counts. fcn-*'s full-resolution
ConvTranspose stays float where it writes the logits (an input size that is a multiple of 32); behind the
crop's Slice (e.g. the shipped 360x480) or the label ArgMax it is quantized, as ModelOpt quantizes it.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import onnx

from .trt_conformance import QDQ_OPS, Violation, bundle_onnx_files

CONVS = ("Conv", "ConvTranspose")
#: Ops that only move, select or reinterpret values: ModelOpt's copy ops (`op_types.get_copy_ops`).
COPY_OPS = frozenset(("Flatten", "Transpose", "Concat", "Split", "Squeeze", "Unsqueeze", "Expand",
                      "Reshape", "Tile", "Gather", "Slice", "Identity"))
#: A convolution's fused epilogue, in order (each optional), as ModelOpt's `get_fusible_backbone` matches it.
EPILOGUE = ("Relu", "BatchNormalization", "BiasAdd", "ConstMul")
#: Ops ModelOpt quantizes as the output layer (others that write the graph output stay float).
QUANTIZED_OUTPUT_OPS = ("Conv", "Gemm", "MatMul")
MIN_CHANNELS = 16


class Net:
    """Producers and constants of a float graph (a Q/DQ graph: through `float_view` first)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consts = {i.name for i in graph.initializer} | {
            n.output[0] for n in graph.node if n.op_type == "Constant"}
        self.producer = {o: n for n in graph.node for o in n.output}

    def variable_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.consts]

    def parents(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [self.producer[i] for i in self.variable_inputs(node) if i in self.producer]

    def backbone(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The Conv/ConvTranspose whose fused epilogue ends at `node`, if any."""
        stage = 0
        current: onnx.NodeProto | None = node
        while current is not None:
            kind = self._kind(current)
            if kind in CONVS:
                return current
            if kind not in COPY_OPS:
                if kind not in EPILOGUE[stage:]:
                    return None
                stage = EPILOGUE.index(kind) + 1
            parents = self.parents(current)
            current = parents[0] if len(parents) == 1 else None
        return None

    def _kind(self, node: onnx.NodeProto) -> str:
        if node.op_type in ("Add", "Mul") and len(self.variable_inputs(node)) < len(node.input):
            return "BiasAdd" if node.op_type == "Add" else "ConstMul"
        return node.op_type

    def ancestors(self, node: onnx.NodeProto) -> dict[str, int]:
        """Node name -> shortest distance (in nodes) back from `node` (itself at 0)."""
        found = {node.name: 0}
        queue = deque([node])
        while queue:
            current = queue.popleft()
            for parent in self.parents(current):
                if parent.name not in found:
                    found[parent.name] = found[current.name] + 1
                    queue.append(parent)
        return found


def float_view(graph: onnx.GraphProto) -> onnx.GraphProto:
    """A copy of `graph` without its Q/DQ nodes: each DequantizeLinear output replaced by what was quantized."""
    view = onnx.GraphProto()
    view.CopyFrom(graph)
    producer = {o: n for n in graph.node for o in n.output}
    source = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            source[node.output[0]] = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else node.input[0]
    keep = [n for n in view.node if n.op_type not in QDQ_OPS]
    for node in keep:
        node.input[:] = [source.get(name, name) for name in node.input]
    del view.node[:]
    view.node.extend(keep)
    return view


def fused_add_inputs(graph: onnx.GraphProto) -> dict[str, str]:
    """Add node name -> the input TensorRT fuses into its producing convolution (to be left unquantized)."""
    net = Net(graph)
    fused = {}
    for node in graph.node:
        inputs = net.variable_inputs(node)
        if node.op_type != "Add" or len(node.input) != 2 or len(inputs) != 2 or not all(
                i in net.producer for i in inputs):
            continue
        producers = [net.producer[i] for i in inputs]
        backbones = [net.backbone(p) for p in producers]
        distances = [net.ancestors(p) for p in producers]
        common = set(distances[0]) & set(distances[1])
        lca = min(common, key=distances[0].__getitem__) if common else None
        if backbones[0] is not None and backbones[1] is not None:
            if backbones[0].name == backbones[1].name:
                continue
            index = 0 if lca is not None and distances[0][lca] > distances[1][lca] else 1
        elif backbones[0] is not None or backbones[1] is not None:
            index = 0 if backbones[0] is not None else 1
            if lca == backbones[index].name:  # the other input branches off this conv: not a residual
                continue
        else:
            continue
        fused[node.name] = inputs[index]
    return fused


def float_output_layers(graph: onnx.GraphProto) -> list[str]:
    """Nodes writing a graph output that ModelOpt leaves float: all but Conv/Gemm/MatMul."""
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node
            if n.op_type not in QUANTIZED_OUTPUT_OPS and any(o in outputs for o in n.output)]


def small_channel_convs(graph: onnx.GraphProto) -> list[str]:
    """Convs without an int8 kernel ModelOpt trusts: fewer than 16 channels in or out, unless (plain conv)
    one side is a multiple of 8, the other side >= 16 or the input is the graph input, and the kernel is
    square; or (grouped conv) output channels a multiple of 8 and kernel >= 3."""
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    found = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        out_c, in_c, *kernel = weights[node.input[1]]
        if out_c >= MIN_CHANNELS and in_c >= MIN_CHANNELS:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        plain = (group == 1 and (out_c % 8 == 0 or in_c % 8 == 0) and len(set(kernel)) == 1
                 and (node.input[0] in graph_inputs or max(out_c, in_c) >= MIN_CHANNELS))
        grouped = group > 1 and out_c % 8 == 0 and all(k >= 3 for k in kernel)
        if not (plain or grouped):
            found.append(node.name)
    return found


def constant_adds(graph: onnx.GraphProto) -> list[str]:
    """Add nodes with a constant operand: normalisation (or an unfolded bias), not a skip connection."""
    net = Net(graph)
    return [n.name for n in graph.node if n.op_type == "Add" and len(net.variable_inputs(n)) < len(n.input)]


def float_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes of a float graph whose inputs stay unquantized: output layer, small-channel convs, constant Adds."""
    return [*float_output_layers(graph), *small_channel_convs(graph), *constant_adds(graph)]


def remove_input_qdq(graph: onnx.GraphProto, fused: dict[str, str]) -> int:
    """Feed each fused Add input straight from its float tensor (as ModelOpt's `remove_partial_input_qdq`),
    then drop the Q/DQ nodes and constants nothing reads any more. Returns the number of inputs rewired."""
    source = _dq_sources(graph)
    rewired = 0
    for node in graph.node:
        tensor = fused.get(node.name)
        for index, name in enumerate(node.input):
            if tensor is not None and source.get(name) == tensor:
                node.input[index] = tensor
                rewired += 1
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return rewired


def _dq_sources(graph: onnx.GraphProto) -> dict[str, str]:
    """DequantizeLinear output -> the float tensor its QuantizeLinear quantized (activations only)."""
    producer = {o: n for n in graph.node for o in n.output}
    found = {}
    for node in graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            found[node.output[0]] = q.input[0]
    return found


def quantized_inputs(graph: onnx.GraphProto) -> dict[str, tuple[bool, ...]]:
    """Per node (Q/DQ nodes aside): which inputs arrive through a DequantizeLinear."""
    producer = {o: n for n in graph.node for o in n.output}
    return {n.name: tuple(name in producer and producer[name].op_type == "DequantizeLinear" for name in n.input)
            for n in graph.node if n.op_type not in QDQ_OPS}


def summary(model: onnx.ModelProto | str | os.PathLike[str]) -> dict:
    """Q/DQ pair count, quantized and float convolutions, and how the skip Adds' inputs are quantized."""
    graph = _load(model).graph
    placed = quantized_inputs(graph)
    consts = {i.name for i in graph.initializer}
    convs = [n.name for n in graph.node if n.op_type in CONVS]
    adds = [placed[n.name] for n in graph.node if n.op_type == "Add" and not any(i in consts for i in n.input)]
    return {
        "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in graph.node),
        "quantized_convs": sum(any(placed[c]) for c in convs),
        "float_convs": sorted(c for c in convs if not any(placed[c])),
        "skip_adds": {"one_input_quantized": sum(sum(a) == 1 for a in adds),
                      "both_inputs_quantized": sum(all(a) for a in adds),
                      "float": sum(not any(a) for a in adds)},
    }


def placement_warnings(model: onnx.ModelProto | str | os.PathLike[str]) -> list[Violation]:
    """Q/DQ placements that keep TensorRT from fusing: each names the node and the rule (warnings, not errors)."""
    graph = _load(model).graph
    view = float_view(graph)
    net = Net(view)
    fused = fused_add_inputs(view)
    quantized = _dq_sources(graph)
    found = []
    for node in graph.node:
        tensor = fused.get(node.name)
        if tensor is not None and any(quantized.get(name) == tensor for name in node.input):
            conv = net.backbone(net.producer[tensor])
            found.append(Violation(node.name, "qdq-residual-add",
                                   f"input {tensor} from {conv.op_type} {conv.name} is quantized, so TensorRT "
                                   "cannot fuse this Add into that convolution; quantize only the other input"))
        if node.op_type in ("Relu", "BatchNormalization"):
            for name in node.input[:1]:
                producer = net.producer.get(quantized.get(name, ""))
                if producer is not None and producer.op_type in CONVS:
                    found.append(Violation(node.name, "qdq-conv-output",
                                           f"Q/DQ between {producer.op_type} {producer.name} and this "
                                           f"{node.op_type} keeps TensorRT from fusing them; quantize the "
                                           "next layer's input instead"))
    return found


def bundle_placement_warnings(bundle_dir: str | os.PathLike[str]) -> list[Violation]:
    """`placement_warnings` of every Q/DQ ONNX artifact of a bundle, node names prefixed with the file name."""
    root = Path(bundle_dir)
    return [Violation(f"{name}:{w.node}", w.rule, w.detail)
            for name in bundle_onnx_files(root) for w in placement_warnings(root / name)]


def _load(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))

