"""CPU target: integer-only INT8, float layers, float/INT8/Keras agreement, labels output, debug-quant."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeseg.converters import tflite
from edgeseg.runtime.backends.litert import LiteRTRunner
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import read_manifest

#: Pixels on which two artifacts of one model must give the same label.
AGREEMENT = 0.95


def _report(bundle: Path, artifact: str) -> tflite.TFLiteReport:
    manifest = read_manifest(bundle)
    return tflite.inspect_tflite((bundle / manifest.artifacts[artifact].file).read_bytes())


def _runner(bundle: Path, artifact: str) -> LiteRTRunner:
    art = read_manifest(bundle).artifacts[artifact]
    return LiteRTRunner(bundle / art.file, art.spec).activate()


def _val_pairs(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from edgeseg.data import load_all, open_dataset

    return load_all(open_dataset(data, "val"))


@pytest.mark.parametrize("bundle_fixture, out_dtype, out_shape", [
    ("tiny_bundle", "uint8", (1, 64, 96)), ("tiny_bundle_logits", "int8", (1, 64, 96, 6))])
def test_int8_graph_is_integer_only(bundle_fixture: str, out_dtype: str, out_shape: tuple,
                                    request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(bundle_fixture)
    report = _report(bundle, "int8")
    assert report.input_dtype == "uint8" and report.output_dtype == out_dtype
    floats = [str(op) for op in report.ops if op.is_float]
    assert not floats, floats
    tflite.check_integer_only(report)
    counts = report.op_counts()
    assert counts["CONV_2D"] > 0 and counts["DEPTHWISE_CONV_2D"] > 0 and counts["TRANSPOSE_CONV"] > 0
    assert read_manifest(bundle).artifacts["int8"].extra["ops"] == counts
    runner = _runner(bundle, "int8")
    assert tuple(runner._output["shape"]) == out_shape and np.dtype(runner._output["dtype"]).name == out_dtype
    # The inspection does see float tensors when there are some: the fp32 artifact is all float.
    fp32 = _report(bundle, "fp32")
    assert fp32.input_dtype == "float32" and all(op.is_float for op in fp32.ops if op.name == "CONV_2D")


@pytest.fixture(scope="module")
def calibrated(tiny_run: Path, synth_data: Path) -> bytes:
    """The tiny run's deploy model (int8 logits) with ranges from 8 calibration images."""
    from edgeseg.calibration.frames import choose_calibration
    from edgeseg.data import open_dataset
    from edgeseg.deploy import deploy_model
    from edgeseg.rundir import load_run_model

    model, cfg = load_run_model(tiny_run)
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std, "logits")
    _, frames = choose_calibration(open_dataset(synth_data, "train"), 8, cfg.classes, cfg.input_size)
    return tflite.calibrate(deploy, frames)


def _normalize_add_tensor(calibrated: bytes) -> str:
    """TFLite name of the output of the ADD op of the folded normalisation (an op of its own, not fused)."""
    report = tflite.inspect_tflite(tflite.quantize(calibrated, "logits"))
    names = [op.output_names[0] for op in report.ops
             if op.name == "ADD" and "/normalize" in op.output_names[0]]
    assert len(names) == 1, names
    return names[0]


def test_check_integer_only_fails_on_a_float_op_unless_allowed(calibrated: bytes) -> None:
    tensor = _normalize_add_tensor(calibrated)
    report = tflite.inspect_tflite(tflite.quantize(calibrated, "logits", [tensor]))
    floats = [op for op in report.ops if op.is_float]
    assert {op.name for op in floats} == {"DEQUANTIZE", "ADD", "QUANTIZE"}
    assert any(tensor in op.output_names for op in floats if op.name == "ADD")
    with pytest.raises(EdgesegError, match=r"float ops .*ADD") as exc:
        tflite.check_integer_only(report, source="m.tflite")
    assert str(exc.value).startswith("m.tflite:") and "--float-layers" in str(exc.value)
    with pytest.raises(EdgesegError):
        tflite.check_integer_only(report, ["some/other/tensor"])
    tflite.check_integer_only(report, [tensor])  # allowed: the layer and its (de)quantize boundary
    # Still uint8 in and int8 out around the float island.
    assert report.input_dtype == "uint8" and report.output_dtype == "int8"


