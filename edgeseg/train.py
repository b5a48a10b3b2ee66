"""Training: data checks, class weighting, per-epoch checkpoints, best-by-val-mIoU, exact resume."""
from __future__ import annotations

import atexit
import csv
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .choices import STRATEGIES
from .data.groups import counts, overlap_warning
from .data.pipeline import AUGMENTS, class_weights, make_dataset
from .data.readers import DatasetSpec, load_valid, open_dataset
from .encoder import init_encoder, set_encoder_trainable
from .evaluate import evaluate
from .keras_runner import KerasRunner, keras_runner
from .logit_adjust import fold_offsets, logit_offsets, scores_by_alpha
from .metrics import SegmentationScores
from .model import build_model
from .rundir import (
    BEST_MODEL,
    CHECKPOINTS,
    CONFIG,
    HISTORY,
    STATE,
    RunConfig,
    atomic_write_text,
    checkpoint_path,
    load_keras_model,
    read_state,
    save_atomic,
    write_state,
)
from .runtime.errors import EdgesegError


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_miou: float
    epochs_run: int
    seconds: float
    skipped: int
    #: The logit adjustment applied to the best model (see `adjust_logits`), if any.
    adjustment: dict | None = None
    #: The final model's score on the held-out groups (see `score_heldout`), if any were held out.
    heldout: dict | None = None


