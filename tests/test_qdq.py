"""INT8 Q/DQ ONNX for TensorRT: placement, conformance, accuracy against fp32, calibration `auto`.

The net is fcn-tiny with random weights and BatchNorm statistics, not the briefly trained run: that
one predicts background almost everywhere, where any quantization "agrees". A random net labels the
synthetic images in many small regions with low margins, so label agreement with fp32 and the mIoU
of INT8 labels against fp32 labels measure what quantization changed.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from test_onnx_export import random_deploy_model

from edgeseg.converters.onnx import convert_onnx_fp16, export_onnx
from edgeseg.converters.onnx_qdq import CALIB_METHODS, miou_scorer, quantize_qdq
from edgeseg.converters.trt_conformance import check_bundle, check_onnx
from edgeseg.runtime.backends.base import load_runner
from edgeseg.runtime.backends.onnxrt import OnnxRuntimeRunner, ort_session
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import Manifest, staging_dir, write_bundle
from edgeseg.runtime.preprocess import resize_rgb, to_model_input

SIZE = (64, 96)
#: INT8 labels must match at least this share of fp32's on the val frames, and score at least this
#: mIoU against fp32's labels (measured: 0.976 and 0.94; low-margin random logits flip easily).
MIN_AGREEMENT = 0.95
MIN_MIOU_VS_FP32 = 0.9


@pytest.fixture(scope="module")
def data(synth_data):
    """Calibration frames (train split) and evaluation frames (val split) at model size."""
    from edgeseg.data.readers import load_all, open_dataset

    train = load_all(open_dataset(synth_data, "train"))[:16]
    val = load_all(open_dataset(synth_data, "val"))
    return {"calib": [resize_rgb(image, *SIZE) for image, _ in train],
            "frames": [resize_rgb(image, *SIZE) for image, _ in val]}


def labels_of(path, frames, spec) -> list[np.ndarray]:
    session = ort_session(path)
    return [session.run(None, {"pixels": to_model_input(f, spec)})[0][0].argmax(0).astype(np.uint8)
            for f in frames]


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    """fp32 ONNX, then Q/DQ ONNX calibrated with `auto`, scored by mIoU against fp32's val labels."""
    out = tmp_path_factory.mktemp("qdq")
    fp32 = export_onnx(random_deploy_model(), out / "model.fp32.onnx")
    reference = labels_of(out / "model.fp32.onnx", data["frames"], fp32.input)
    score = miou_scorer(list(zip(data["frames"], reference)), [f"c{i}" for i in range(6)])
    int8, scores = quantize_qdq(out / "model.fp32.onnx", out / "model.int8.onnx", data["calib"], "auto",
                                score)
    return {"dir": out, "fp32": fp32, "int8": int8, "scores": scores, "score": score, "reference": reference}


@pytest.fixture(scope="module")
def bundle(models):
    """A bundle with the fp32 and int8 ONNX artifacts (default int8)."""
    path = models["dir"] / "bundle"
    staging = staging_dir(path)
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        shutil.copy(models["dir"] / name, staging / name)
    artifacts = {"onnx-fp32": models["fp32"], "onnx-int8": models["int8"]}
    classes, palette = [f"c{i}" for i in range(6)], [[i, i, i] for i in range(6)]
    return write_bundle(staging, path, Manifest(classes, palette, artifacts, default="onnx-int8"))


def graph(models) -> onnx.GraphProto:
    return onnx.load(str(models["dir"] / "model.int8.onnx")).graph


