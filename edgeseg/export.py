"""`edgeseg export RUN --target cpu|jetson`: a deploy bundle, checked and evaluated.

cpu: TFLite fp32/fp16 and full-integer INT8 for LiteRT. jetson: fp32 ONNX and a Q/DQ INT8 ONNX that
TensorRT consumes, checked for TensorRT conformance and run in onnxruntime on the CPU; the engine
itself is built on the device (`edgeseg compile`).
"""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Tuple

import numpy as np

from . import __version__
from .calibration.cache import CalibrationCache, cache_key
from .calibration.frames import choose_calibration
from .calibration.select import CalibrationSet, content_hash
from .converters import tflite
from .data.groups import overlap_warning
from .data.readers import open_dataset
from .deploy import deploy_model
from .evaluate import Tally, tally
from .export_options import ExportOptions, check_export
from .metrics import SegmentationScores
from .model import count_macs, count_params
from .progress import Tracked, stage
from .rundir import RunConfig, load_run_model, read_state
from .runtime.backends.base import runner_for
from .runtime.errors import EdgesegError
from .runtime.manifest import Artifact, InputSpec, Manifest, OutputSpec, portable_path, staging_dir, write_bundle
from .train import load_heldout, load_split, training_groups

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    calibration_cached: bool = False
    #: The run's calibration cache entry this export used or wrote.
    calibration_cache: Path | None = None
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


def _calibrated(run_dir: Path, deploy, cfg: RunConfig, opts: ExportOptions, kind: str, variant: str,
                compute: Callable[[list[np.ndarray]], bytes], result: ExportResult,
                log: Progress) -> tuple[CalibrationSet, list[np.ndarray], bytes]:
    """The calibration set, its frames and `compute(frames)` (activation ranges), from the run's cache when
    the same model, `variant` (what else shapes the graph) and images were calibrated before."""
    spec = open_dataset(opts.calib_data or cfg.data, "train", None if opts.calib_data else cfg.data_format,
                        None if opts.calib_data else cfg.group_pattern)
    if opts.calib_data is None:  # held-out recordings shape nothing, activation ranges included
        spec = spec.by_groups(cfg.holdout_groups, inside=False)
    calib, frames = choose_calibration(spec, opts.num_calib, cfg.classes, cfg.input_size)
    log(f"calibration: {len(frames)} images from {calib.root}")
    cache = CalibrationCache(run_dir / "calibration")
    key = cache_key(deploy.get_weights(), cfg.input_size, variant, calib.sha256)
    ranges = cache.get(key, kind)
    result.calibration_cached = ranges is not None
    result.calibration_cache = cache.path(key, kind)
    if ranges is not None:
        log(f"calibration: reusing cached ranges ({cache.path(key, kind).name})")
    else:
        # TFLite reads the frames once, in order (a counted bar); the Q/DQ calibration makes two passes
        with stage("calibration: observing activation ranges", total=len(frames) if kind == "tflite" else None) \
                as bar:
            ranges = compute(Tracked(frames, bar))
        cache.put(key, kind, ranges)
    return calib, frames, ranges


def _eval_pairs(cfg: RunConfig, opts: ExportOptions, log: Progress
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str | None]:
    """The evaluation frames, and the warning when they come from recordings the model trained on."""
    spec = open_dataset(opts.eval_data, opts.eval_split)
    if spec.classes != cfg.classes:
        raise EdgesegError(f"{spec.root}: evaluation classes {spec.classes} do not match the model's {cfg.classes}")
    warning = overlap_warning(opts.eval_split, training_groups(cfg), spec.groups)
    if warning:
        log(f"warning: {warning}")
    return load_split(spec, skip_bad=False)[0], warning


def _tally_artifacts(staging: Path, manifest: Manifest, pairs: list[tuple[np.ndarray, np.ndarray]],
                     cfg: RunConfig, opts: ExportOptions) -> dict[str, Tally]:
    """Every artifact of a bundle being written, side by side over `pairs` in one pass."""
    with ExitStack() as active, stage(f"eval {', '.join(manifest.artifacts)}", total=len(pairs)) as bar:
        runners = {name: active.enter_context(runner_for(staging, art, threads=opts.threads))
                   for name, art in manifest.artifacts.items()}
        return tally(runners, pairs, cfg.classes, progress=bar.advance)


def _evaluate_artifacts(staging: Path, manifest: Manifest, pairs: list[tuple[np.ndarray, np.ndarray]],
                        cfg: RunConfig, opts: ExportOptions, log: Progress) -> dict[str, SegmentationScores]:
    """The scores of `_tally_artifacts`, logged."""
    scores = {name: counted.scores() for name, counted in
              _tally_artifacts(staging, manifest, pairs, cfg, opts).items()}
    for name, score in scores.items():
        log(f"eval {name}: mIoU {score.miou * 100:.2f} on {len(pairs)} images")
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


