"""Convolutional-autoencoder pretraining of an FCN's encoder on unlabeled frames.

The autoencoder is the FCN's own encoder (`build_encoder`, same layer names) and a mirrored decoder:
four stride-2 `Conv2DTranspose` + BN + ReLU layers with the encoder's widths in reverse, then a linear
stride-2 `Conv2DTranspose` to RGB at the input size. No skip connections and no dense layers: the
reconstruction passes through the stride-32 features. The input is corrupted so that the task is more
than identity: random `MASK_BLOCK` x `MASK_BLOCK` blocks set to the mean colour (`mask_ratio`) and/or
Gaussian noise (`noise`, its std in [0, 1] pixel units). The L1 or L2 loss covers every pixel of the
clean frame, or with `masked_loss` only the masked blocks (inpainting: nothing is gained by copying the
visible pixels through). With `whiten_colour` the targets are the frames' colours whitened (PCA over
their pixels), so that colour errors weigh as much as brightness errors: with plain RGB targets the
reconstructions come out nearly grey. Frames are flipped at random. Shuffling, flips and corruption are
seeded per (seed, epoch, frame) and TensorFlow's ops are made deterministic, so the same run on the same
machine gives the same weights bit for bit, also when it was interrupted and resumed from its last epoch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from .encoder import ENCODER_INFO, copy_encoder_weights, save_encoder
from .model import BN_MOMENTUM, COMPACT_MODELS, MODEL_NAMES, build_encoder, crop_to_input
from .rundir import (
    PRETRAIN_STATE_SCHEMA,
    STATE,
    check_resume,
    checkpoint_path,
    load_keras_model,
    read_state,
    save_atomic,
    write_state,
)
from .runtime.errors import EdgesegError
from .runtime.manifest import DEFAULT_MEAN, DEFAULT_STD
from .train import append_history, cosine_adam

MASK_BLOCK = 16
LOSSES = {"l1": "mean_absolute_error", "l2": "mean_squared_error"}
RECONSTRUCTIONS = "reconstructions.png"
PREVIEW_FRAMES = 8
#: The preview frames are corrupted with this epoch's key: the same corruption after every epoch.
PREVIEW_EPOCH = -1
#: About this many pixels, evenly spaced over the frames, estimate the colour whitening.
WHITENING_PIXELS = 200_000


@dataclass
class PretrainConfig:
    """What the autoencoder is trained on and how (written to `encoder.json`)."""

    images: str
    model: str = "fcn-tiny"
    input_size: tuple[int, int] = (96, 128)
    every: int = 1
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 2e-3
    loss: str = "l2"
    mask_ratio: float = 0.5
    noise: float = 0.0
    masked_loss: bool = False
    whiten_colour: bool = False
    seed: int = 0
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD

    def check(self) -> None:
        problems = [
            (self.model not in MODEL_NAMES, f"unknown model {self.model!r}; choose from {', '.join(MODEL_NAMES)}"),
            (self.loss not in LOSSES, f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}"),
            (not 0 <= self.mask_ratio < 1, f"mask ratio must be in [0, 1), got {self.mask_ratio}"),
            (self.noise < 0, f"noise must be >= 0, got {self.noise}"),
            (self.masked_loss and self.mask_ratio == 0, "a loss on the masked blocks needs a mask ratio above 0"),
            (self.epochs < 1 or self.batch_size < 1, "epochs and batch size must be at least 1"),
        ]
        for bad, message in problems:
            if bad:
                raise EdgesegError(message)

    @classmethod
    def from_saved(cls, data: dict) -> PretrainConfig:
        """The config as a run's `state.json` holds it (JSON lists back to tuples)."""
        return cls(**{**data, **{k: tuple(data[k]) for k in ("input_size", "mean", "std")}})


@dataclass
class PretrainResult:
    run_dir: Path
    frames: int
    epochs: int
    #: Mean absolute reconstruction error of the preview frames (0..255 pixel units), before and after.
    initial_error: float
    final_error: float
    #: Seconds spent training, summed over the calls that ran the run's epochs.
    seconds: float


def _mirror_widths(name: str) -> tuple[int, int, int, int]:
    """The encoder's channels at strides 16, 8, 4 and 2: the decoder's widths, deepest first."""
    if name == "fcn8s":
        return 512, 256, 128, 64
    cfg = COMPACT_MODELS[name]
    return cfg.widths[2], cfg.widths[1], cfg.widths[0], cfg.stem


def build_autoencoder(name: str, input_size: tuple[int, int]) -> keras.Model:
    """The autoencoder for `name`'s encoder at a static input size (the encoder's layers, then the decoder's)."""
    encoder = build_encoder(name, input_size)
    x = encoder.outputs[-1]
    for stride, width in zip((16, 8, 4, 2), _mirror_widths(name)):
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"ae_up{stride}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"ae_up{stride}_bn")(x)
        x = layers.ReLU(name=f"ae_up{stride}_relu")(x)
    x = layers.Conv2DTranspose(3, 4, strides=2, padding="same", kernel_initializer="zeros", name="ae_out")(x)
    x = crop_to_input(x, encoder.input, input_size)
    return keras.Model(encoder.input, x, name=f"{name.replace('-', '_')}_autoencoder")