def test_unknown_float_layer_is_an_error(calibrated: bytes) -> None:
    with pytest.raises(EdgesegError, match="no layer named 'nope'"):
        tflite.quantize(calibrated, "logits", ["nope"])


def test_fused_keras_layer_that_cannot_stay_float_is_an_error(calibrated: bytes) -> None:
    """dec8_up is fused with its BN: the converter cannot keep it float, and says so."""
    with pytest.raises(EdgesegError, match="could not keep dec8_up in float.*--float-ops"):
        tflite.quantize(calibrated, "logits", ["dec8_up"])


def test_float_ops_keep_every_op_of_a_type_float(calibrated: bytes) -> None:
    report = tflite.inspect_tflite(tflite.quantize(calibrated, "logits", float_ops=["TRANSPOSE_CONV"]))
    transpose = [op for op in report.ops if op.name == "TRANSPOSE_CONV"]
    assert len(transpose) == 3 and all(op.is_float for op in transpose)
    assert not any(op.is_float for op in report.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"))
    tflite.check_integer_only(report, float_ops=["TRANSPOSE_CONV"])
    with pytest.raises(EdgesegError, match="TRANSPOSE_CONV"):
        tflite.check_integer_only(report)


def test_normalize_layer_by_keras_name_stays_float(calibrated: bytes) -> None:
    report = tflite.inspect_tflite(tflite.quantize(calibrated, "logits", ["normalize"]))
    assert [op.name for op in report.ops if op.is_float and op.name not in ("QUANTIZE", "DEQUANTIZE")]
    tflite.check_integer_only(report, ["normalize"])


@pytest.fixture(scope="module")
def debug_export(tiny_run: Path, calibrated: bytes, tmp_path_factory):
    """`--float-layers <normalisation add> --debug-quant` export of the tiny run."""
    from edgeseg.export import ExportOptions, export_cpu

    tensor = _normalize_add_tensor(calibrated)
    out = tmp_path_factory.mktemp("debugq") / "bundle"
    result = export_cpu(tiny_run, out, ExportOptions(num_calib=8, float_layers=[tensor], debug_quant=True),
                        log=lambda _: None)
    return out, result, tensor


def test_float_layers_option_keeps_the_layer_float_and_passes(debug_export) -> None:
    bundle, result, tensor = debug_export
    report = _report(bundle, "int8")
    floats = [op for op in report.ops if op.is_float]
    assert [op.name for op in floats if op.name not in ("QUANTIZE", "DEQUANTIZE")] == ["ADD"]
    assert tensor in floats[[op.name for op in floats].index("ADD")].output_names
    assert result.manifest.artifacts["int8"].extra["float_layers"] == [tensor]
    assert read_manifest(bundle).artifacts["int8"].extra["float_layers"] == [tensor]


def _keras_layer_names(tiny_run: Path) -> set[str]:
    from edgeseg.rundir import load_run_model

    model, _ = load_run_model(tiny_run)
    return {layer.name for layer in model.layers}


def test_debug_quant_writes_per_layer_report(debug_export, tiny_run: Path) -> None:
    bundle, result, _ = debug_export
    entries = json.loads((bundle / "quant_debug.json").read_text())
    assert "quant_debug.json" in read_manifest(bundle).files  # checksummed with the rest
    assert len(entries) == len(result.quant_errors) >= 20
    assert all(set(e) == {"layer", "tensor", "op", "rmse_over_scale", "max_abs_error"} for e in entries)
    errors = [e["rmse_over_scale"] for e in entries]
    assert errors == sorted(errors, reverse=True) and all(e >= 0 for e in errors)
    named = _keras_layer_names(tiny_run) & {e["layer"] for e in entries}
    assert {"classifier", "dec8_up_bn", "stem_relu"} <= named
    assert len(named) >= 0.8 * len(entries)


def test_debug_quant_names_every_layer(debug_export, tiny_run: Path) -> None:
    bundle, _, _ = debug_export
    entries = json.loads((bundle / "quant_debug.json").read_text())
    known = _keras_layer_names(tiny_run) | {"normalize", "output"}
    assert [e["layer"] for e in entries if e["layer"] not in known] == []


# --- agreement, on a model that has learnt something (the session's tiny run predicts one class) ---

COLOURS = [(40, 40, 40), (230, 30, 30), (30, 200, 30), (40, 60, 230)]


def _easy_dataset(root: Path, seed: int = 0) -> Path:
    """Boxes whose colour gives the class: learnt in seconds."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 24), ("val", 8)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            image = np.empty((48, 64, 3), np.float32)
            image[:] = COLOURS[0]
            labels = np.zeros((48, 64), np.uint8)
            for _ in range(3):
                cls, y0, x0 = int(rng.integers(1, 4)), int(rng.integers(0, 36)), int(rng.integers(0, 52))
                y1, x1 = y0 + int(rng.integers(10, 24)), x0 + int(rng.integers(10, 32))
                image[y0:y1, x0:x1] = COLOURS[cls]
                labels[y0:y1, x0:x1] = cls
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"{i:03d}.png"), image[..., ::-1])
            cv2.imwrite(str(root / f"{split}annot" / f"{i:03d}.png"), labels)
    meta = {"classes": ["bg", "red", "green", "blue"], "palette": [list(c) for c in COLOURS],
            "ignore_index": 255}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


@pytest.fixture(scope="module")
def learnt(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, run, bundle): fcn-tiny trained on the easy set, exported to int8 logits and evaluated."""
    from edgeseg.data import open_dataset
    from edgeseg.export import ExportOptions, export_cpu
    from edgeseg.rundir import RunConfig
    from edgeseg.train import train

    root = tmp_path_factory.mktemp("learnt")
    data = _easy_dataset(root / "data")
    spec = open_dataset(data, "train")
    cfg = RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(48, 64),
                    data=str(data), data_format=spec.format, epochs=6, batch_size=2, learning_rate=5e-3,
                    class_weighting="none")
    train(cfg, root / "run")
    export_cpu(root / "run", root / "bundle", ExportOptions(output="logits", eval_data=data),
               log=lambda _: None)
    return data, root / "run", root / "bundle"


