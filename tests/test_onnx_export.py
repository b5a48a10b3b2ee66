"""Keras deploy model -> fp32 ONNX: static, checked, BN folded, TensorRT-conformant, and equal to Keras."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from edgeseg.converters.onnx import convert_onnx_fp16, export_onnx
from edgeseg.converters.trt_conformance import check_onnx
from edgeseg.rundir import write_atomic
from edgeseg.runtime.backends.onnxrt import ort_session
from edgeseg.runtime.errors import EdgesegError

SIZE = (64, 96)
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 62.0, 64.0)


def random_deploy_model(output: str = "logits", seed: int = 0, name: str = "fcn-tiny",
                        size: tuple[int, int] = SIZE):
    """`name` (fcn-tiny by default, 6 classes) with random weights and BatchNorm statistics (so folding
    them is exercised), as a deploy model at `size`. The classifier bias is centred on the mean logits of
    random images, so the labels vary over an image instead of one class winning everywhere."""
    import keras

    from edgeseg.deploy import deploy_model
    from edgeseg.model import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(name, 6, size)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    logits = np.asarray(model(rng.uniform(-1, 1, (4, *size, 3)).astype(np.float32)))
    classifier.set_weights([kernel, bias - logits.mean(axis=(0, 1, 2))])
    return deploy_model(model, name, 6, size, MEAN, STD, output=output)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(deploy model, artifact, path) of the default export: NCHW logits, batch 1, opset 17."""
    model = random_deploy_model()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return model, export_onnx(model, path), path


def frames(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *SIZE, 3)).astype(np.float32)


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_graph_is_static_checked_and_folded(exported):
    _, _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert check_onnx(model) == []
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, *SIZE]
    assert out.name == "logits" and [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 6, *SIZE]
    assert model.opset_import[0].version == 17
    ops = Counter(n.op_type for n in model.graph.node)
    # BN folded into every Conv/ConvTranspose: the only Mul is the normalisation, on the input itself;
    # the Adds are that normalisation's offset plus 3 residual and 2 decoder skips; no layout Transposes.
    assert ops["Mul"] == 1 and ops["Add"] == 6 and "BatchNormalization" not in ops and "Transpose" not in ops
    assert next(n for n in model.graph.node if n.op_type == "Mul").input[0] == "pixels"


def test_artifact_describes_the_graph(exported):
    _, artifact, _ = exported
    assert (artifact.file, artifact.backend, artifact.precision) == ("model.onnx", "onnxruntime", "fp32")
    spec = artifact.input
    assert (spec.height, spec.width, spec.layout, spec.dtype, spec.batch) == (*SIZE, "NCHW", "float32", 1)
    assert spec.normalization_folded and spec.mean == MEAN and spec.std == STD
    out = artifact.output
    assert (out.kind, out.dtype, out.layout) == ("logits", "float32", "NCHW")


def test_fp32_labels_equal_keras(exported):
    model, _, path = exported
    x = frames(2)
    keras_labels = np.asarray(model(x)).argmax(-1)
    onnx_labels = np.concatenate([run(path, x[i:i + 1].transpose(0, 3, 1, 2)) for i in range(2)]).argmax(1)
    assert (onnx_labels == keras_labels).mean() > 0.99


@pytest.mark.parametrize("output, layout, batch, opset", [
    ("labels", "nchw", 2, 13),
    ("logits", "nhwc", 1, 17),
])
def test_labels_nhwc_batch_and_opset(tmp_path, output, layout, batch, opset):
    model = random_deploy_model(output)
    artifact = export_onnx(model, tmp_path / "m.onnx", opset=opset, layout=layout, batch=batch)
    spec = artifact.input
    assert (spec.layout, spec.batch, artifact.extra["opset"]) == (layout.upper(), batch, opset)
    assert check_onnx(tmp_path / "m.onnx") == []
    x = frames(batch)
    y = run(tmp_path / "m.onnx", x.transpose(0, 3, 1, 2) if layout == "nchw" else x)
    if output == "labels":
        assert (artifact.output.kind, artifact.output.dtype) == ("labels", "uint8")
        assert y.shape == (batch, *SIZE) and y.dtype == np.uint8
        assert (y == np.asarray(model(x))).mean() > 0.99
    else:
        assert (artifact.output.kind, artifact.output.layout) == ("logits", "NHWC")
        assert y.shape == (batch, *SIZE, 6)
        assert (y.argmax(-1) == np.asarray(model(x)).argmax(-1)).mean() > 0.99


def test_fp16_copy_keeps_io_and_normalisation_float(exported, tmp_path):
    _, _, path = exported
    fp16 = convert_onnx_fp16(path, tmp_path / "model.fp16.onnx")
    model = onnx.load(str(fp16))
    assert check_onnx(model) == []
    inits = {i.name: i.data_type for i in model.graph.initializer}
    conv_weights = [inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert set(conv_weights) == {onnx.TensorProto.FLOAT16}
    norm = [n for n in model.graph.node if n.op_type in ("Mul", "Add") and n.input[0] == "pixels"]
    assert norm and all(inits[n.input[1]] == onnx.TensorProto.FLOAT for n in norm)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = frames(1).transpose(0, 3, 1, 2)
    assert (run(fp16, x).argmax(1) == run(path, x).argmax(1)).mean() > 0.99


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    write_atomic(target, b"old")
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(EdgesegError, match=r"model\.onnx: cannot write \(disk full\)"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
