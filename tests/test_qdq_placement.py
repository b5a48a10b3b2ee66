"""Q/DQ placement as TensorRT fuses it (NVIDIA Model Optimizer's rules): fcn-medium, a dilated conv,
and the INT8 drop of a trained model's Jetson export."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_onnx_export import random_deploy_model

from edgeseg.converters.onnx import export_onnx
from edgeseg.converters.onnx_qdq import calibrate, quantize_qdq
from edgeseg.converters.qdq_placement import placement_warnings, summary
from edgeseg.converters.trt_conformance import check_onnx

#: Not a multiple of 32: the graph ends in the crop's Slice after the full-resolution ConvTranspose.
MEDIUM_SIZE = (56, 96)
#: Q/DQ pairs NVIDIA Model Optimizer 0.47 places on this test's fcn-medium graph at MEDIUM_SIZE, node for
#: node where edgeseg places them (measured; 50 at 64x96, where the ConvTranspose writes the output).
MODELOPT_PAIRS = 52


def calib_frames(size: tuple[int, int], n: int = 4) -> list[np.ndarray]:
    return list(np.random.default_rng(0).integers(0, 256, (n, *size, 3), dtype=np.uint8))


def sources(graph: onnx.GraphProto):
    producer = {out: node for node in graph.node for out in node.output}
    return producer, lambda name: producer[name].op_type if name in producer else "initializer"


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    out = tmp_path_factory.mktemp("medium")
    export_onnx(random_deploy_model(name="fcn-medium", size=MEDIUM_SIZE), out / "fp32.onnx")
    quantize_qdq(out / "fp32.onnx", out / "int8.onnx", calib_frames(MEDIUM_SIZE), "minmax")
    return onnx.load(str(out / "int8.onnx"))


def test_skip_adds_quantize_only_the_residual_input(medium):
    producer, source = sources(medium.graph)
    consts = {i.name for i in medium.graph.initializer}
    adds = [n for n in medium.graph.node if n.op_type == "Add" and not any(i in consts for i in n.input)]
    assert len(adds) == 10
    fused = []
    for add in adds:
        kinds = sorted(source(i) for i in add.input)
        assert "DequantizeLinear" in kinds and kinds != ["DequantizeLinear"] * 2, add.name
        fused += [k for k in kinds if k != "DequantizeLinear"]
        residual = producer[next(i for i in add.input if source(i) == "DequantizeLinear")]
        assert source(residual.input[0]) == "QuantizeLinear"
    # encoder blocks: the block's last conv fuses; decoder: the upsampling ConvTranspose (the longer path
    # back to where the two branches meet), and the projected skip is the quantized residual
    assert sorted(fused) == ["Conv"] * 7 + ["ConvTranspose"] * 3


def test_output_layer_is_the_node_writing_the_output(medium, tmp_path):
    """As ModelOpt's `get_skipped_output_layers`: behind the crop's Slice the full-resolution ConvTranspose
    is quantized like every conv; where it writes the logits itself (64x96, no crop) it stays float."""
    producer, source = sources(medium.graph)
    crop = producer["logits"]
    upsample = producer[crop.input[0]]
    assert (crop.op_type, upsample.op_type) == ("Slice", "ConvTranspose")
    convs = [n for n in medium.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert all(source(c.input[0]) == source(c.input[1]) == "DequantizeLinear" for c in convs)

    export_onnx(random_deploy_model(name="fcn-medium", size=(64, 96)), tmp_path / "fp32.onnx")
    thresholds = calibrate(tmp_path / "fp32.onnx", calib_frames((64, 96)))
    quantize_qdq(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib_frames((64, 96)), "minmax",
                 thresholds=thresholds)
    uncropped = onnx.load(str(tmp_path / "int8.onnx"))
    producer, source = sources(uncropped.graph)
    upsample = producer["logits"]
    assert upsample.op_type == "ConvTranspose"
    assert [source(i) for i in upsample.input[:2]] == ["Conv", "initializer"]
    assert summary(uncropped)["qdq_pairs"] == MODELOPT_PAIRS - 2
    # calibrated all the same, so cached ranges still serve when a rule change quantizes it
    assert upsample.input[0] in thresholds["minmax"]


def test_placement_matches_modelopt_count_and_passes_check(medium):
    placed = summary(medium)
    assert placed["qdq_pairs"] == MODELOPT_PAIRS
    assert placed["skip_adds"] == {"one_input_quantized": 10, "both_inputs_quantized": 0, "float": 0}
    assert placed["float_convs"] == [] and placed["quantized_convs"] == 26
    assert check_onnx(medium) == [] and placement_warnings(medium) == []


def test_dilated_conv_is_quantized_and_fuses_its_residual_add(tmp_path):
    """A dilated 3x3 conv (what a new variant may add) in a residual block."""
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 127.5, -1.0, name="normalize")(inp)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(x)))
    y = layers.Conv2D(16, 3, padding="same", dilation_rate=2, use_bias=False, name="dilated")(x)
    x = layers.ReLU()(layers.Add()([x, layers.BatchNormalization()(y)]))
    model = keras.Model(inp, layers.Conv2D(4, 1, name="classifier")(x))
    export_onnx(model, tmp_path / "fp32.onnx", layout="nhwc")
    quantize_qdq(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib_frames((32, 32)), "minmax")
    qdq = onnx.load(str(tmp_path / "int8.onnx"))
    graph = qdq.graph
    producer, source = sources(graph)
    dilated = next(n for n in graph.node if n.op_type == "Conv" and any(
        a.name == "dilations" and list(a.ints) == [2, 2] for a in n.attribute))
    assert [source(i) for i in dilated.input[:2]] == ["DequantizeLinear"] * 2
    weight_dq = producer[dilated.input[1]]
    assert next(a.i for a in weight_dq.attribute if a.name == "axis") == 0
    add = next(n for n in graph.node if n.op_type == "Add" and dilated.output[0] in n.input)
    assert sorted(source(i) for i in add.input) == ["Conv", "DequantizeLinear"]
    assert placement_warnings(qdq) == []


def test_trained_model_int8_within_half_a_point(tiny_run, synth_data, tmp_path, capsys):
    """A briefly trained fcn-tiny exported for Jetson: Q/DQ within 0.5 mIoU of fp32, placement recorded,
    `edgeseg check` clean (no warning)."""
    from edgeseg.cli.jetson_cmd import check
    from edgeseg.export import ExportOptions, export_bundle

    bundle = tmp_path / "jetson"
    result = export_bundle(tiny_run, bundle, ExportOptions(num_calib=16, eval_data=synth_data), "jetson",
                           log=lambda _: None)
    comparison = result.manifest.evaluation["comparison"]
    assert result.scores["fp32"].miou > 0.1  # a model that segments, so the drop means something
    assert comparison["drop_points"] <= 0.5
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    placed = manifest["artifacts"]["int8"]["extra"]["qdq_placement"]
    assert placed["skip_adds"]["both_inputs_quantized"] == 0 and placed["skip_adds"]["one_input_quantized"] == 5
    check(bundle)
    out = capsys.readouterr().out
    assert "warning" not in out and out.strip().endswith("every ONNX artifact is TensorRT-conformant")


@pytest.mark.parametrize("weight, group, kernel, graph_input, kept", [
    ((11, 32), 1, 1, False, True),  # fcn-*'s classifier: 32 inputs, a multiple of 8
    ((11, 11), 1, 8, False, False),  # neither side a multiple of 8, both under 16
    ((16, 3), 1, 3, False, True),  # the stem: 16 outputs
    ((8, 3), 1, 3, True, True),  # a small first layer on the graph input
    ((8, 3), 1, 3, False, False),  # the same conv deeper in: no int8 kernel ModelOpt trusts
    ((24, 1), 24, 3, False, True),  # depthwise 3x3, 24 channels
    ((12, 1), 12, 3, False, False),  # depthwise, 12 channels: not a multiple of 8
])
def test_small_channel_convs_as_modelopt_excludes_them(weight, group, kernel, graph_input, kept):
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.converters.qdq_placement import small_channel_convs

    out_c, in_c = weight
    w = numpy_helper.from_array(np.ones((out_c, in_c, kernel, kernel), np.float32), "w")
    pre = [] if graph_input else [helper.make_node("Relu", ["x"], ["h"], name="relu")]
    conv = helper.make_node("Conv", ["x" if graph_input else "h", "w"], ["y"], name="conv", group=group)
    graph = helper.make_graph([*pre, conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    assert small_channel_convs(graph) == ([] if kept else ["conv"])