def _dequantized(runner: LiteRTRunner, rgb: np.ndarray) -> np.ndarray:
    scale, zero = runner._output["quantization"]
    return (runner.infer(runner.preprocess(rgb))[0].astype(np.float32) - zero) * scale


def test_fp32_and_int8_artifacts_agree(learnt) -> None:
    data, _, bundle = learnt
    fp32, int8 = _runner(bundle, "fp32"), _runner(bundle, "int8")
    fp32_labels, int8_labels = [], []
    for rgb, _ in _val_pairs(data):
        fp32_labels.append(fp32.predict(rgb, full_size=False))
        int8_labels.append(int8.predict(rgb, full_size=False))
    fp32_labels, int8_labels = np.stack(fp32_labels), np.stack(int8_labels)
    # The model is not trivial: at least three classes each cover 2% of the predicted pixels.
    assert (np.bincount(fp32_labels.ravel(), minlength=4) > 0.02 * fp32_labels.size).sum() >= 3
    assert (fp32_labels == int8_labels).mean() >= AGREEMENT
    comparison = read_manifest(bundle).evaluation["comparison"]
    assert comparison["float"]["miou"] > 0.3 and abs(comparison["drop_points"]) < 5.0


def test_uint8_int8_model_matches_keras_on_normalised_floats(learnt) -> None:
    from edgeseg.rundir import load_run_model
    from edgeseg.runtime.preprocess import normalize, resize_rgb

    data, run, bundle = learnt
    model, cfg = load_run_model(run)
    int8 = _runner(bundle, "int8")
    assert int8.preprocess(_val_pairs(data)[0][0]).dtype == np.uint8  # raw pixels in
    agree, errors, spans = [], [], []
    for rgb, _ in _val_pairs(data):
        x = normalize(resize_rgb(rgb, *cfg.input_size), cfg.mean, cfg.std)[None]
        logits = np.asarray(model(x, training=False))[0]
        agree.append((logits.argmax(-1) == int8.predict(rgb, full_size=False)).mean())
        errors.append(np.abs(_dequantized(int8, rgb) - logits).mean())
        spans.append(np.percentile(logits, 99) - np.percentile(logits, 1))
    assert np.mean(agree) >= AGREEMENT and min(agree) >= 0.9
    # Logits themselves: mean error within 3% of their spread.
    assert np.mean(errors) <= 0.03 * np.mean(spans), (np.mean(errors), np.mean(spans))


