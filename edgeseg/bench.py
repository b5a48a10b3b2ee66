"""`edgeseg bench`: every artifact side by side — format, precision, size, mIoU, latency, FPS."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable  # subscripted at run time below: typing's works on 3.8

import numpy as np

from .evaluate import evaluate_arrays
from .rundir import atomic_write_text, check_writable, save_atomic
from .runtime.backends.base import load_runner
from .runtime.errors import BackendUnavailable, EdgesegError
from .runtime.manifest import MANIFEST_NAME, read_manifest, resolve_bundle, shipped_bundles
from .runtime.stats import time_calls

Log = Callable[[str], None]


@dataclass
class Candidate:
    """One thing to measure: how to label a frame, how to time the model alone, and its file."""

    name: str
    format: str
    precision: str
    path: Path
    predict: Callable[[np.ndarray], np.ndarray]
    timer: Callable[[int, int], np.ndarray]
    classes: list[str]
    close: Callable[[], None] = lambda: None
    #: The artifact's recorded held-out estimate (mIoU on recordings its recipe never trained on), if any.
    heldout_miou: float | None = None


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
    latency_ms: dict[str, float] = field(default_factory=dict)
    fps: float | None = None
    threads: int | None = None
    skipped: str | None = None


FORMATS = {"litert": "TFLite", "onnxruntime": "ONNX (onnxruntime)", "tensorrt": "TensorRT"}


def _bundle_candidates(bundle: Path, threads: int | None) -> Iterable[Candidate | BenchRow]:
    manifest = read_manifest(bundle)
    for name, art in manifest.artifacts.items():
        try:
            runner = load_runner(bundle, name, threads).activate()
        except BackendUnavailable as exc:  # a broken artifact is an error, not a skip
            yield BenchRow(f"{bundle.name}:{name}", FORMATS.get(art.backend, art.backend), art.precision,
                           str(bundle / art.file), (bundle / art.file).stat().st_size, skipped=str(exc))
            continue
        yield Candidate(f"{bundle.name}:{name}", FORMATS.get(art.backend, art.backend), art.precision,
                        bundle / art.file, runner.predict, runner.time_inference, manifest.classes,
                        runner.deactivate, heldout_miou_of(manifest.evaluation.get("heldout"), name))


def heldout_miou_of(heldout: dict | None, artifact: str) -> float | None:
    """The held-out mIoU recorded for `artifact` (INT8 under "int8", float artifacts under "float")."""
    if not heldout:
        return None
    scores = heldout.get("int8" if artifact == "int8" else "float")
    return scores.get("miou") if isinstance(scores, dict) else None


def _keras_candidate(run_dir: Path) -> Candidate:
    import tensorflow as tf

    from .deploy import deploy_model
    from .train import keras_label_fn, load_run_model

    model, cfg = load_run_model(run_dir)
    deploy = deploy_model(model, cfg.model, cfg.num_classes, cfg.input_size, cfg.mean, cfg.std)
    forward = tf.function(lambda x: deploy(x, training=False))

    def timer(warmup: int, runs: int) -> np.ndarray:
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *cfg.input_size, 3)).astype(np.float32))
        return time_calls(lambda: forward(x).numpy(), warmup, runs)

    return Candidate(f"{run_dir.name}:keras", "Keras", "fp32", run_dir / "model.keras",
                     keras_label_fn(model, cfg.input_size, cfg.mean, cfg.std), timer, cfg.classes)


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


def latency_summary(times: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 of model-only latencies in ms."""
    return {k: round(float(v), 3) for k, v in zip(("p50", "p90", "p99"), np.percentile(times, [50, 90, 99]))}


def candidates(targets: Sequence[str], threads: int | None) -> Iterable[Candidate | BenchRow]:
    """Bundles (paths or shipped names) give one candidate per artifact; run folders give Keras fp32."""
    for target in targets:
        path = Path(target)
        if (path / "config.json").is_file() and not (path / MANIFEST_NAME).is_file():
            yield _keras_candidate(path)
        elif path.exists() or target in shipped_bundles():
            yield from _bundle_candidates(resolve_bundle(target), threads)
        else:
            raise EdgesegError(f"{target}: not a bundle, a shipped bundle name or a run folder")


def bench(targets: Sequence[str], pairs: list[tuple[np.ndarray, np.ndarray]] | None, threads: int | None,
          warmup: int = 20, runs: int = 100, log: Log = print) -> list[BenchRow]:
    """Accuracy on `pairs` (if given) and model-only latency of every candidate, in one process."""
    rows = []
    for cand in candidates(targets, threads):
        if isinstance(cand, BenchRow):
            log(f"{cand.name}: skipped ({cand.skipped})")
            rows.append(cand)
            continue
        try:
            row = BenchRow(cand.name, cand.format, cand.precision, str(cand.path), cand.path.stat().st_size,
                           threads=threads, heldout_miou=cand.heldout_miou)
            if pairs is not None:
                scores = evaluate_arrays(cand.predict, pairs, cand.classes)
                row.miou, row.per_class_iou = scores.miou, scores.per_class_iou
            row.latency_ms = latency_summary(cand.timer(warmup, runs))
            row.fps = round(1000.0 / row.latency_ms["p50"], 1)
        finally:
            cand.close()
        log(f"{row.name}: mIoU {'-' if row.miou is None else f'{row.miou * 100:.2f}'}, p50 {row.latency_ms['p50']} ms")
        rows.append(row)
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
        ax1.scatter(r.latency_ms["p50"], r.miou * 100)
        ax1.annotate(f"{r.name} ({r.precision})", (r.latency_ms["p50"], r.miou * 100), fontsize=8)
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
