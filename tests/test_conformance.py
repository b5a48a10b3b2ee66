"""The TensorRT conformance check on hand-built graphs: one valid Q/DQ graph, then one broken rule each;
then Q/DQ placements that block a TensorRT fusion, which `edgeseg check` warns about without failing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.converters.onnx import save_onnx
from edgeseg.converters.qdq_placement import placement_warnings
from edgeseg.converters.trt_conformance import Violation, check_bundle, check_onnx, ensure_conformant
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import Artifact, InputSpec, Manifest, OutputSpec, staging_dir, write_bundle

ZERO = np.int8(0)


def qdq_model(
    act_scale: float = 0.02,
    act_zero: np.generic = ZERO,
    w_scale: np.ndarray | None = None,
    w_axis: int = 0,
    weight_op: str = "Conv",
    dims: tuple = (1, 3, 8, 8),
    extra_nodes: tuple = (),
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv/ConvTranspose (weights DQ'd per channel) -> Relu -> y, 4 output channels."""
    shape = (4, 3, 3, 3) if weight_op == "Conv" else (3, 4, 3, 3)
    w_scale = np.full(4, 0.01, np.float32) if w_scale is None else w_scale
    inits = [
        numpy_helper.from_array(np.ones(shape, np.int8), "w_q"),
        numpy_helper.from_array(np.asarray(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(np.asarray(w_scale).shape, np.int8), "w_zero"),
        numpy_helper.from_array(np.asarray(act_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.asarray(act_zero), "x_zero"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=w_axis),
        helper.make_node(weight_op, ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        *extra_nodes,
    ]
    out_dims = [1, 4, 8, 8] if isinstance(dims[0], int) else [dims[0], 4, 8, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def rules(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(v.node, v.rule) for v in check_onnx(model)}


def test_valid_qdq_graph_passes():
    model = qdq_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_onnx(model) == []
    assert check_onnx(qdq_model(weight_op="ConvTranspose", w_axis=1)) == []


def test_unsupported_ops():
    hardmax = helper.make_node("Hardmax", ["y"], ["h"], name="hardmax")
    custom = helper.make_node("QuickGelu", ["y"], ["g"], name="gelu", domain="com.microsoft")
    model = qdq_model(extra_nodes=(hardmax, custom))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = {v.node: v for v in check_onnx(model) if v.rule == "unsupported-op"}
    assert set(found) == {"hardmax", "gelu"}
    assert "com.microsoft.QuickGelu" in found["gelu"].detail


def test_dynamic_dims():
    assert ("x", "dynamic-dim") in rules(qdq_model(dims=("N", 3, 8, 8)))
    assert ("x", "dynamic-dim") in rules(qdq_model(dims=(None, 3, 8, 8)))


def test_nonzero_zero_point():
    assert rules(qdq_model(act_zero=np.int8(3))) >= {("x_q", "qdq-zero-point"), ("x_dq", "qdq-zero-point")}


def test_uint8_qdq_is_rejected():
    assert rules(qdq_model(act_zero=np.uint8(0))) >= {("x_q", "qdq-type"), ("x_dq", "qdq-type")}


@pytest.mark.parametrize("scale", [-0.5, 0.0, np.inf, np.nan])
def test_bad_activation_scale(scale):
    assert rules(qdq_model(act_scale=scale)) == {("x_q", "qdq-scale"), ("x_dq", "qdq-scale")}


def test_bad_weight_scale_in_one_channel():
    assert rules(qdq_model(w_scale=np.array([0.01, 0.01, -1.0, 0.01]))) == {("w_dq", "qdq-scale")}


def test_scale_must_be_constant():
    model = qdq_model()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "x_scale"))
    model.graph.input.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    assert ("x_q", "qdq-scale") in rules(model)


@pytest.mark.parametrize("axis, length, message", [
    (1, 3, "Conv weights must be quantized on axis 0, not 1"),  # right length for axis 1, wrong axis
    (0, 5, "5 scales but dimension 0 has size 4"),
    (7, 4, "axis 7 out of range for rank 4"),
])
def test_bad_per_channel_conv_weights(axis, length, message):
    found = check_onnx(qdq_model(w_scale=np.full(length, 0.01, np.float32), w_axis=axis))
    assert [(v.node, v.rule) for v in found] == [("w_dq", "qdq-axis")]
    assert message in found[0].detail


def test_conv_transpose_weights_need_axis_1():
    found = check_onnx(qdq_model(weight_op="ConvTranspose", w_axis=0, w_scale=np.full(3, 0.01, np.float32)))
    assert [(v.node, v.rule) for v in found] == [("w_dq", "qdq-axis")]
    assert "ConvTranspose weights must be quantized on axis 1" in found[0].detail


def test_violation_and_error_are_one_line(tmp_path):
    v = Violation("x_q", "qdq-zero-point", "zero point must be 0")
    assert str(v) == "x_q: qdq-zero-point: zero point must be 0"
    path = tmp_path / "bad.onnx"
    save_onnx(qdq_model(act_zero=np.int8(3), act_scale=-1.0), path)
    with pytest.raises(EdgesegError) as info:
        ensure_conformant(path)
    message = str(info.value)
    assert "\n" not in message and "x_q: qdq-" in message and "more; run `edgeseg check`" in message


def test_check_bundle_names_file_and_node(tmp_path):
    bundle = tmp_path / "bundle"
    staging = staging_dir(bundle)
    save_onnx(qdq_model(), staging / "good.onnx")
    save_onnx(qdq_model(act_zero=np.int8(1)), staging / "bad.onnx")
    spec = InputSpec(height=8, width=8, layout="NCHW", dtype="float32")
    artifacts = {name: Artifact(f"{name}.onnx", "onnxruntime", "int8", spec, OutputSpec(layout="NCHW"))
                 for name in ("good", "bad")}
    write_bundle(staging, bundle, Manifest(["a", "b"], [[0, 0, 0], [1, 1, 1]], artifacts, default="good"))
    assert {(v.node, v.rule) for v in check_bundle(bundle)} == {
        ("bad.onnx:x_q", "qdq-zero-point"), ("bad.onnx:x_dq", "qdq-zero-point")}


def residual_model(quantized_conv_output: bool = False, qdq_before_relu: bool = False) -> onnx.ModelProto:
    """x -> conv_a -> relu_a = r; r -> conv_b = y; add(r, y) -> relu -> out, with Q/DQ on every conv input.

    `quantized_conv_output`: Q/DQ on y too (both Add inputs quantized). `qdq_before_relu`: the Add is
    replaced by Q/DQ between conv_b and a ReLU."""
    inits = [
        numpy_helper.from_array(np.ones((4, 4, 3, 3), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(np.asarray(0.02, np.float32), "s"),
        numpy_helper.from_array(ZERO, "z"),
    ]

    def qdq(name: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}_q"], name=f"{name}_quant"),
                helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"], name=f"{name}_deq")]

    nodes = [
        *qdq("x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "wd"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu_a"),
        *qdq("r"),
        helper.make_node("Conv", ["r_dq", "wd"], ["y"], name="conv_b", pads=[1, 1, 1, 1]),
    ]
    if qdq_before_relu:
        nodes += [*qdq("y"), helper.make_node("Relu", ["y_dq"], ["out"], name="relu_b")]
    else:
        nodes += [*(qdq("y") if quantized_conv_output else []),
                  helper.make_node("Add", ["r_dq", "y_dq" if quantized_conv_output else "y"], ["sum"], name="add"),
                  helper.make_node("Relu", ["sum"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4, 8, 8))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, (1, 4, 8, 8))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_placement_as_tensorrt_fuses_it_gives_no_warning():
    model = residual_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_onnx(model) == [] and placement_warnings(model) == []


def test_quantized_conv_output_into_a_residual_add_is_a_warning_not_a_violation():
    model = residual_model(quantized_conv_output=True)
    assert check_onnx(model) == []
    [warning] = placement_warnings(model)
    assert (warning.node, warning.rule) == ("add", "qdq-residual-add")
    assert "input y from Conv conv_b is quantized" in warning.detail


def test_qdq_between_conv_and_relu_is_a_warning():
    assert [(w.node, w.rule) for w in placement_warnings(residual_model(qdq_before_relu=True))] == [
        ("relu_b", "qdq-conv-output")]


def test_check_command_prints_warnings_and_passes(tmp_path, capsys):
    from edgeseg.cli.jetson_cmd import check

    bundle = tmp_path / "bundle"
    staging = staging_dir(bundle)
    save_onnx(residual_model(quantized_conv_output=True), staging / "model.onnx")
    spec = InputSpec(height=8, width=8, layout="NCHW", dtype="float32")
    artifact = Artifact("model.onnx", "onnxruntime", "int8", spec, OutputSpec(layout="NCHW"))
    write_bundle(staging, bundle, Manifest(["a", "b"], [[0, 0, 0], [1, 1, 1]], {"int8": artifact}, default="int8"))
    check(bundle)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("warning: model.onnx:add: qdq-residual-add: input y from Conv conv_b")
    assert lines[-1] == f"{bundle}: every ONNX artifact is TensorRT-conformant (1 Q/DQ placement warning(s))"
