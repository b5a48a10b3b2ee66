"""`edgeseg bench`: every artifact side by side — format, precision, size, mIoU, latency, FPS."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Tuple  # subscripted at run time below: typing's work on 3.8

import numpy as np

from .evaluate import evaluate
from .rundir import atomic_write_text, check_writable, save_atomic
from .runtime.backends.base import Runner, runner_for
from .runtime.errors import BackendUnavailable, EdgesegError
from .runtime.manifest import MANIFEST_NAME, read_manifest, resolve_bundle, shipped_bundles
from .runtime.timing import RUNS, WARMUP, time_runner

Log = Callable[[str], None]


@dataclass
class BenchRow:
    name: str
    format: str
    precision: str
    file: str
    bytes: int
    miou: float | None = None
    #: From the bundle's manifest (`evaluation.heldout`), not measured by bench: see `heldout_miou_of`.
    heldout_miou: float | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    #: Model-only latency: `timing.Latency` (p50_ms, p90_ms, p99_ms, mean_ms, fps); empty when skipped.
    latency: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    skipped: str | None = None


FORMATS = {"litert": "TFLite", "onnxruntime": "ONNX (onnxruntime)", "tensorrt": "TensorRT"}


#: What bench measures: the row to fill, the runner (None when the row is skipped) and the model's classes.
Measured = Tuple[BenchRow, Optional[Runner], List[str]]


def _bundle_runners(bundle: Path, threads: int | None) -> Iterable[Measured]:
    manifest = read_manifest(bundle)
    for name, art in manifest.artifacts.items():
        path = bundle / art.file
        row = BenchRow(f"{bundle.name}:{name}", FORMATS.get(art.backend, art.backend), art.precision, str(path),
                       path.stat().st_size, heldout_miou=heldout_miou_of(manifest.evaluation.get("heldout"), name),
                       threads=threads)
        try:
            runner = runner_for(bundle, art, threads).activate()
        except BackendUnavailable as exc:  # a broken artifact is an error, not a skip
            row.skipped, row.threads = str(exc), None
            yield row, None, manifest.classes
            continue
        yield row, runner, manifest.classes


def heldout_miou_of(heldout: dict | None, artifact: str) -> float | None:
    """The held-out mIoU recorded for `artifact` (INT8 under "int8", float artifacts under "float")."""
    if not heldout:
        return None
    scores = heldout.get("int8" if artifact == "int8" else "float")
    return scores.get("miou") if isinstance(scores, dict) else None


def _keras_runner(run_dir: Path, threads: int | None) -> Measured:
    """A run's best model as deployed (normalisation inside, as in every artifact), run by Keras."""
    from .deploy import deploy_model
    from .keras_runner import KerasRunner, keras_spec
    from .rundir import BEST_MODEL, load_run_model

    model, cfg = load_run_model(run_dir)
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std)
    path = run_dir / BEST_MODEL
    row = BenchRow(f"{run_dir.name}:keras", "Keras", "fp32", str(path), path.stat().st_size, threads=threads)
    return row, KerasRunner(deploy, keras_spec(cfg, folded=True), path).activate(), cfg.classes


def check_options(threads: int | None, warmup: int, runs: int, has_data: bool, json_out: Path | None,
                  plot_out: Path | None) -> None:
    """Everything about a bench's options that can fail, checked before any artifact is loaded."""
    if threads is not None and threads < 1:
        raise EdgesegError(f"--threads must be at least 1, got {threads}")
    if warmup < 0 or runs < 1:
        raise EdgesegError(f"--warmup must be >= 0 and --runs >= 1, got {warmup} and {runs}")
    if plot_out is not None and not has_data:
        raise EdgesegError("--plot shows accuracy against latency: give --data so that accuracy is measured")
    for path in (json_out, plot_out):
        if path is not None:
            check_writable(path)


def to_measure(targets: Sequence[str], threads: int | None) -> Iterable[Measured]:
    """Bundles (paths or shipped names) give one runner per artifact; run folders give Keras fp32."""
    for target in targets:
        path = Path(target)
        if (path / "config.json").is_file() and not (path / MANIFEST_NAME).is_file():
            yield _keras_runner(path, threads)
        elif path.exists() or target in shipped_bundles():
            yield from _bundle_runners(resolve_bundle(target), threads)
        else:
            raise EdgesegError(f"{target}: not a bundle, a shipped bundle name or a run folder")


def bench(targets: Sequence[str], pairs: list[tuple[np.ndarray, np.ndarray]] | None, threads: int | None,
          warmup: int = WARMUP, runs: int = RUNS, log: Log = print) -> list[BenchRow]:
    """Accuracy on `pairs` (if given) and model-only latency of every runner, in one process."""
    rows = []
    for row, runner, classes in to_measure(targets, threads):
        rows.append(row)
        if runner is None:
            log(f"{row.name}: skipped ({row.skipped})")
            continue
        with runner:
            if pairs is not None:
                scores = evaluate(runner, pairs, classes)
                row.miou, row.per_class_iou = scores.miou, scores.per_class_iou
            row.latency = time_runner(runner, warmup, runs).to_dict()
        log(f"{row.name}: mIoU {'-' if row.miou is None else f'{row.miou * 100:.2f}'}, "
            f"p50 {row.latency['p50_ms']} ms")
    return rows


def write_json(rows: list[BenchRow], path: Path) -> None:
    atomic_write_text(path, json.dumps([asdict(r) for r in rows], indent=2) + "\n")


def plot(rows: list[BenchRow], path: Path) -> None:
    """Accuracy against latency (one point per artifact) and per-class IoU of each artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.skipped is None and r.miou is not None]
    if not measured:
        raise EdgesegError("nothing to plot: give --data so that accuracy is measured")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for r in measured:
        ax1.scatter(r.latency["p50_ms"], r.miou * 100)
        ax1.annotate(f"{r.name} ({r.precision})", (r.latency["p50_ms"], r.miou * 100), fontsize=8)
    ax1.set(xlabel="latency p50 (ms)", ylabel="mIoU (%)", title="accuracy against latency")
    classes = list(measured[0].per_class_iou)
    width = 0.8 / len(measured)
    for i, r in enumerate(measured):
        values = [(r.per_class_iou.get(c) or 0) * 100 for c in classes]
        ax2.bar(np.arange(len(classes)) + i * width, values, width, label=f"{r.name} ({r.precision})")
    ax2.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=45, ha="right")
    ax2.set(ylabel="IoU (%)", title="per-class IoU")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_atomic(path, partial(fig.savefig, dpi=100))
    plt.close(fig)