def _logit_adjustment(run_dir: Path) -> dict:
    """`{"logit_adjustment": alpha}` when training chose one (0: logits kept as trained; see `edgeseg.logit_adjust`)."""
    record = read_state(run_dir).get("logit_adjustment")
    return {"logit_adjustment": record["alpha"]} if record else {}


def export_bundle(run_dir: Path, out: Path, opts: ExportOptions, target: str = "cpu",
                  log: Progress = print) -> ExportResult:
    """Convert a run's best model for `target`, check it, evaluate it and write the bundle atomically."""
    run_dir, out = Path(run_dir), Path(out)
    check_export(out, opts, target)
    adjustment = _logit_adjustment(run_dir)  # reads (and checks) state.json before the model is loaded
    model, cfg = load_run_model(run_dir)
    heldout_sources = _heldout_sources(run_dir, cfg, opts)
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std, opts.output)
    staging = staging_dir(out)
    try:
        convert = _convert_cpu if target == "cpu" else _convert_jetson
        result = ExportResult(out, Manifest(
            classes=cfg.classes, palette=cfg.palette, artifacts={}, default=opts.precision, target=target,
            model={"name": cfg.model, "params": count_params(deploy), "macs": count_macs(network(deploy)),
                   "run": portable_path(run_dir), **adjustment},
            versions=tool_versions()))
        pairs, warning = _eval_pairs(cfg, opts, log) if opts.eval_data is not None else (None, None)
        convert(staging, run_dir, deploy, cfg, opts, pairs, result, log)
        if pairs is not None:
            _record_evaluation(staging, result, pairs, cfg, opts, log)
            if warning:
                result.manifest.evaluation["overlap_warning"] = warning
        if heldout_sources:
            result.manifest.evaluation["heldout"] = heldout_estimate(
                staging, result.manifest, run_dir, heldout_sources, opts, target, log)
        write_bundle(staging, out, result.manifest, force=opts.force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def export_cpu(run_dir: Path, out: Path, opts: ExportOptions, log: Progress = print) -> ExportResult:
    """`export_bundle` for the CPU target (TFLite)."""
    return export_bundle(run_dir, out, opts, "cpu", log)


HeldoutSource = Tuple[Path, RunConfig]


def _heldout_sources(run_dir: Path, cfg: RunConfig, opts: ExportOptions) -> list[HeldoutSource]:
    """The runs whose held-out groups give the bundle's estimate (`opts.heldout_runs`, else this run when it
    held groups out), checked before any conversion; empty when there are none."""
    if not opts.heldout_runs:
        return [(run_dir, cfg)] if cfg.holdout_groups else []
    return heldout_run_configs(opts.heldout_runs, cfg.classes, cfg.model, cfg.input_size)


def heldout_run_configs(sources: Sequence[Path], classes: list[str], model: str,
                        input_size: Sequence[int]) -> list[HeldoutSource]:
    """Each of `sources` with its config, checked (else a one-line error naming the run): it held groups out,
    it is `model` at `input_size` predicting `classes`, and no two runs hold out the same group (each frame
    is scored once when their folds are pooled), and every run names groups with the same pattern."""
    checked: list[HeldoutSource] = []
    held_by: dict[str, Path] = {}
    for source in sources:
        source_cfg = RunConfig.load(source)
        if not source_cfg.holdout_groups:
            raise EdgesegError(f"{source}: trained without --holdout-groups, so it has no held-out recordings")
        if checked and source_cfg.group_pattern != checked[0][1].group_pattern:
            raise EdgesegError(f"{source}: groups frames by --group-pattern {source_cfg.group_pattern!r}, "
                               f"{checked[0][0]} by {checked[0][1].group_pattern!r}; pooled folds must group alike")
        if source_cfg.classes != classes:
            raise EdgesegError(f"{source}: classes {source_cfg.classes} differ from the exported model's")
        if source_cfg.model != model or tuple(source_cfg.input_size) != tuple(input_size):
            raise EdgesegError(f"{source}: {source_cfg.model} at {'x'.join(map(str, source_cfg.input_size))}, "
                               f"not the recipe's {model} at {'x'.join(map(str, input_size))}")
        for group in source_cfg.holdout_groups:
            if group in held_by:
                raise EdgesegError(f"{source}: holds out {group}, as {held_by[group]} does; each recording may "
                                   "be scored by one run only")
            held_by[group] = source
        checked.append((source, source_cfg))
    return checked


def heldout_estimate(staging: Path, manifest: Manifest, run_dir: Path, sources: Sequence[HeldoutSource],
                     opts: ExportOptions, target: str, log: Progress) -> dict:
    """Accuracy on recordings the model never saw: the artifacts of runs trained with `--holdout-groups`
    (this run, or `opts.heldout_runs` of the same recipe, each exported here alike) scored on their held-out
    groups, all frames pooled into one confusion matrix per artifact (one run per fold of a group k-fold or
    leave-one-group-out estimate).

    Returns `{"miou": <the default artifact's>, "method", "groups", "num_images", "folds": [per run],
    <artifact>: scores}`.
    """
    pooled: dict[str, Tally] = {}
    folds = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-heldout-") as tmp:
        for index, (source, source_cfg) in enumerate(sources):
            pairs = load_heldout(source_cfg)
            log(f"held-out estimate: {len(pairs)} frames of {', '.join(source_cfg.holdout_groups)} ({source})")
            fold_staging, fold_manifest = staging, manifest
            if source != run_dir:
                fold_staging = Path(tmp) / f"fold{index}"
                inner = replace(opts, eval_data=None, max_drop=None, debug_quant=False, heldout_runs=(), force=True)
                fold_manifest = export_bundle(source, fold_staging, inner, target, log=lambda _: None).manifest
            tallies = _tally_artifacts(fold_staging, fold_manifest, pairs, source_cfg, opts)
            folds.append({"run": source.name, "groups": list(source_cfg.holdout_groups), "num_images": len(pairs),
                          **{_heldout_key(name): t.scores().miou for name, t in tallies.items()}})
            pooled = {name: pooled[name] + t if name in pooled else t for name, t in tallies.items()}
            shutil.rmtree(Path(tmp) / f"fold{index}", ignore_errors=True)
    scores = {name: t.scores() for name, t in pooled.items()}
    record: dict = {"method": _heldout_method(sources, run_dir),
                    "groups": [g for fold in folds for g in fold["groups"]],
                    "num_images": sum(fold["num_images"] for fold in folds), "folds": folds}
    record.update({_heldout_key(name): s.to_dict() for name, s in scores.items()})
    record["miou"] = scores[manifest.default].miou
    return record


def _heldout_key(artifact: str) -> str:
    """`float` for the float artifact (fp32 or fp16), else the artifact's name (`int8`)."""
    return "float" if artifact in ("fp32", "fp16") else artifact


def _heldout_method(sources: Sequence[HeldoutSource], run_dir: Path) -> str:
    if len(sources) > 1:
        return (f"group folds: {len(sources)} runs of the same recipe, each trained without its fold's "
                "groups and exported alike; one confusion matrix pooled over every held-out frame")
    if sources[0][0] == run_dir:
        return "holdout-groups: the model itself was trained without these recordings"
    return "holdout-groups: a run of the same recipe trained without these recordings, exported alike"


def _record_evaluation(staging: Path, result: ExportResult, pairs: list[tuple[np.ndarray, np.ndarray]],
                       cfg: RunConfig, opts: ExportOptions, log: Progress) -> None:
    manifest = result.manifest
    result.scores = _evaluate_artifacts(staging, manifest, pairs, cfg, opts, log)
    manifest.evaluation = {**manifest.evaluation, **_evaluation_set(opts),
                           "scores": {k: v.to_dict() for k, v in result.scores.items()}}
    if opts.precision == "int8":
        manifest.evaluation["comparison"] = comparison(result.scores["fp32"], result.scores["int8"])
        drop = manifest.evaluation["comparison"]["drop_points"]
        if opts.max_drop is not None and drop > opts.max_drop:
            raise EdgesegError(f"{result.bundle}: INT8 loses {drop:.2f} mIoU points against float, "
                               f"more than --max-drop {opts.max_drop}; bundle not written")


def _evaluation_set(opts: ExportOptions) -> dict:
    """The evaluation images as a bundle records them: data folder (`portable_path`), split, files, hash."""
    spec = open_dataset(opts.eval_data, opts.eval_split)
    files = [s.image.relative_to(spec.root).as_posix() for s in spec.samples]
    return {"data": portable_path(spec.root), "split": opts.eval_split, "files": files,
            "sha256": content_hash(Path(spec.root), files)}


def _cache_record(result: ExportResult) -> dict:
    """Where the calibration cache entry is, relative to the run folder, and whether it was reused."""
    return {"cache": f"calibration/{result.calibration_cache.name}" if result.calibration_cache else None,
            "reused_cache": result.calibration_cached}


def _convert_cpu(staging: Path, run_dir: Path, deploy, cfg: RunConfig, opts: ExportOptions,
                 pairs, result: ExportResult, log: Progress) -> None:
    """TFLite: the float model, and for INT8 the full-integer one (checked integer-only)."""
    artifacts = result.manifest.artifacts
    float_precision = "fp32" if opts.precision == "int8" else opts.precision
    log(f"convert: TFLite {float_precision}")
    with stage(f"convert: TFLite {float_precision}"):
        (staging / f"model_{float_precision}.tflite").write_bytes(tflite.convert_float(deploy, float_precision))
    artifacts[float_precision] = tflite_artifact(f"model_{float_precision}.tflite", float_precision, opts.output,
                                                 cfg.input_size)
    if opts.precision != "int8":
        return
    calib, frames, calibrated = _calibrated(run_dir, deploy, cfg, opts, "tflite", opts.output,
                                            lambda frames: tflite.calibrate(deploy, frames), result, log)
    log("convert: TFLite int8 (full integer)")
    with stage("convert: TFLite int8 (full integer)"):
        int8 = tflite.quantize(calibrated, opts.output, opts.float_layers, opts.float_ops)
    report = tflite.inspect_tflite(int8)
    tflite.check_integer_only(report, opts.float_layers, opts.float_ops,
                              source=str(result.bundle / "model_int8.tflite"))
    (staging / "model_int8.tflite").write_bytes(int8)
    artifacts["int8"] = tflite_artifact("model_int8.tflite", "int8", opts.output, cfg.input_size)
    artifacts["int8"].extra = {"ops": report.op_counts(), "float_layers": list(opts.float_layers),
                               "float_ops": list(opts.float_ops)}
    # the cache (a float model with recorded ranges, as large as the fp32 file) stays in the run
    result.manifest.calibration = {**calib.record(), **_cache_record(result)}
    if opts.debug_quant:
        log("debug-quant: per-layer quantization error")
        result.quant_errors = tflite.debug_quantization(deploy, frames)
        (staging / "quant_debug.json").write_text(json.dumps(
            [e.__dict__ for e in result.quant_errors], indent=2, default=float) + "\n")


def _convert_jetson(staging: Path, run_dir: Path, deploy, cfg: RunConfig, opts: ExportOptions,
                    pairs, result: ExportResult, log: Progress) -> None:
    """ONNX: fp32 (static shape, NCHW by default) and the Q/DQ INT8 model TensorRT consumes."""
    from .converters import onnx as onnx_export
    from .converters import onnx_qdq

    artifacts = result.manifest.artifacts
    log(f"convert: ONNX fp32 (opset {opts.opset}, {opts.layout.upper()}, batch {opts.batch})")
    with stage("convert: ONNX fp32"):
        artifacts["fp32"] = onnx_export.export_onnx(deploy, staging / "model_fp32.onnx", opset=opts.opset,
                                                    layout=opts.layout, batch=opts.batch)
    if opts.precision != "int8":
        return
    method = opts.calib_method or ("auto" if pairs is not None else "entropy")
    # thresholds are keyed by the ONNX graph's tensor names, which layout, opset and batch change, the
    # percentile method's threshold depends on its percentile, and which tensors are covered on the version
    variant = (f"{opts.output}|{opts.layout}|opset{opts.opset}|batch{opts.batch}|p{onnx_qdq.PERCENTILE}"
               f"|v{onnx_qdq.RANGES_VERSION}")
    calib, frames, ranges = _calibrated(
        run_dir, deploy, cfg, opts, "qdq", variant,
        lambda frames: json.dumps(onnx_qdq.calibrate(staging / "model_fp32.onnx", frames)).encode(), result, log)
    score_fn = None if pairs is None else onnx_qdq.miou_scorer(pairs, cfg.classes, threads=opts.threads)
    log(f"convert: Q/DQ INT8 ONNX (calibration {method})")
    with stage(f"convert: Q/DQ INT8 ONNX (calibration {method})"):
        artifacts["int8"], scores = onnx_qdq.quantize_qdq(
            staging / "model_fp32.onnx", staging / "model_int8_qdq.onnx", frames, method, score_fn,
            thresholds=json.loads(ranges))
    placed = artifacts["int8"].extra["qdq_placement"]
    log(f"Q/DQ placement: {placed['qdq_pairs']} pairs, {len(placed['float_convs'])} float convolution(s), "
        f"{placed['skip_adds']['one_input_quantized']} skip Add(s) fused into their convolution")
    (staging / "calibration_ranges.json").write_bytes(ranges)
    result.manifest.calibration = {**calib.record(), **_cache_record(result), "ranges_file": "calibration_ranges.json",
                                   "method": artifacts["int8"].extra["calibration_method"],
                                   "method_scores": scores}


def network(deploy):
    """The FCN inside a deploy model (between normalisation and the optional argmax)."""
    import keras

    return next(layer for layer in deploy.layers if isinstance(layer, keras.Model))