def test_keras_and_tflite_runners_score_alike_through_evaluate(learnt, tmp_path: Path) -> None:
    """A TFLite file converted here (no bundle) and the Keras model it came from, each run by its runner
    and scored side by side by the one `evaluate`; `time_runner` reports the one latency schema."""
    from edgeseg.deploy import deploy_model
    from edgeseg.evaluate import evaluate
    from edgeseg.keras_runner import KerasRunner, keras_spec
    from edgeseg.rundir import BEST_MODEL, load_run_model
    from edgeseg.runtime.timing import time_runner

    data, run, _ = learnt
    model, cfg = load_run_model(run)
    path = tmp_path / "model.tflite"
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std)
    path.write_bytes(tflite.convert_float(deploy, "fp32"))
    pairs = _val_pairs(data)
    with KerasRunner(model, keras_spec(cfg), run / BEST_MODEL) as keras_runner, \
            LiteRTRunner(path, keras_spec(cfg, folded=True), threads=1) as tflite_runner:
        assert (keras_runner.name, tflite_runner.name) == ("keras-fp32", "litert-fp32")
        scores = evaluate({"keras": keras_runner, "tflite": tflite_runner}, pairs, cfg.classes)
        latency = time_runner(tflite_runner, warmup=1, runs=5)
    assert scores["keras"].num_images == scores["tflite"].num_images == len(pairs)
    assert scores["keras"].miou > 0.3
    assert scores["tflite"].miou == pytest.approx(scores["keras"].miou, abs=0.01)
    assert set(latency.to_dict()) == {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps"}
    assert 0 < latency.p50_ms <= latency.p90_ms <= latency.p99_ms and latency.fps > 0


def test_tiny_bundle_fp32_and_int8_labels_agree(tiny_bundle: Path, synth_data: Path) -> None:
    fp32, int8 = _runner(tiny_bundle, "fp32"), _runner(tiny_bundle, "int8")
    agree = [(fp32.predict(rgb) == int8.predict(rgb)).mean() for rgb, _ in _val_pairs(synth_data)]
    assert np.mean(agree) >= AGREEMENT


def test_labels_output_is_a_quarter_of_logits_or_less(tiny_bundle: Path, tiny_bundle_logits: Path,
                                                      synth_data: Path) -> None:
    labels, logits = _runner(tiny_bundle, "int8"), _runner(tiny_bundle_logits, "int8")
    manifest = read_manifest(tiny_bundle)
    output = manifest.artifacts["int8"].output
    assert (output.kind, output.dtype) == ("labels", "uint8")
    rgb = _val_pairs(synth_data)[0][0]
    label_map = labels.infer(labels.preprocess(rgb))
    raw_logits = logits.infer(logits.preprocess(rgb))
    assert label_map.dtype == np.uint8 and label_map.shape == (1, 64, 96)
    assert raw_logits.dtype == np.int8 and raw_logits.shape == (1, 64, 96, 6)
    assert label_map.nbytes * 4 <= raw_logits.nbytes
    assert label_map.max() < 6
    # The in-model argmax is the argmax of the same network's int8 logits.
    assert (label_map[0] == raw_logits[0].argmax(-1)).mean() >= AGREEMENT