def split_cpu_devices() -> None:
    """With EDGESEG_CPU_DEVICES=N, expose N logical CPU devices (to run MirroredStrategy on one CPU).

    Must run before TensorFlow initialises its devices; later calls are ignored.
    """
    count = int(os.environ.get("EDGESEG_CPU_DEVICES", "0"))
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            pass


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's `fit` gives it across workers: a nested
    value (its first (x, y, weight) batch), reduced tensor by tensor, and scalars (its logs) with `axis=0`,
    reduced across replicas only."""

    def reduce(self, reduce_op, value, axis):
        reduce_one = super().reduce

        def one(v):
            scalar = self.experimental_local_results(v)[0].shape.rank == 0
            return reduce_one(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(one, value)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local devices) or `multiworker` (machines from TF_CONFIG)."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return _MultiWorkerStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise EdgesegError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


Pairs = list[tuple[np.ndarray, np.ndarray]]


def report_setup(name: str, strategy: tf.distribute.Strategy) -> dict:
    """Print what training runs on (strategy, replicas, workers, devices, GPUs seen); returned for state.json."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver else {}
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy places ops on the first GPU, else the CPU
        devices = [(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name]
    setup = {"strategy": name, "replicas": strategy.num_replicas_in_sync, "devices": devices,
             "workers": sum(len(tasks) for tasks in cluster.values()) or 1,
             "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}
    print(f"training with strategy {name}: {setup['replicas']} replica(s) on {setup['workers']} worker(s); "
          f"devices here: {', '.join(devices)}; GPUs seen: {len(setup['gpus']) or 'none'}", flush=True)
    return setup


def writable_run_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes the run: the run folder, except on a worker other than the chief of a
    multi-worker run. Every worker trains and saves alike, but, as TensorFlow advises, only the chief writes
    the run folder; the others write to a private temporary folder (removed at exit) that starts with a
    copy of the run's small files and links to its checkpoints, what `--resume` and the logit adjustment read.
    """
    if strategy.extended.should_checkpoint:
        return run_dir
    private = Path(tempfile.mkdtemp(prefix="edgeseg-worker-"))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    for name in (CONFIG, STATE, HISTORY):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, private / name)
    for checkpoint in sorted((run_dir / CHECKPOINTS).glob("epoch_*.keras")):
        (private / CHECKPOINTS).mkdir(exist_ok=True)
        (private / CHECKPOINTS / checkpoint.name).symlink_to(checkpoint.resolve())
    return private


def load_split(spec: DatasetSpec, skip_bad: bool) -> tuple[Pairs, int]:
    """Every good sample of a split as (RGB, labels) arrays, and how many bad ones were skipped."""
    _, pairs, errors = load_valid(spec, skip_bad)
    return pairs, len(errors)


def _open(cfg: RunConfig, split: str) -> DatasetSpec:
    return open_dataset(cfg.data, split, cfg.data_format, cfg.group_pattern)


def _split_names(cfg: RunConfig) -> list[str]:
    """Every split the run reads: its training splits, then its validation split."""
    return [*cfg.train_splits, *([cfg.val_split] if cfg.selects_on_val else [])]


def check_groups(cfg: RunConfig) -> dict[str, dict[str, int]]:
    """Frames per recording group of each split the run reads (indexing only, nothing loaded).

    Held-out groups must exist in those splits (a one-line error lists the groups there are) and must leave
    the validation split some frames to select on.
    """
    per_split = {split: counts(_open(cfg, split).groups) for split in _split_names(cfg)}
    known = sorted({g for c in per_split.values() for g in c})
    missing = [g for g in cfg.holdout_groups if g not in known]
    if missing:
        raise EdgesegError(f"{cfg.data}: held-out group(s) {', '.join(missing)} not found; its groups are: "
                           f"{', '.join(known) or 'none (no group pattern matches)'}")
    val = per_split.get(str(cfg.val_split), {})
    if cfg.selects_on_val and val and set(val) <= set(cfg.holdout_groups):
        raise EdgesegError(f"{cfg.data}: every {cfg.val_split} frame is in the held-out group(s) "
                           f"{', '.join(sorted(val))}, so nothing is left to pick the epoch on; pass --val-split "
                           "none (the last epoch is kept; --logit-alpha fixes the adjustment)")
    return per_split


def training_groups(cfg: RunConfig) -> list[str | None]:
    """The recording group of every frame the run trains on (indexing only)."""
    held = set(cfg.holdout_groups)
    return [g for split in cfg.train_splits for g in _open(cfg, split).groups if g not in held]


def val_overlap_warning(cfg: RunConfig) -> str | None:
    """The warning when the validation split shares recordings with the training frames (None if not)."""
    if not cfg.selects_on_val:
        return None
    held = set(cfg.holdout_groups)
    val_groups = [g for g in _open(cfg, str(cfg.val_split)).groups if g not in held]
    return overlap_warning("val", training_groups(cfg), val_groups)


def load_heldout(cfg: RunConfig) -> Pairs:
    """The frames of the run's held-out groups, from every split it reads (bad ones skipped, as in training)."""
    specs = [_open(cfg, split).by_groups(cfg.holdout_groups, inside=True) for split in _split_names(cfg)]
    return [pair for spec in specs if spec.samples for pair in load_valid(spec, skip_bad=True)[1]]


@dataclass
class TrainingData:
    """A run's training, validation and held-out arrays, its class weights and how many bad samples were
    skipped. Frames of held-out groups never reach training or validation."""

    train: Pairs
    val: Pairs
    weights: np.ndarray
    skipped: int
    heldout: Pairs

    @classmethod
    def load(cls, cfg: RunConfig, skip_bad: bool) -> TrainingData:
        held = set(cfg.holdout_groups)
        pools: dict[str, tuple[Pairs, Pairs]] = {}
        skipped = 0
        for split in _split_names(cfg):
            samples, pairs, errors = load_valid(_open(cfg, split), skip_bad)
            skipped += len(errors)
            pools[split] = ([p for s, p in zip(samples, pairs) if s.group not in held],
                            [p for s, p in zip(samples, pairs) if s.group in held])
        train_arrays = [p for split in cfg.train_splits for p in pools[split][0]]
        if not train_arrays:
            raise EdgesegError(f"{cfg.data}: no training frames left after holding out {', '.join(held)}")
        train_arrays = labeled_subset(train_arrays, cfg.labels_fraction, cfg.seed)
        val_arrays = pools[cfg.val_split][0] if cfg.selects_on_val else []
        heldout = [p for kept_out in pools.values() for p in kept_out[1]]
        weights = class_weights([m for _, m in train_arrays], cfg.num_classes, cfg.class_weighting)
        return cls(train_arrays, val_arrays, weights, skipped, heldout)


def labeled_subset(items: list, fraction: float, seed: int) -> list:
    """A seeded `fraction` of `items` (at least one), in their original order."""
    if not 0 < fraction <= 1:
        raise EdgesegError(f"labels fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * len(items)))
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:count])
    return [items[i] for i in keep]


def cosine_adam(learning_rate: float, decay_steps: int) -> keras.optimizers.Optimizer:
    """Adam whose learning rate decays along a cosine to 2% over `decay_steps`."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, decay_steps), alpha=0.02)
    return keras.optimizers.Adam(schedule)


def _compile(model: keras.Model, cfg: RunConfig, steps_per_epoch: int, epoch: int = 0) -> None:
    """Compile with a fresh optimizer whose schedule starts at `epoch`."""
    model.compile(
        optimizer=cosine_adam(cfg.learning_rate, cfg.epochs * steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.iterations.assign(epoch * steps_per_epoch)


def append_history(run_dir: Path, row: dict) -> None:
    path = run_dir / HISTORY
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
    lines = [",".join(row.keys())] + [",".join(str(r[k]) for k in row) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def train(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool = False,
    skip_bad: bool = False,
    strategy: str = "default",
    backbone_weights: Path | None = None,
    freeze_backbone: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train `cfg.model` on `cfg.data` into `run_dir`; with `resume`, continue from the last checkpoint.
    `callbacks` join every epoch's `fit` (e.g. `edgeseg.train_progress.StepProgress`)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir) if resume else {}
    if not resume and (run_dir / BEST_MODEL).exists():
        raise EdgesegError(f"{run_dir}: already holds a trained run (use --resume to continue it)")
    if resume:  # with no state yet (stopped in the first epoch) the run starts over from its config
        cfg = RunConfig.load(run_dir)
    split_cpu_devices()
    dist = make_strategy(strategy)  # before any TensorFlow op: MultiWorkerMirroredStrategy has to come first
    run_dir, setup = writable_run_dir(run_dir, dist), report_setup(strategy, dist)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    data = TrainingData.load(cfg, skip_bad)
    train_arrays, val_arrays, weights = data.train, data.val, data.weights
    crop = cfg.crop_size or cfg.input_size
    steps = math.ceil(len(train_arrays) / cfg.batch_size)
    if not resume:  # a resumed run keeps its config.json as it is
        cfg.save(run_dir)

    start_epoch = state.get("epoch", -1) + 1
    scope = dist.scope
    with scope():
        if state:
            model = load_keras_model(checkpoint_path(run_dir, state["epoch"]), compile=True)
        else:
            model = build_model(cfg.model, cfg.num_classes, (None, None), backbone_weights, freeze_backbone)
            if cfg.init_from:
                init_encoder(model, Path(cfg.init_from), cfg.model)
            _compile(model, cfg, steps)
    best = state.get("best_miou", -1.0)
    best_epoch = state.get("best_epoch", -1)
    tensorboard = keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.freeze_encoder_epochs and set_encoder_trainable(model, cfg.model, epoch >= cfg.freeze_encoder_epochs):
            with scope():
                _compile(model, cfg, steps, epoch)
        batches = make_dataset(train_arrays, crop, cfg.batch_size, training=True, seed=cfg.seed,
                               epoch=epoch, weights=weights, mean=cfg.mean, std=cfg.std,
                               augment=AUGMENTS[cfg.augment], reference=cfg.input_size)
        batches = batches.apply(tf.data.experimental.assert_cardinality(steps))
        fit = model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[tensorboard, *callbacks])
        row = {"epoch": epoch, "loss": round(float(fit.history["loss"][-1]), 6), "val_miou": "",
               "val_pixel_accuracy": ""}
        save_atomic(run_dir / CHECKPOINTS / f"epoch_{epoch:03d}.keras", model.save)
        if val_arrays:
            with keras_runner(model, cfg, checkpoint_path(run_dir, epoch)) as runner:
                scores = evaluate(runner, val_arrays, cfg.classes)
            row.update(val_miou=round(scores.miou, 6), val_pixel_accuracy=round(scores.pixel_accuracy, 6))
            if scores.miou > best:
                best, best_epoch = scores.miou, epoch
                _save_best(run_dir, model, scores)
        else:  # nothing to select on: the last epoch is the model (copied after the last epoch)
            best_epoch = epoch
        append_history(run_dir, row)
        write_state(run_dir, {"epoch": epoch, "best_epoch": best_epoch, "best_miou": best, "setup": setup})
        if on_epoch:
            on_epoch(epoch, row)
    state = read_state(run_dir)
    if not cfg.selects_on_val and state and "logit_adjustment" not in state:
        save_atomic(run_dir / BEST_MODEL, partial(shutil.copyfile, checkpoint_path(run_dir, state["epoch"])))
    if _adjustment_due(cfg, state):
        state["logit_adjustment"] = adjust_logits(run_dir, cfg, state["best_epoch"], weights, val_arrays)
        write_state(run_dir, state)
    if _heldout_due(cfg, state):
        state["heldout"] = score_heldout(run_dir, cfg, data.heldout)
        write_state(run_dir, state)
    return TrainResult(run_dir, best_epoch, best, cfg.epochs - start_epoch, time.perf_counter() - started,
                       data.skipped, state.get("logit_adjustment"), state.get("heldout"))


def _adjustment_due(cfg: RunConfig, state: dict) -> bool:
    """Whether the run still owes its best model the logit adjustment (see `adjust_logits`)."""
    if not cfg.logit_adjustment or cfg.class_weighting == "none" or "logit_adjustment" in state:
        return False
    return state.get("best_epoch", -1) >= 0 and (cfg.selects_on_val or cfg.logit_alpha is not None)


def _heldout_due(cfg: RunConfig, state: dict) -> bool:
    """Whether the run still owes its held-out groups their score."""
    return bool(cfg.holdout_groups) and state.get("best_epoch", -1) >= 0 and "heldout" not in state


def training_done(run_dir: Path) -> bool:
    """Every epoch trained, the best model written and, where due, its logit adjustment and held-out score."""
    state = read_state(run_dir)
    if not state or not (Path(run_dir) / BEST_MODEL).is_file():
        return False
    cfg = RunConfig.load(run_dir)
    return state["epoch"] + 1 >= cfg.epochs and not _adjustment_due(cfg, state) and not _heldout_due(cfg, state)


HELDOUT = "heldout.json"


def score_heldout(run_dir: Path, cfg: RunConfig, heldout: Pairs) -> dict:
    """Score the run's final model on its held-out groups once (they took no part in training or in picking
    the epoch and adjustment) and write `heldout.json`; returns the summary kept in the run's state."""
    path = Path(run_dir) / BEST_MODEL
    with keras_runner(load_keras_model(path), cfg, path) as runner:
        scores = evaluate(runner, heldout, cfg.classes)
    record = {"miou": scores.miou, "groups": list(cfg.holdout_groups), "num_images": len(heldout),
              "method": "holdout-groups", "scores": scores.to_dict()}
    atomic_write_text(Path(run_dir) / HELDOUT, json.dumps(record, indent=2) + "\n")
    return {k: record[k] for k in ("miou", "groups", "num_images", "method")}


