"""Keras deploy model -> fp32 ONNX for TensorRT and onnxruntime (tf2onnx, then a small cleanup).

The graph takes float32 raw RGB pixels (normalisation folded in, as a Mul/Add in front), NCHW by
default (NHWC on request), at a static shape; it returns logits in the same layout, or an N x H x W
uint8 label map when the deploy model ends in its argmax.
tf2onnx already folds constants, drops identities and cancels transposes; on top of that every
per-channel Mul/Add after a Conv or ConvTranspose (the BatchNorms grappler did not fold) goes into
the weights and bias. Normalisation is deliberately not folded into the first Conv: the Conv zero-pads
in normalised units, so folding would change the border pixels (and INT8 wants it on its own, see
`onnx_qdq`). mean/std/layout travel in the model's metadata so later steps rebuild the Artifact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeseg.choices import ONNX_LAYOUTS
from edgeseg.rundir import write_atomic
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import DEFAULT_MEAN, DEFAULT_STD, Artifact, InputSpec, OutputSpec

from .trt_conformance import ensure_conformant

LAYOUTS = ONNX_LAYOUTS
INPUT_NAME = "pixels"
_META_PREFIX = "edgeseg."


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Check, shape-infer (strictly) and atomically write a model (< 2 GB, no external data)."""
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)
    return write_atomic(path, model.SerializeToString())


def export_onnx(
    deploy_model: Any,
    path: str | os.PathLike[str],
    opset: int = 17,
    layout: str = "nchw",
    batch: int = 1,
) -> Artifact:
    """Convert a `deploy_model` (float32 pixels NHWC in) to ONNX at `path`; checked for TensorRT."""
    import tensorflow as tf
    import tf2onnx

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    _, height, width, channels = deploy_model.input_shape
    spec = (tf.TensorSpec((batch, height, width, channels), tf.float32, name=INPUT_NAME),)
    fn = tf.function(lambda x: deploy_model(x, training=False))
    model, _ = tf2onnx.convert.from_function(
        fn, input_signature=spec, opset=opset,
        inputs_as_nchw=[INPUT_NAME] if layout == "nchw" else None,
    )
    kind = "logits" if len(deploy_model.output_shape) == 4 else "labels"
    graph = model.graph
    rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    rename_tensor(graph, graph.output[0].name, kind)
    if kind == "logits" and layout == "nchw":
        _output_to_nchw(graph)
    fold_affine_into_conv(graph)
    remove_unused_initializers(graph)
    mean, std = _normalization(deploy_model)
    set_metadata(model, mean=list(mean), std=list(std), layout=layout.upper())
    model.producer_name = "edgeseg"
    save_onnx(model, path)
    ensure_conformant(path)
    return artifact_from_onnx(path, backend="onnxruntime", precision="fp32")


def artifact_from_onnx(path: str | os.PathLike[str], backend: str, precision: str) -> Artifact:
    """The bundle Artifact describing an edgeseg ONNX file (shapes from the graph, rest from metadata)."""
    model = onnx.load(str(path), load_external_data=False)
    meta = get_metadata(model)
    layout = meta.get("layout", "NCHW")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    batch, height, width = (dims[0], dims[2], dims[3]) if layout == "NCHW" else dims[:3]
    out_type = model.graph.output[0].type.tensor_type
    kind = "logits" if len(out_type.shape.dim) == 4 else "labels"
    return Artifact(
        file=Path(path).name,
        backend=backend,
        precision=precision,
        input=InputSpec(height=height, width=width, layout=layout, dtype="float32", batch=batch,
                        mean=tuple(meta.get("mean", DEFAULT_MEAN)), std=tuple(meta.get("std", DEFAULT_STD)),
                        normalization_folded=True),
        output=OutputSpec(kind=kind, dtype=onnx.helper.tensor_dtype_to_np_dtype(out_type.elem_type).name,
                          layout=layout),
        extra={"opset": _opset(model)},
    )