def test_qdq_placement_for_tensorrt(models):
    g = graph(models)
    producer = {out: node for node in g.node for out in node.output}
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}

    def source(name: str) -> str:
        return producer[name].op_type if name in producer else "initializer"

    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 22
    output_layer = producer["logits"]  # 64x96 needs no crop: the full-resolution ConvTranspose
    assert output_layer.op_type == "ConvTranspose" and source(output_layer.input[0]) == "Conv"
    assert source(output_layer.input[1]) == "initializer"  # kept float, as Model Optimizer does
    for conv in convs:
        if conv is output_layer:
            continue
        assert [source(n) for n in conv.input[:2]] == ["DequantizeLinear"] * 2, conv.name
        weight_dq = producer[conv.input[1]]
        axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
        weight = consts[producer[weight_dq.input[0]].input[0]]  # fp32 weight -> Q -> DQ
        assert axis == (0 if conv.op_type == "Conv" else 1)
        assert consts[weight_dq.input[1]].shape == (weight.shape[axis],)
        act_dq = producer[conv.input[0]]
        assert consts[act_dq.input[1]].shape == ()  # activations per tensor
    for node in g.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = consts[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
        if node.op_type == "Relu":  # conv + bias + ReLU fuse: nothing between them
            assert source(node.input[0]) in ("Conv", "Add")
    adds = [n for n in g.node if n.op_type == "Add" and not any(i in consts for i in n.input)]
    assert len(adds) == 5  # residual input quantized, the other fuses into the conv that produces it
    assert all(sorted(source(i) in ("Conv", "ConvTranspose") for i in a.input) == [False, True] for a in adds)
    assert all(source(i) in ("DequantizeLinear", "Conv", "ConvTranspose") for a in adds for i in a.input)


def test_normalisation_stays_float_before_the_first_q(models):
    g = graph(models)
    first_q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in
                   {i.name for i in g.initializer})
    scale = onnx.numpy_helper.to_array(next(i for i in g.initializer if i.name == first_q.input[1]))
    producer = {out: node for node in g.node for out in node.output}
    assert producer[first_q.input[0]].op_type == "Add"  # (pixels * 1/std) + (-mean/std), in float
    assert scale < 0.05  # normalised values (|x| < 2.5 here), not 0..255 pixels (a scale of ~2)


def test_qdq_is_conformant_and_described(models):
    assert check_onnx(models["dir"] / "model.int8.onnx") == []
    int8, fp32 = models["int8"], models["fp32"]
    assert (int8.precision, int8.input, int8.output) == ("int8", fp32.input, fp32.output)


def test_auto_scores_every_method_and_keeps_the_best(models):
    scores, extra = models["scores"], models["int8"].extra
    assert set(scores) == set(CALIB_METHODS) and all(0.0 <= s <= 1.0 for s in scores.values())
    assert extra["calibration_scores"] == scores and extra["calibration_frames"] == 16
    assert extra["calibration_method"] == max(scores, key=scores.__getitem__)


def test_fp32_labels_are_varied(models):
    share = np.bincount(np.concatenate([r.ravel() for r in models["reference"]]), minlength=6) / (
        len(models["reference"]) * SIZE[0] * SIZE[1])
    assert (share > 0.01).sum() >= 3 and share.max() < 0.9  # else agreement would prove nothing


def test_int8_agrees_with_fp32(models, data):
    assert models["score"](models["dir"] / "model.int8.onnx") > MIN_MIOU_VS_FP32
    fp32, int8 = (models["dir"] / f"model.{p}.onnx" for p in ("fp32", "int8"))  # runners straight from the files
    with OnnxRuntimeRunner(fp32, models["fp32"].spec, 1) as a, OnnxRuntimeRunner(int8, models["int8"].spec, 1) as b:
        agree = [(a.predict(frame) == b.predict(frame)).mean() for frame in data["frames"]]
    assert np.mean(agree) > MIN_AGREEMENT


def test_runner_and_bundle_check(data, bundle):
    assert check_bundle(bundle) == []
    runner = load_runner(bundle, threads=1)
    assert runner.name == "onnxruntime-int8"
    with runner:
        assert runner.predict(data["frames"][0]).shape == data["frames"][0].shape[:2]
    assert not runner.is_active


def test_single_method_and_fp16_copy(models, data, tmp_path):
    fp32 = models["dir"] / "model.fp32.onnx"
    art, scores = quantize_qdq(fp32, tmp_path / "q.onnx", data["calib"][:4], "minmax")
    assert scores == {} and art.extra["calibration_method"] == "minmax"
    fp16 = onnx.load(str(convert_onnx_fp16(tmp_path / "q.onnx", tmp_path / "q16.onnx")))
    assert check_onnx(fp16) == []
    qdq_inputs = {i for n in fp16.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for i in n.input[1:]}
    assert {i.data_type for i in fp16.graph.initializer if i.name in qdq_inputs} <= {
        onnx.TensorProto.FLOAT, onnx.TensorProto.INT8}  # scales stay float32 (opset 17)


def test_bad_arguments(models, data, tmp_path):
    fp32 = models["dir"] / "model.fp32.onnx"
    with pytest.raises(ValueError, match="score_fn"):
        quantize_qdq(fp32, tmp_path / "q.onnx", data["calib"], "auto")
    with pytest.raises(ValueError, match="method"):
        quantize_qdq(fp32, tmp_path / "q.onnx", data["calib"], "kl")
    with pytest.raises(EdgesegError, match="no calibration frames"):
        quantize_qdq(fp32, tmp_path / "q.onnx", [], "minmax")
