"""Does an ONNX graph build in TensorRT as an explicitly quantized (Q/DQ) or float network?

Checked statically, without TensorRT: a well-formed graph (`onnx.checker` full check with shape
inference, every tensor produced before it is used), every op in the ONNX parser's supported list, static shapes
everywhere, and Q/DQ nodes as TensorRT requires them (int8, zero point 0, positive finite constant
scales, per-channel axes that match the tensor; Conv weights on axis 0, ConvTranspose on axis 1).
Where Q/DQ sits (which fusions it allows) is `qdq_placement`'s, and only warned about.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import read_manifest

#: Ops marked supported ("Y") in onnx-tensorrt's docs/operators.md for TensorRT 8.5, the oldest
#: release edgeseg targets (later releases only add ops).
TRT_ONNX_OPS = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
    "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GRU", "HardSigmoid",
    "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul",
    "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
    "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan",
    "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where",
    "Xor",
))

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Which axis of a weight tensor holds output channels, by consuming op.
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node (or tensor)."""

    node: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: {self.rule}: {self.detail}"


def check_onnx(model: onnx.ModelProto | str | os.PathLike[str]) -> list[Violation]:
    """Every TensorRT conformance violation in a model (a path or a loaded ModelProto)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    broken = check_structure(model)
    if broken:  # the rules below assume a well-formed graph
        return broken
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        return [Violation("<graph>", "shape-inference", str(exc).splitlines()[0])]
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return [*_check_ops(graph), *_check_shapes(graph, consts), *_check_qdq(graph, consts)]


def bundle_onnx_files(bundle_dir: str | os.PathLike[str]) -> list[str]:
    """File names of a bundle's ONNX artifacts, sorted."""
    manifest = read_manifest(Path(bundle_dir))
    return sorted({a.file for a in manifest.artifacts.values() if a.file.endswith(".onnx")})


def check_bundle(bundle_dir: str | os.PathLike[str]) -> list[Violation]:
    """Violations in every ONNX artifact of a bundle, node names prefixed with the file name."""
    root = Path(bundle_dir)
    files = bundle_onnx_files(root)
    if not files:
        manifest = read_manifest(root)
        raise EdgesegError(f"{root}: no ONNX artifact to check (target {manifest.target}: "
                           f"{', '.join(sorted({a.file for a in manifest.artifacts.values()}))})")
    return [Violation(f"{name}:{v.node}", v.rule, v.detail)
            for name in files for v in check_onnx(root / name)]


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """An ONNX file as a ModelProto; a one-line EdgesegError if it cannot be read or decoded."""
    try:
        return onnx.load(str(path))
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot read ONNX model ({exc.strerror or exc})") from None
    except DecodeError as exc:
        raise EdgesegError(f"{path}: not a valid ONNX model (truncated or corrupt: {exc})") from None