def set_metadata(model: onnx.ModelProto, **values: Any) -> None:
    """Store JSON values in the model's metadata_props under `edgeseg.<key>`."""
    keep = [p for p in model.metadata_props if p.key.removeprefix(_META_PREFIX) not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=_META_PREFIX + key, value=json.dumps(value))


def get_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    return {p.key.removeprefix(_META_PREFIX): json.loads(p.value)
            for p in model.metadata_props if p.key.startswith(_META_PREFIX)}


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears (node inputs/outputs, graph inputs/outputs, value_info)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.name == old:
            info.name = new


def _output_to_nchw(graph: onnx.GraphProto) -> None:
    """Drop the trailing NCHW->NHWC Transpose tf2onnx leaves on the logits (the graph is NCHW inside)."""
    out = graph.output[0]
    last = next(n for n in graph.node if out.name in n.output)
    perm = next((list(a.ints) for a in last.attribute if a.name == "perm"), None)
    if last.op_type != "Transpose" or perm != [0, 2, 3, 1]:
        raise EdgesegError(f"cannot export NCHW logits: tf2onnx ended the graph with {last.op_type} "
                           f"{perm or ''}, not an NCHW->NHWC Transpose (export with layout='nhwc')")
    rename_tensor(graph, last.input[0], out.name)
    graph.node.remove(last)
    dims = out.type.tensor_type.shape.dim
    n, h, w, c = (d.dim_value for d in dims)
    for d, v in zip(dims, (n, c, h, w)):
        d.dim_value = v


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _channel_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """`value` as a length-C vector if it broadcasts over NCHW along C only, else None."""
    if value.ndim > 4:
        return None
    shape = (1,) * (4 - value.ndim) + value.shape
    if shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def fold_affine_into_conv(graph: onnx.GraphProto) -> int:
    """Fold per-channel Mul/Add constants that follow a Conv/ConvTranspose into its weights and bias.

    This is BatchNorm folding for the BNs grappler left as Mul (+Add), e.g. after depthwise and
    transposed convolutions. Returns the number of nodes folded.
    """
    folded = 0
    outputs = {o.name for o in graph.output}
    while True:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for conv in graph.node:
            if conv.op_type in ("Conv", "ConvTranspose") and _fold_next(graph, conv, consumers, outputs):
                folded += 1
                break
        else:
            return folded


def _fold_next(graph: onnx.GraphProto, conv: onnx.NodeProto,
               consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    users = consumers.get(conv.output[0], [])
    if len(users) != 1 or conv.output[0] in outputs or users[0].op_type not in ("Mul", "Add"):
        return False
    nxt = users[0]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    weight = _constant(graph, conv.input[1])
    other = nxt.input[1] if nxt.input[0] == conv.output[0] else nxt.input[0]
    value = _constant(graph, other)
    if weight is None or value is None or (conv.op_type == "ConvTranspose" and group != 1):
        return False
    axis = 0 if conv.op_type == "Conv" else 1
    channels = weight.shape[axis]
    vector = _channel_vector(value, channels)
    if vector is None:
        return False
    bias = _constant(graph, conv.input[2]) if len(conv.input) > 2 else np.zeros(channels, np.float32)
    if bias is None:
        return False
    if nxt.op_type == "Mul":
        shape = [1] * weight.ndim
        shape[axis] = channels
        weight, bias = weight * vector.reshape(shape), bias * vector
    else:
        bias = bias + vector
    names = (f"{conv.name}/folded_W", f"{conv.name}/folded_B")
    for name, array in zip(names, (weight, bias)):
        _replace_initializer(graph, name, array.astype(np.float32))
    conv.input[1:] = list(names)
    conv.output[0] = nxt.output[0]
    graph.node.remove(nxt)
    return True


def _replace_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[i]
            break
    graph.initializer.append(numpy_helper.from_array(array, name))


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _normalization(deploy_model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std of the deploy model's `normalize` Rescaling layer (x * scale + offset), to 4 decimals."""
    try:
        layer = deploy_model.get_layer("normalize")
    except ValueError:
        return DEFAULT_MEAN, DEFAULT_STD
    scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (3,))
    offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (3,))
    return tuple(round(float(v), 4) for v in -offset / scale), tuple(round(float(v), 4) for v in 1.0 / scale)


