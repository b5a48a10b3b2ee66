"""Training: data checks, class weighting, per-epoch checkpoints, best-by-val-mIoU, exact resume."""
from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .data.pipeline import class_weights, make_dataset
from .data.readers import DatasetSpec, load_valid, open_dataset
from .encoder import init_encoder, set_encoder_trainable
from .evaluate import evaluate_arrays
from .logit_adjust import fold_offsets, logit_offsets, scores_by_alpha
from .metrics import SegmentationScores
from .model import build_model
from .rundir import (
    BEST_MODEL,
    HISTORY,
    RunConfig,
    atomic_write_text,
    checkpoint_path,
    load_keras_model,
    read_state,
    save_atomic,
    write_state,
)
from .runtime.errors import EdgesegError

STRATEGIES = ("default", "mirrored", "multiworker")


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


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local devices) or `multiworker` (machines from TF_CONFIG)."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise EdgesegError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def load_split(spec: DatasetSpec, skip_bad: bool) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Every good sample of a split as (RGB, labels) arrays, and how many bad ones were skipped."""
    _, pairs, errors = load_valid(spec, skip_bad)
    return pairs, len(errors)


@dataclass
class TrainingData:
    """A run's training and validation arrays, its class weights and how many bad samples were skipped."""

    train: list[tuple[np.ndarray, np.ndarray]]
    val: list[tuple[np.ndarray, np.ndarray]]
    weights: np.ndarray
    skipped: int

    @classmethod
    def load(cls, cfg: RunConfig, skip_bad: bool) -> TrainingData:
        train_arrays, bad_train = load_split(open_dataset(cfg.data, "train", cfg.data_format), skip_bad)
        train_arrays = labeled_subset(train_arrays, cfg.labels_fraction, cfg.seed)
        val_arrays, bad_val = load_split(open_dataset(cfg.data, "val", cfg.data_format), skip_bad)
        weights = class_weights([m for _, m in train_arrays], cfg.num_classes, cfg.class_weighting)
        return cls(train_arrays, val_arrays, weights, bad_train + bad_val)


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
) -> TrainResult:
    """Train `cfg.model` on `cfg.data` into `run_dir`; with `resume`, continue from the last checkpoint."""
    run_dir = Path(run_dir)
    state = read_state(run_dir) if resume else {}
    if not resume and (run_dir / BEST_MODEL).exists():
        raise EdgesegError(f"{run_dir}: already holds a trained run (use --resume to continue it)")
    if resume:  # with no state yet (stopped in the first epoch) the run starts over from its config
        cfg = RunConfig.load(run_dir)
    split_cpu_devices()
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    data = TrainingData.load(cfg, skip_bad)
    train_arrays, val_arrays, weights = data.train, data.val, data.weights
    steps = math.ceil(len(train_arrays) / cfg.batch_size)
    if not resume:  # a resumed run keeps its config.json as it is
        cfg.save(run_dir)

    start_epoch = state.get("epoch", -1) + 1
    scope = make_strategy(strategy).scope
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
        batches = make_dataset(train_arrays, cfg.input_size, cfg.batch_size, training=True, seed=cfg.seed,
                               epoch=epoch, weights=weights, mean=cfg.mean, std=cfg.std)
        batches = batches.apply(tf.data.experimental.assert_cardinality(steps))
        fit = model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[tensorboard])
        scores = evaluate_arrays(
            keras_label_fn(model, cfg.input_size, cfg.mean, cfg.std), val_arrays, cfg.classes)
        row = {"epoch": epoch, "loss": round(float(fit.history["loss"][-1]), 6),
               "val_miou": round(scores.miou, 6), "val_pixel_accuracy": round(scores.pixel_accuracy, 6)}
        save_atomic(checkpoint_path(run_dir, epoch), model.save)
        if scores.miou > best:
            best, best_epoch = scores.miou, epoch
            _save_best(run_dir, model, scores)
        append_history(run_dir, row)
        write_state(run_dir, {"epoch": epoch, "best_epoch": best_epoch, "best_miou": best})
        if on_epoch:
            on_epoch(epoch, row)
    state = read_state(run_dir)
    if _adjustment_due(cfg, state):
        state["logit_adjustment"] = adjust_logits(run_dir, cfg, state["best_epoch"], weights, val_arrays)
        write_state(run_dir, state)
    return TrainResult(run_dir, best_epoch, best, cfg.epochs - start_epoch, time.perf_counter() - started,
                       data.skipped, state.get("logit_adjustment"))


def _adjustment_due(cfg: RunConfig, state: dict) -> bool:
    """Whether the run still owes its best model the logit adjustment (see `adjust_logits`)."""
    return (cfg.logit_adjustment and cfg.class_weighting != "none" and state.get("best_epoch", -1) >= 0
            and "logit_adjustment" not in state)


def training_done(run_dir: Path) -> bool:
    """Every epoch trained, the best model written and, where due, its logit adjustment made."""
    state = read_state(run_dir)
    if not state or not (Path(run_dir) / BEST_MODEL).is_file():
        return False
    cfg = RunConfig.load(run_dir)
    return state["epoch"] + 1 >= cfg.epochs and not _adjustment_due(cfg, state)


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
    model = load_keras_model(checkpoint_path(run_dir, best_epoch))
    scores = scores_by_alpha(keras_logits_fn(model, cfg.input_size, cfg.mean, cfg.std), val_arrays, weights,
                             cfg.classes)
    trained = scores[0.0]
    classifier = model.get_layer("classifier")
    trained_weights = classifier.get_weights()
    for alpha in sorted(scores, key=lambda a: -scores[a].miou):
        if scores[alpha].miou <= trained.miou:
            break
        classifier.set_weights(trained_weights)
        fold_offsets(model, logit_offsets(weights, alpha))
        adjusted = evaluate_arrays(keras_label_fn(model, cfg.input_size, cfg.mean, cfg.std), val_arrays, cfg.classes)
        if adjusted.miou > trained.miou:
            _save_best(run_dir, model, adjusted)
            return {"alpha": alpha, "val_miou_trained": trained.miou, "val_miou": adjusted.miou}
    return {"alpha": 0.0, "val_miou_trained": trained.miou, "val_miou": trained.miou}


def keras_logits_fn(model: keras.Model, input_size: tuple[int, int], mean, std) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 frame -> float32 logits (H x W x classes) at the model's input size, through the runtime's resize."""
    from .runtime.preprocess import normalize, resize_rgb

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    def logits(rgb: np.ndarray) -> np.ndarray:
        return forward(tf.constant(normalize(resize_rgb(rgb, *input_size), mean, std)[None])).numpy()[0]

    return logits


def keras_label_fn(model: keras.Model, input_size: tuple[int, int], mean, std) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 frame -> label map at the frame's size, through the runtime's resize."""
    from .runtime.preprocess import resize_labels

    logits = keras_logits_fn(model, input_size, mean, std)

    def predict(rgb: np.ndarray) -> np.ndarray:
        return resize_labels(np.argmax(logits(rgb), axis=-1).astype(np.uint8), rgb.shape[0], rgb.shape[1])

    return predict


def load_run_model(run_dir: Path) -> tuple[keras.Model, RunConfig]:
    cfg = RunConfig.load(run_dir)
    return load_keras_model(Path(run_dir) / BEST_MODEL), cfg