def check_structure(model: onnx.ModelProto) -> list[Violation]:
    """A well-formed graph: `onnx.checker`'s full check (with strict shape inference), then every node input
    and graph output produced by a graph input, an initializer or an earlier node."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [Violation("<graph>", "onnx-checker", str(exc).strip().splitlines()[0])]
    return _check_connectivity(model.graph)


def _check_connectivity(graph: onnx.GraphProto) -> list[Violation]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    found = []
    for i, node in enumerate(graph.node):
        found += [Violation(_name(node, i), "disconnected", f"input {name!r} is produced by no earlier node")
                  for name in node.input if name not in available]
        available.update(node.output)
    found += [Violation(out.name, "disconnected", "graph output is produced by no node")
              for out in graph.output if out.name not in available]
    return found


def ensure_conformant(path: str | os.PathLike[str]) -> None:
    """Raise a one-line EdgesegError naming the first violation (and how many more) if any."""
    violations = check_onnx(path)
    if violations:
        more = f" (and {len(violations) - 1} more; run `edgeseg check`)" if len(violations) > 1 else ""
        raise EdgesegError(f"{path}: not buildable by TensorRT: {violations[0]}{more}")


def _name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _check_ops(graph: onnx.GraphProto) -> list[Violation]:
    return [
        Violation(_name(node, i), "unsupported-op",
                  f"{node.domain + '.' if node.domain not in ('', 'ai.onnx') else ''}{node.op_type} "
                  "is not in TensorRT's ONNX operator list")
        for i, node in enumerate(graph.node)
        if node.domain not in ("", "ai.onnx") or node.op_type not in TRT_ONNX_OPS
    ]


def _check_shapes(graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> list[Violation]:
    infos = (*graph.input, *graph.output, *graph.value_info)
    known = {i.name for i in infos} | set(consts)
    found = [Violation(name, "dynamic-dim", "shape inference found no shape for this tensor")
             for node in graph.node for name in node.output if name and name not in known]
    for info in infos:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            found.append(Violation(info.name, "dynamic-dim", "tensor has no static shape (unknown rank)"))
            continue
        for axis, dim in enumerate(tensor.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                what = f"symbolic {dim.dim_param!r}" if dim.HasField("dim_param") else "unknown"
                found.append(Violation(info.name, "dynamic-dim",
                                       f"dimension {axis} is {what}, not a fixed size"))
    return found


def _check_qdq(graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> list[Violation]:
    infos = (*graph.input, *graph.output, *graph.value_info)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in infos}
    shapes.update({name: list(value.shape) for name, value in consts.items()})
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in infos if i.type.tensor_type.elem_type}
    types.update({name: value.dtype for name, value in consts.items()})
    weight_axis = {}
    for node in graph.node:
        if node.op_type in WEIGHT_AXIS and len(node.input) > 1:
            weight_axis[node.input[1]] = (node.op_type, WEIGHT_AXIS[node.op_type])
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            int8_tensor = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
            found += _check_qdq_node(_name(node, i), node, consts, types.get(int8_tensor), shapes,
                                     weight_axis)
    return found


def _check_qdq_node(name: str, node: onnx.NodeProto, consts: dict[str, np.ndarray],
                    int8_type: np.dtype | None, shapes: dict[str, list[int]],
                    weight_axis: dict[str, tuple[str, int]]) -> list[Violation]:
    """`int8_type`: the type of the quantized side (Q output, DQ input) as shape inference found it."""
    found = []
    scale = consts.get(node.input[1])
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if int8_type != np.int8:
        found.append(Violation(name, "qdq-type", f"quantized tensor is {int8_type}, TensorRT needs int8"))
    if zero is not None and np.any(zero != 0):
        found.append(Violation(name, "qdq-zero-point", "zero point must be 0 (symmetric quantization)"))
    if scale is None:
        return [*found, Violation(name, "qdq-scale", "scale must be a constant initializer")]
    bad = scale[~(np.isfinite(scale) & (scale > 0))]
    if bad.size:
        found.append(Violation(name, "qdq-scale",
                               f"scale must be positive and finite, has {float(bad.flat[0])}"))
    if scale.ndim > 1:
        found.append(Violation(name, "qdq-axis",
                               f"scale must be a scalar or 1-D, has shape {list(scale.shape)}"))
    elif scale.size > 1:
        found += _check_axis(name, node, scale.size, shapes, weight_axis)
    return found


def _check_axis(name: str, node: onnx.NodeProto, length: int,
                shapes: dict[str, list[int]], weight_axis: dict[str, tuple[str, int]]) -> list[Violation]:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = shapes.get(node.input[0])
    if shape is None:
        return [Violation(name, "qdq-axis", "per-channel input has no known shape")]
    if not -len(shape) <= axis < len(shape):
        return [Violation(name, "qdq-axis", f"axis {axis} out of range for rank {len(shape)}")]
    axis %= len(shape)
    found = []
    if shape[axis] != length:
        found.append(Violation(name, "qdq-axis",
                               f"{length} scales but dimension {axis} has size {shape[axis]}"))
    use = weight_axis.get(node.output[0]) if node.op_type == "DequantizeLinear" else None
    if use is not None and axis != use[1]:
        found.append(Violation(name, "qdq-axis",
                               f"{use[0]} weights must be quantized on axis {use[1]}, not {axis}"))
    return found