def convert_onnx_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """An FP16 copy of an ONNX model, for TensorRT 11's strongly typed networks (no FP16 builder flag).

    Node by node: float tensors and weights become float16, except the input normalisation (raw
    0..255 pixels in, cheap) and Q/DQ nodes (opset < 19 Q/DQ scales are float32 only), which stay
    float32 behind Casts; inputs an op only takes as float32 (e.g. Resize scales) stay float32; the
    graph's float inputs and outputs stay float32. TensorRT may not fuse a DQ -> Cast -> Conv, so
    for INT8 build the Q/DQ model as it is (its few float layers then run in float32).
    """
    model = onnx.load(str(src))
    graph = model.graph
    opset = _opset(model)
    floats = _float_tensors(model)
    inits = {i.name: i for i in graph.initializer}
    keep = _fp32_nodes(graph, set(inits))
    half: set[str] = set()  # float tensors that are float16 now
    nodes: list[onnx.NodeProto] = []

    def as_type(name: str, to_half: bool) -> str:
        """`name`, or its float16/float32 twin (an initializer copy or a Cast, made once)."""
        if name not in floats or (name in half) == to_half:
            return name
        twin = f"{name}/{'fp16' if to_half else 'fp32'}"
        if name in inits and to_half and twin not in inits:
            inits[twin] = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), twin)
            graph.initializer.append(inits[twin])
        elif name not in inits and twin not in floats:
            nodes.append(_cast(name, twin, to_half))
        floats.add(twin)
        if to_half:
            half.add(twin)
        return twin

    for index, node in enumerate(graph.node):
        fp16 = index not in keep
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        node.input[:] = [as_type(name, fp16 and _takes_half(schema, j)) for j, name in enumerate(node.input)]
        if fp16:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
            half.update(name for name in node.output if name in floats)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    for out in graph.output:
        if out.name in half:
            name, internal = out.name, f"{out.name}/fp16"
            rename_tensor(graph, name, internal)
            out.name = name
            graph.node.append(_cast(internal, name, to_half=False))
    del graph.value_info[:]
    remove_unused_initializers(graph)
    save_onnx(model, dst)
    ensure_conformant(dst)
    return Path(dst)


def _cast(src: str, dst: str, to_half: bool) -> onnx.NodeProto:
    to = onnx.TensorProto.FLOAT16 if to_half else onnx.TensorProto.FLOAT
    return onnx.helper.make_node("Cast", [src], [dst], name=dst, to=to)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    infos = (*graph.input, *graph.output, *graph.value_info)
    return ({i.name for i in infos if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
            | {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT})


def _fp32_nodes(graph: onnx.GraphProto, consts: set[str]) -> set[int]:
    """Indices of the nodes kept float32: Q/DQ, and the elementwise normalisation of the graph inputs."""
    keep: set[int] = set()
    normalised = {i.name for i in graph.input}
    for index, node in enumerate(graph.node):
        operands = [name for name in node.input if name not in consts]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            keep.add(index)
        elif node.op_type in ("Mul", "Add", "Sub", "Div") and operands and set(operands) <= normalised:
            keep.add(index)
            normalised.update(node.output)
    return keep


def _takes_half(schema: onnx.defs.OpSchema, index: int) -> bool:
    """Whether input `index` of an op may be float16 (its type is a type variable allowing it)."""
    param = schema.inputs[min(index, len(schema.inputs) - 1)]
    constraints = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    allowed = constraints.get(param.type_str, [param.type_str])
    return "tensor(float16)" in allowed


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
