"""`edgeseg build`: data -> train -> calibrate -> export -> check -> evaluate -> bundle + report.

cpu: TFLite fp32 and INT8. jetson: fp32 and Q/DQ INT8 ONNX, conformance-checked, with the TensorRT
engine built when TensorRT and a GPU are present (else the `edgeseg compile` and `trtexec` lines).

Each stage whose output exists is reused on a re-run (an interrupted training resumes), so a build
continues where it stopped; `force` rebuilds everything.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .console import detail
from .data.groups import parse_groups
from .data.readers import DatasetSpec, open_dataset
from .data.synth import generate_synthetic
from .export import ExportOptions, export_bundle
from .progress import stage
from .rundir import STATE, RunConfig, atomic_write_text
from .runtime.backends.base import runner_for
from .runtime.errors import EdgesegError
from .runtime.manifest import MANIFEST_NAME, read_manifest
from .runtime.timing import time_runner
from .summary import heldout_line
from .train import check_groups, train, training_done
from .train_progress import StepProgress

Log = Callable[[str], None]


@dataclass
class BuildOptions:
    out: Path = Path("build/cpu")
    data: Path | None = None
    run: Path | None = None
    model: str = "fcn-tiny"
    epochs: int = 8
    batch_size: int = 8
    learning_rate: float = 5e-3
    input_size: tuple[int, int] = (96, 128)
    seed: int = 0
    num_calib: int = 200
    max_drop: float | None = None
    output: str = "logits"
    threads: int | None = None
    force: bool = False
    #: Recordings kept out of training, for the held-out estimate: "auto" (the last of the training split's
    #: groups, when it has two or more), "none", or comma-separated group names.
    holdout: str = "auto"


def holdout_groups(spec: DatasetSpec, choice: str) -> list[str]:
    """The groups a build holds out of training (see `BuildOptions.holdout`)."""
    if choice == "none":
        return []
    if choice != "auto":
        return parse_groups(choice)
    groups = sorted({g for g in spec.groups if g is not None})
    return groups[-1:] if len(groups) >= 2 else []


def _stage_train(opts: BuildOptions, data: Path, log: Log) -> Path:
    if opts.run is not None:
        log(f"train: reusing {opts.run}")
        return opts.run
    run_dir = opts.out / "run"
    if training_done(run_dir):
        log(f"train: reusing {run_dir} (done)")
        return run_dir
    resume = (run_dir / STATE).is_file()
    spec = open_dataset(data, "train")
    cfg = RunConfig(model=opts.model, classes=spec.classes, palette=spec.palette, input_size=opts.input_size,
                    data=str(Path(data).resolve()), data_format=spec.format, seed=opts.seed, epochs=opts.epochs,
                    batch_size=opts.batch_size, learning_rate=opts.learning_rate,
                    holdout_groups=holdout_groups(spec, opts.holdout))
    check_groups(cfg)
    if cfg.holdout_groups:
        log(f"train: holding out recording(s) {', '.join(cfg.holdout_groups)} for the held-out estimate")
    log(f"train: {'resuming' if resume else 'training'} {opts.model} for {opts.epochs} epochs on {data}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with stage(f"train: {opts.model}") as bar:
        def on_epoch(epoch: int, row: dict) -> None:
            val = f", val mIoU {row['val_miou'] * 100:.2f}" if row["val_miou"] != "" else ""
            line = f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}{val}"
            bar.update(description=f"train: {line}")
            detail(f"  {line}")

        result = train(cfg, run_dir, resume=resume, on_epoch=on_epoch, callbacks=[StepProgress(bar, cfg.epochs)])
    adjusted = result.adjustment or {}
    log(f"train: best val mIoU {result.best_miou * 100:.2f} (epoch {result.best_epoch + 1}) in {result.seconds:.0f} s"
        + (f", {adjusted['val_miou'] * 100:.2f} after logit adjustment" if adjusted.get("alpha") else ""))
    return run_dir


def write_report(bundle: Path, threads: int | None) -> dict:
    """report.json and report.md: model, params, MACs, sizes, accuracy and latency of each artifact."""
    manifest = read_manifest(bundle)
    artifacts = {}
    for name, art in manifest.artifacts.items():
        scores = manifest.evaluation.get("scores", {}).get(name, {})
        with runner_for(bundle, art, threads) as runner:
            latency = time_runner(runner).to_dict()
        artifacts[name] = {"file": art.file, "backend": art.backend, "precision": art.precision,
                           "bytes": (bundle / art.file).stat().st_size, "miou": scores.get("miou"),
                           "per_class_iou": scores.get("per_class_iou"), "latency": latency}
    report = {"model": manifest.model, "target": manifest.target, "threads": threads, "artifacts": artifacts,
              "comparison": manifest.evaluation.get("comparison"), "heldout": manifest.evaluation.get("heldout"),
              "overlap_warning": manifest.evaluation.get("overlap_warning")}
    atomic_write_text(bundle / "report.json", json.dumps(report, indent=2) + "\n")
    alpha = manifest.model.get("logit_adjustment")
    adjusted = f" Class-weighting prior taken back from the logits with strength {alpha}." if alpha else ""
    lines = [f"# Build report: {manifest.model.get('name')}", "",
             f"Params {manifest.model.get('params', 0):,}, MACs {manifest.model.get('macs', 0):,}.{adjusted}", "",
             "| artifact | backend | precision | size KiB | mIoU % | p50 ms | p90 ms | p99 ms | FPS |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, a in artifacts.items():
        lat = a["latency"]
        miou = "-" if a["miou"] is None else f"{a['miou'] * 100:.2f}"
        lines.append(f"| {name} | {a['backend']} | {a['precision']} | {a['bytes'] / 1024:.1f} | {miou} | "
                     f"{lat['p50_ms']} | {lat['p90_ms']} | {lat['p99_ms']} | {lat['fps']} |")
    split = manifest.evaluation.get("split", "val")
    lines += ["", f"mIoU above: the {split} split."]
    if report["overlap_warning"]:
        lines.append(f"Warning: {report['overlap_warning']}.")
    lines.append(heldout_line(report["heldout"]) + "." if report["heldout"] else
                 "No held-out estimate: the data has fewer than two recordings (groups) to hold one out.")
    comparison = report["comparison"]
    if comparison:
        lines += ["", f"INT8 drop: {comparison['drop_points']:.2f} mIoU points.", "",
                  "| class | float IoU % | INT8 IoU % |", "| --- | ---: | ---: |"]
        for cls, row in comparison["per_class"].items():
            cells = ["-" if row[k] is None else f"{row[k] * 100:.2f}" for k in ("float", "int8")]
            lines.append(f"| {cls} | {cells[0]} | {cells[1]} |")
    atomic_write_text(bundle / "report.md", "\n".join(lines) + "\n")
    return report


def _compile_on_device(bundle: Path, log: Log) -> None:
    """Check the ONNX for TensorRT; build the engine when TensorRT and a GPU are here, else say how."""
    from .converters.tensorrt import compile_bundle, trtexec_command
    from .converters.trt_conformance import check_bundle
    from .runtime.backends.tensorrt import require_tensorrt

    violations = check_bundle(bundle)
    if violations:
        raise EdgesegError(f"{bundle}: not TensorRT-conformant: {violations[0]}")
    log("check: every ONNX artifact is TensorRT-conformant")
    try:
        require_tensorrt()
    except EdgesegError as exc:
        manifest = read_manifest(bundle)
        onnx = bundle / manifest.artifacts["int8"].file
        log(f"compile: skipped here ({exc}). The bundle holds the Q/DQ ONNX, the calibration ranges and the "
            f"manifest; build the engine on the Jetson with:\n  edgeseg compile {bundle}\nor with TensorRT's "
            f"own tool:\n  {trtexec_command(onnx, bundle / 'tensorrt-int8.engine', 'int8')}")
        return
    compile_bundle(bundle, "int8", log=log)


def build(opts: BuildOptions, target: str = "cpu", log: Log = print) -> tuple[Path, dict]:
    """The whole path for `target` (cpu or jetson); returns the bundle folder and its report."""
    if opts.force and opts.out.exists():
        shutil.rmtree(opts.out)
    data = opts.data
    if data is None:
        data = opts.out / "data"
        if not (data / "dataset.yaml").is_file():
            log(f"data: generating the built-in synthetic dataset in {data}")
            generate_synthetic(data, force=True)
    run_dir = _stage_train(opts, data, log)
    bundle = opts.out / "bundle"
    if (bundle / MANIFEST_NAME).is_file() and (bundle / "report.json").is_file():
        log(f"export: reusing {bundle}")
        return bundle, json.loads((bundle / "report.json").read_text())
    export_bundle(run_dir, bundle, ExportOptions(
        precision="int8", output=opts.output, num_calib=opts.num_calib, eval_data=data, max_drop=opts.max_drop,
        threads=opts.threads, force=True), target, log=log)
    if target == "jetson":
        _compile_on_device(bundle, log)
    log("report: measuring latency")
    with stage("report: measuring latency"):
        return bundle, write_report(bundle, opts.threads)
