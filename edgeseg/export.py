"""`edgeseg export RUN --target cpu`: a deploy bundle of TFLite models, checked and evaluated."""
from __future__ import annotations

import importlib.metadata
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .calibration.cache import CalibrationCache, cache_key
from .calibration.frames import choose_calibration
from .calibration.select import CalibrationSet
from .converters import tflite
from .data.readers import open_dataset
from .deploy import deploy_model
from .evaluate import evaluate_arrays
from .metrics import SegmentationScores
from .model import count_macs, count_params
from .rundir import RunConfig
from .runtime.backends.litert import LiteRTRunner
from .runtime.errors import EdgesegError
from .runtime.manifest import Artifact, InputSpec, Manifest, OutputSpec, staging_dir, write_bundle
from .train import load_run_model, load_split

Progress = Callable[[str], None]


@dataclass
class ExportOptions:
    precision: str = "int8"
    output: str = "logits"
    calib_data: Path | None = None
    num_calib: int = 200
    eval_data: Path | None = None
    eval_split: str = "val"
    max_drop: float | None = None
    debug_quant: bool = False
    float_layers: Sequence[str] = ()
    force: bool = False
    threads: int | None = None


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    calibration_cached: bool = False
    scores: dict[str, SegmentationScores] = field(default_factory=dict)
    quant_errors: list[tflite.LayerError] = field(default_factory=list)


def tool_versions() -> dict[str, str]:
    versions = {"edgeseg": __version__}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "onnx", "onnxruntime", "tf2onnx"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def tflite_artifact(file: str, precision: str, output: str, size: tuple[int, int]) -> Artifact:
    int8 = precision == "int8"
    out_dtype = "uint8" if output == "labels" else ("int8" if int8 else "float32")
    return Artifact(
        file=file, backend="litert", precision=precision,
        input=InputSpec(height=size[0], width=size[1], dtype="uint8" if int8 else "float32"),
        output=OutputSpec(kind=output, dtype=out_dtype),
    )


def _calibrated(deploy, cfg: RunConfig, run_dir: Path, opts: ExportOptions,
                log: Progress) -> tuple[bytes, CalibrationSet, list[np.ndarray], bool]:
    spec = open_dataset(opts.calib_data or cfg.data, "train", None if opts.calib_data else cfg.data_format)
    calib, frames = choose_calibration(spec, opts.num_calib, cfg.classes, cfg.input_size)
    key = cache_key(deploy.get_weights(), cfg.input_size, opts.output, calib.sha256)
    cache = CalibrationCache(run_dir / "calibration")
    calibrated = cache.get(key)
    if calibrated is not None:
        log(f"calibration: reusing cached ranges for {len(frames)} images ({cache.path(key).name})")
        return calibrated, calib, frames, True
    log(f"calibration: {len(frames)} images from {spec.root}")
    calibrated = tflite.calibrate(deploy, frames)
    cache.put(key, calibrated)
    return calibrated, calib, frames, False


def _evaluate_artifacts(staging: Path, manifest: Manifest, cfg: RunConfig, opts: ExportOptions,
                        log: Progress) -> dict[str, SegmentationScores]:
    spec = open_dataset(opts.eval_data, opts.eval_split)
    if spec.classes != cfg.classes:
        raise EdgesegError(f"{spec.root}: evaluation classes {spec.classes} do not match the model's {cfg.classes}")
    pairs, _ = load_split(spec, skip_bad=False)
    scores = {}
    for name, art in manifest.artifacts.items():
        with LiteRTRunner(staging, manifest, art, threads=opts.threads) as runner:
            scores[name] = evaluate_arrays(runner.predict, pairs, cfg.classes)
        log(f"eval {name}: mIoU {scores[name].miou * 100:.2f} on {len(pairs)} images")
    return scores


def comparison(float_scores: SegmentationScores, int8_scores: SegmentationScores) -> dict:
    """Float against INT8: mIoU, per-class IoU and the drop in points."""
    per_class = {
        c: {"float": f, "int8": int8_scores.per_class_iou[c],
            "drop_points": None if f is None or int8_scores.per_class_iou[c] is None
            else round((f - int8_scores.per_class_iou[c]) * 100, 3)}
        for c, f in float_scores.per_class_iou.items()
    }
    return {"float": float_scores.to_dict(), "int8": int8_scores.to_dict(),
            "drop_points": round((float_scores.miou - int8_scores.miou) * 100, 3), "per_class": per_class}