def corrupt(x: tf.Tensor, seed: tf.Tensor, cfg: PretrainConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """A normalised H x W x 3 image with random blocks set to 0 (the mean colour) and/or noise added, and
    the H x W mask of the pixels left visible (1) and masked (0)."""
    mask_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width = cfg.input_size
    keep = tf.ones(cfg.input_size, tf.float32)
    if cfg.mask_ratio > 0:
        grid = (math.ceil(height / MASK_BLOCK), math.ceil(width / MASK_BLOCK))
        blocks = tf.cast(tf.random.stateless_uniform(grid, mask_seed) >= cfg.mask_ratio, tf.float32)
        keep = tf.repeat(tf.repeat(blocks, MASK_BLOCK, axis=0), MASK_BLOCK, axis=1)[:height, :width]
        x = x * keep[..., None]
    if cfg.noise > 0:
        scale = cfg.noise * 255.0 / tf.constant(cfg.std, tf.float32)
        x = x + tf.random.stateless_normal(tf.shape(x), noise_seed) * scale
    return x, keep


def colour_whitening(frames: np.ndarray, cfg: PretrainConfig) -> np.ndarray:
    """The 3 x 3 matrix taking normalised RGB pixels to uncorrelated unit-variance colour components (PCA
    whitening over the frames' pixels); the identity without `cfg.whiten_colour`."""
    if not cfg.whiten_colour:
        return np.eye(3, dtype=np.float32)
    pixels = frames.reshape(-1, 3)
    pixels = pixels[::max(1, len(pixels) // WHITENING_PIXELS)]
    normalised = (pixels - np.asarray(cfg.mean)) / np.asarray(cfg.std)
    variances, axes = np.linalg.eigh(np.cov(normalised, rowvar=False))
    return (axes / np.sqrt(np.maximum(variances, 1e-6))).T.astype(np.float32)


def _colours(x: tf.Tensor, matrix: np.ndarray) -> tf.Tensor:
    """Pixels (... x 3) mapped through a 3 x 3 colour matrix."""
    return tf.linalg.matvec(tf.constant(matrix), x)


def _frame_seed(cfg: PretrainConfig, epoch: int, index: tf.Tensor) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.constant([cfg.seed, epoch], tf.int64), index)


def _normalize(frames: tf.Tensor, cfg: PretrainConfig) -> tf.Tensor:
    return (tf.cast(frames, tf.float32) - tf.constant(cfg.mean, tf.float32)) / tf.constant(cfg.std, tf.float32)


def make_pretrain_dataset(frames: np.ndarray, cfg: PretrainConfig, epoch: int,
                          whitening: np.ndarray) -> tf.data.Dataset:
    """One epoch of (corrupted input, clean target) batches, with the masked pixels as per-pixel loss weights
    under `masked_loss`. Inputs are normalised, targets normalised and mapped through `whitening`. The same
    (seed, epoch), the same batches."""
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(frames))

    def generate():
        for i in order:
            yield frames[i], i

    def prepare(frame: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        flip_seed, corrupt_seed = tf.unstack(tf.random.experimental.stateless_split(_frame_seed(cfg, epoch, index), 2))
        x = _normalize(frame, cfg)
        x = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5, lambda: x[:, ::-1], lambda: x)
        corrupted, keep = corrupt(x, corrupt_seed, cfg)
        target = _colours(x, whitening)
        return (corrupted, target, 1.0 - keep) if cfg.masked_loss else (corrupted, target)

    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec([*cfg.input_size, 3], tf.uint8), tf.TensorSpec([], tf.int64)))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(cfg.batch_size).apply(tf.data.experimental.assert_cardinality(
        math.ceil(len(frames) / cfg.batch_size))).prefetch(tf.data.AUTOTUNE)


def _preview_batch(frames: np.ndarray, cfg: PretrainConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Clean and corrupted versions of up to `PREVIEW_FRAMES` frames spread over the set (fixed corruption)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(PREVIEW_FRAMES, len(frames))).round().astype(int))
    clean = _normalize(frames[picks], cfg)
    inputs = [corrupt(x, _frame_seed(cfg, PREVIEW_EPOCH, int(i)), cfg)[0] for x, i in zip(clean, picks)]
    return clean, tf.stack(inputs)


def _to_rgb(x: np.ndarray, cfg: PretrainConfig) -> np.ndarray:
    return np.clip(np.rint(x * np.asarray(cfg.std) + np.asarray(cfg.mean)), 0, 255).astype(np.uint8)