def _save_best(run_dir: Path, model: keras.Model, scores: SegmentationScores) -> None:
    """The run's best model and its validation scores."""
    save_atomic(run_dir / BEST_MODEL, model.save)
    atomic_write_text(run_dir / "val_scores.json", json.dumps(scores.to_dict(), indent=2) + "\n")


def adjust_logits(run_dir: Path, cfg: RunConfig, best_epoch: int, weights: np.ndarray,
                  val_arrays: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pick the logit-adjustment strength on the validation split and write the adjusted best model.

    Starts from the best epoch's checkpoint (so an interrupted adjustment simply runs again). Strengths are
    tried best exact score first; the first whose offsets, folded into the classifier, score above the
    trained model is kept (folding is approximate where the upsampling mixes classes). Returns the record
    kept in the run's state: alpha (0: none helped, model kept as trained) and val mIoU before and after.
    """
    path = checkpoint_path(run_dir, best_epoch)
    model = load_keras_model(path)
    with keras_runner(model, cfg, path) as runner:
        if cfg.logit_alpha is not None:
            return _fixed_adjustment(run_dir, runner, weights, val_arrays, cfg)
        scores = scores_by_alpha(runner.logits, val_arrays, weights, cfg.classes)
        trained = scores[0.0]
        classifier = model.get_layer("classifier")
        trained_weights = classifier.get_weights()
        for alpha in sorted(scores, key=lambda a: -scores[a].miou):
            if scores[alpha].miou <= trained.miou:
                break
            classifier.set_weights(trained_weights)
            fold_offsets(model, logit_offsets(weights, alpha))
            adjusted = evaluate(runner, val_arrays, cfg.classes)
            if adjusted.miou > trained.miou:
                _save_best(run_dir, model, adjusted)
                return {"alpha": alpha, "val_miou_trained": trained.miou, "val_miou": adjusted.miou}
    return {"alpha": 0.0, "val_miou_trained": trained.miou, "val_miou": trained.miou}


def _fixed_adjustment(run_dir: Path, runner: KerasRunner, weights: np.ndarray, val_arrays: Pairs,
                      cfg: RunConfig) -> dict:
    """Fold the configured strength `cfg.logit_alpha` into the best model, without choosing it on data."""
    alpha = float(cfg.logit_alpha or 0.0)
    trained = evaluate(runner, val_arrays, cfg.classes).miou if val_arrays else None
    fold_offsets(runner.model, logit_offsets(weights, alpha))
    save_atomic(run_dir / BEST_MODEL, runner.model.save)
    adjusted = evaluate(runner, val_arrays, cfg.classes).miou if val_arrays else None
    return {"alpha": alpha, "fixed": True, "val_miou_trained": trained, "val_miou": adjusted}