def export_cpu(run_dir: Path, out: Path, opts: ExportOptions, log: Progress = print) -> ExportResult:
    """Convert a run's best model to TFLite, check it, evaluate it and write the bundle atomically."""
    run_dir, out = Path(run_dir), Path(out)
    if opts.precision not in tflite.PRECISIONS:
        raise EdgesegError(f"unknown precision {opts.precision!r}; choose from {', '.join(tflite.PRECISIONS)}")
    if out.exists() and not opts.force:
        raise EdgesegError(f"{out}: already exists (use --force to overwrite)")
    model, cfg = load_run_model(run_dir)
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std, opts.output)
    staging = staging_dir(out)
    try:
        result = _export_into(staging, run_dir, out, deploy, cfg, opts, log)
        write_bundle(staging, out, result.manifest, force=opts.force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _export_into(staging: Path, run_dir: Path, out: Path, deploy, cfg: RunConfig, opts: ExportOptions,
                 log: Progress) -> ExportResult:
    artifacts: dict[str, Artifact] = {}
    calibration: dict = {}
    cached = False
    errors: list[tflite.LayerError] = []
    float_precision = "fp32" if opts.precision == "int8" else opts.precision
    log(f"convert: TFLite {float_precision}")
    (staging / f"model_{float_precision}.tflite").write_bytes(tflite.convert_float(deploy, float_precision))
    artifacts[float_precision] = tflite_artifact(f"model_{float_precision}.tflite", float_precision, opts.output,
                                                 cfg.input_size)
    if opts.precision == "int8":
        calibrated, calib, frames, cached = _calibrated(deploy, cfg, run_dir, opts, log)
        log("convert: TFLite int8 (full integer)")
        int8 = tflite.quantize(calibrated, opts.output, opts.float_layers)
        report = tflite.inspect_tflite(int8)
        tflite.check_integer_only(report, opts.float_layers, source=str(out / "model_int8.tflite"))
        (staging / "model_int8.tflite").write_bytes(int8)
        (staging / "calibration.cache").write_bytes(calibrated)
        artifacts["int8"] = tflite_artifact("model_int8.tflite", "int8", opts.output, cfg.input_size)
        artifacts["int8"].extra = {"ops": report.op_counts(), "float_layers": list(opts.float_layers)}
        calibration = {**calib.record(), "cache_file": "calibration.cache", "reused_cache": cached}
        if opts.debug_quant:
            log("debug-quant: per-layer quantization error")
            errors = tflite.debug_quantization(deploy, frames)
            (staging / "quant_debug.json").write_text(json.dumps(
                [e.__dict__ for e in errors], indent=2, default=float) + "\n")
    manifest = Manifest(
        classes=cfg.classes, palette=cfg.palette, artifacts=artifacts, default=opts.precision, target="cpu",
        model={"name": cfg.model, "params": count_params(deploy), "macs": count_macs(deploy.layers[2]),
               "run": str(run_dir)},
        calibration=calibration, versions=tool_versions(),
    )
    result = ExportResult(out, manifest, cached, quant_errors=errors)
    if opts.eval_data is not None:
        result.scores = _evaluate_artifacts(staging, manifest, cfg, opts, log)
        manifest.evaluation = {"data": str(opts.eval_data), "split": opts.eval_split,
                               "scores": {k: v.to_dict() for k, v in result.scores.items()}}
        if opts.precision == "int8":
            manifest.evaluation["comparison"] = comparison(result.scores["fp32"], result.scores["int8"])
            drop = manifest.evaluation["comparison"]["drop_points"]
            if opts.max_drop is not None and drop > opts.max_drop:
                raise EdgesegError(f"{out}: INT8 loses {drop:.2f} mIoU points against float, "
                                   f"more than --max-drop {opts.max_drop}; bundle not written")
    return result