def save_reconstruction_grid(path: Path, columns: dict[str, np.ndarray]) -> None:
    """A PNG with one row per frame and one titled column per entry of `columns` (N x H x W x 3 uint8)."""
    from matplotlib.figure import Figure

    titles, stacks = list(columns), list(columns.values())
    rows, (height, width) = len(stacks[0]), stacks[0].shape[1:3]
    fig = Figure(figsize=(3.2 * len(titles), 3.2 * rows * height / width + 0.4), layout="constrained")
    axes = fig.subplots(rows, len(titles), squeeze=False)
    for r in range(rows):
        for c, (title, stack) in enumerate(zip(titles, stacks)):
            axes[r][c].imshow(stack[r])
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(title)
    save_atomic(path, partial(fig.savefig, dpi=100))


def check_out(run_dir: Path) -> None:
    """Refuse a run folder that already holds a pretrained encoder (checked before any frame is read)."""
    if (Path(run_dir) / ENCODER_INFO).exists():
        raise EdgesegError(f"{run_dir}: already holds a pretrained encoder")


def _keep_only_checkpoint(run_dir: Path, epoch: int) -> None:
    """Delete every autoencoder checkpoint but `epoch`'s, so that the run folder does not grow with epochs."""
    keep = checkpoint_path(run_dir, epoch)
    for path in keep.parent.glob("epoch_*.keras"):
        if path != keep:
            path.unlink()


def pretrain(cfg: PretrainConfig, run_dir: Path, frames: np.ndarray, resume: bool = False,
             on_epoch: Callable[[int, dict], None] | None = None) -> PretrainResult:
    """Train `cfg.model`'s autoencoder on `frames` (N x H x W x 3 uint8 at `cfg.input_size`) into `run_dir`.

    After each epoch writes `history.csv`, a checkpoint of the autoencoder with its optimizer (only the latest
    is kept) and `state.json` (that epoch, the config); at the end `reconstructions.png`, `encoder.weights.h5`
    and `encoder.json`. With `resume`, continues after the last finished epoch (refused if `cfg` differs from
    the run's); with nothing finished yet, starts over.
    """
    cfg.check()
    run_dir = Path(run_dir)
    check_out(run_dir)
    if frames.shape[1:] != (*cfg.input_size, 3):
        raise EdgesegError(f"{cfg.images}: frames are {frames.shape[1:]}, expected {(*cfg.input_size, 3)}")
    state = read_state(run_dir, PRETRAIN_STATE_SCHEMA) if resume else {}
    if state:
        check_resume(run_dir / STATE, state["config"], asdict(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not state:  # starting over: an earlier run's state must not be resumed with this run's checkpoints
        (run_dir / STATE).unlink(missing_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    steps = math.ceil(len(frames) / cfg.batch_size)
    if state:
        model = load_keras_model(checkpoint_path(run_dir, state["epoch"]), compile=True)
    else:
        model = build_autoencoder(cfg.model, cfg.input_size)
        model.compile(optimizer=cosine_adam(cfg.learning_rate, cfg.epochs * steps), loss=LOSSES[cfg.loss])
    clean, inputs = _preview_batch(frames, cfg)
    scale = np.asarray(cfg.std, np.float32)
    whitening = colour_whitening(frames, cfg)
    unwhitening = np.linalg.inv(whitening)

    def reconstruct() -> np.ndarray:
        return _colours(model(inputs, training=False), unwhitening).numpy()

    def preview_error() -> float:
        return float(np.mean(np.abs(reconstruct() - clean.numpy()) * scale))

    initial = state["initial_error"] if state else preview_error()
    seconds = state.get("seconds", 0.0)
    for epoch in range(state.get("epoch", -1) + 1, cfg.epochs):
        started = time.perf_counter()
        batches = make_pretrain_dataset(frames, cfg, epoch, whitening)
        fit = model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        row = {"epoch": epoch, "loss": round(float(fit.history["loss"][-1]), 6),
               "preview_error": round(preview_error(), 4)}
        append_history(run_dir, row)
        save_atomic(checkpoint_path(run_dir, epoch), model.save)
        seconds += time.perf_counter() - started
        write_state(run_dir, {"epoch": epoch, "initial_error": initial, "seconds": seconds, "config": asdict(cfg)})
        _keep_only_checkpoint(run_dir, epoch)
        if on_epoch:
            on_epoch(epoch, row)
    final = preview_error()
    save_reconstruction_grid(run_dir / RECONSTRUCTIONS, {
        "original": _to_rgb(clean.numpy(), cfg), "input": _to_rgb(inputs.numpy(), cfg),
        "reconstruction": _to_rgb(reconstruct(), cfg)})
    encoder = build_encoder(cfg.model, cfg.input_size)
    copy_encoder_weights(model, encoder, cfg.model)
    save_encoder(encoder, run_dir, {**asdict(cfg), "frames": len(frames), "seconds": round(seconds, 1),
                                    "reconstruction_error": {"initial": round(initial, 4), "final": round(final, 4)}})
    return PretrainResult(run_dir, len(frames), cfg.epochs, initial, final, seconds)
