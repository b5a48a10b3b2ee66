"""Training-side input pipeline: class weights and a deterministic `tf.data` pipeline.

Batches are `(x, y, w)`: normalised images, labels with ignore replaced by 0, and per-pixel weights
that are 0 on ignored pixels, so Keras' `sample_weight` keeps ignore out of the loss.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from edgeseg.choices import WEIGHT_METHODS
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import DEFAULT_MEAN, DEFAULT_STD, IGNORE_INDEX
from edgeseg.runtime.preprocess import normalize, resize_labels, resize_rgb


def class_weights(masks: Iterable[np.ndarray], num_classes: int, method: str = "median_frequency",
                  max_weight: float = 10.0) -> np.ndarray:
    """Per-class loss weights (float32, length `num_classes`).

    median_frequency: freq_c = pixels of c / labelled pixels of the images containing c, and
    w_c = median(freq) / freq_c over the classes present, clipped to `max_weight`; classes that
    never occur get 0. Ignored pixels (IGNORE_INDEX) count nowhere. "none": all ones.
    """
    if method not in WEIGHT_METHODS:
        raise EdgesegError(f"unknown class-weight method {method!r}; expected one of {', '.join(WEIGHT_METHODS)}")
    if method == "none":
        return np.ones(num_classes, np.float32)
    class_pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for mask in masks:
        counts = np.bincount(mask.ravel(), minlength=256)[:num_classes]
        class_pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    present = class_pixels > 0
    if not present.any():
        raise EdgesegError("cannot compute class weights: no labelled pixels")
    freq = class_pixels[present] / image_pixels[present]
    weights = np.zeros(num_classes, np.float64)
    weights[present] = np.minimum(np.median(freq) / freq, max_weight)
    return weights.astype(np.float32)


@dataclass(frozen=True)
class Augment:
    """Training augmentation: scale range (relative to the image covering the model input), flip, colour
    jitter, and optionally gamma (exposure / low light), Gaussian blur and sensor noise."""

    scale: tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    brightness: float = 0.2  # max delta on [0, 1] pixels
    contrast: float = 0.2  # factor in [1 - c, 1 + c]
    saturation: float = 0.2  # factor in [1 - s, 1 + s]
    gamma: tuple[float, float] = (1.0, 1.0)  # x ** g, g log-uniform in the range (> 1 darkens)
    blur: float = 0.0  # probability of a Gaussian blur with sigma in [0.3, 1.5] px
    noise: float = 0.0  # max std of additive Gaussian noise on [0, 1] pixels (half the samples)


#: Named augmentation recipes (`edgeseg train --augment`): "standard" as before; "strong" for footage that
#: differs from the training recordings (scale 0.5-2, exposure and low light, blur, noise).
AUGMENTS = {
    "standard": Augment(),
    "strong": Augment(scale=(0.5, 2.0), brightness=0.25, contrast=0.3, saturation=0.3, gamma=(0.6, 1.7),
                      blur=0.3, noise=0.03),
}


def _gaussian_blur(x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """H x W x 3 image blurred by a separable 5-tap Gaussian of std `sigma` (pixels)."""
    taps = tf.range(-2.0, 3.0)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel /= tf.reduce_sum(kernel)
    rows = tf.tile(tf.reshape(kernel, [5, 1, 1, 1]), [1, 1, 3, 1])
    cols = tf.tile(tf.reshape(kernel, [1, 5, 1, 1]), [1, 1, 3, 1])
    y = tf.nn.depthwise_conv2d(x[None], rows, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(y, cols, [1, 1, 1, 1], "SAME")[0]


def _photometric(x: tf.Tensor, seeds: tf.Tensor, aug: Augment) -> tf.Tensor:
    """Gamma, colour jitter, blur and noise of an H x W x 3 image in [0, 1]; stateless (`seeds`: 8 x 2)."""
    if aug.gamma != (1.0, 1.0):
        log_gamma = tf.random.stateless_uniform([], seeds[0], np.log(aug.gamma[0]), np.log(aug.gamma[1]))
        x = tf.pow(tf.maximum(x, 1e-6), tf.exp(log_gamma))
    if aug.brightness > 0:
        x = tf.image.stateless_random_brightness(x, aug.brightness, seeds[1])
    if aug.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1 - aug.contrast, 1 + aug.contrast, seeds[2])
    if aug.saturation > 0:
        x = tf.image.stateless_random_saturation(x, 1 - aug.saturation, 1 + aug.saturation, seeds[3])
    if aug.blur > 0:
        sigma = tf.random.stateless_uniform([], seeds[4], 0.3, 1.5)
        x = tf.cond(tf.random.stateless_uniform([], seeds[5]) < aug.blur, lambda: _gaussian_blur(x, sigma),
                    lambda: x)
    if aug.noise > 0:
        std = tf.random.stateless_uniform([], seeds[6], -aug.noise, aug.noise)
        x = x + tf.maximum(std, 0.0) * tf.random.stateless_normal(tf.shape(x), seeds[7])
    return tf.clip_by_value(x, 0.0, 1.0)


def _sample_seed(seed: int, epoch: int, index: int) -> np.ndarray:
    return np.random.SeedSequence([seed, epoch, index]).generate_state(2).astype(np.int64)


def _place(t: tf.Tensor, pad_value: float, size: tuple[int, int], offsets: tf.Tensor) -> tf.Tensor:
    """Pad (with `pad_value`) and crop `t` (H x W x C) to `size`; `offsets` in [0, 1) place it."""
    pads, starts = [], []
    for axis, target in enumerate(size):
        extent = tf.shape(t)[axis]
        slack = tf.abs(extent - target)
        shift = tf.cast(offsets[axis] * tf.cast(slack + 1, tf.float32), tf.int32)
        shift = tf.minimum(shift, slack)
        pad = tf.maximum(target - extent, 0)
        before = tf.where(extent < target, shift, 0)
        pads.append([before, pad - before])
        starts.append(tf.where(extent < target, 0, shift))
    t = tf.pad(t, pads + [[0, 0]], constant_values=pad_value)
    return t[starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1]]


def _augment(image: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, size: tuple[int, int], aug: Augment,
             mean: tf.Tensor, std: tf.Tensor, reference: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, crop/pad to `size`, flip and photometric changes of one sample; stateless, so `seed`
    fixes it. Scale 1 is the image resized to cover `reference` (the model input), as at inference."""
    seeds = tf.random.experimental.stateless_split(seed, num=11)
    hw = tf.cast(tf.shape(labels), tf.float32)
    cover = tf.maximum(reference[0] / hw[0], reference[1] / hw[1])
    scale = cover * tf.random.stateless_uniform([], seeds[8], aug.scale[0], aug.scale[1])
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    x = tf.image.resize(tf.cast(image, tf.float32) / 255.0, new_hw, antialias=True)
    lbl = tf.image.resize(labels[..., None], new_hw, method="nearest")
    offsets = tf.random.stateless_uniform([2], seeds[9])
    x = _place(x - mean / 255.0, 0.0, size, offsets) + mean / 255.0  # padding: the mean colour
    lbl = _place(lbl, IGNORE_INDEX, size, offsets)[..., 0]
    x = (_photometric(x, seeds[:8], aug) * 255.0 - mean) / std
    if aug.flip:
        x, lbl = tf.cond(tf.random.stateless_uniform([], seeds[10]) < 0.5,
                         lambda: (x[:, ::-1], lbl[:, ::-1]), lambda: (x, lbl))
    return tf.ensure_shape(x, [*size, 3]), tf.ensure_shape(lbl, size)


def make_dataset(samples: Sequence[tuple[np.ndarray, np.ndarray]], input_size: tuple[int, int], batch_size: int,
                 training: bool, seed: int = 0, epoch: int = 0, weights: np.ndarray | None = None,
                 mean: tuple[float, ...] = DEFAULT_MEAN, std: tuple[float, ...] = DEFAULT_STD,
                 augment: Augment = Augment(), reference: tuple[int, int] | None = None) -> tf.data.Dataset:
    """One epoch of `(x, y, w)` batches from in-memory (RGB uint8, labels uint8) samples.

    x: float32 B x H x W x 3, `(pixel - mean) / std`; y: int32 B x H x W, ignore -> 0; w: float32
    B x H x W, the class weight of each pixel's label (1 without `weights`), 0 where ignored.
    Training shuffles with a permutation from (seed, epoch) and augments with stateless ops seeded
    from (seed, epoch, sample index): the same (seed, epoch) gives identical batches, so build one
    dataset per epoch. Training crops are `input_size`; scales are relative to `reference` (the model's
    input size, default `input_size`). Eval resizes like the deploy runtime and keeps the order. The last batch
    may be smaller.
    """
    if not samples or batch_size < 1:
        raise EdgesegError(f"make_dataset needs samples and batch_size >= 1 (got {len(samples)} samples, "
                           f"batch_size {batch_size})")
    height, width = input_size
    table = np.zeros(IGNORE_INDEX + 1, np.float32)  # label -> pixel weight; IGNORE_INDEX stays 0
    if weights is None:
        table[:IGNORE_INDEX] = 1.0
    else:
        table[:len(weights)] = weights
    table_t = tf.constant(table)

    def targets(x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        labels = tf.cast(labels, tf.int32)
        return x, tf.where(labels == IGNORE_INDEX, 0, labels), tf.gather(table_t, labels)

    if training:
        order = np.random.default_rng([seed, epoch]).permutation(len(samples))

        def train_gen() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for i in order:
                yield samples[i][0], samples[i][1], _sample_seed(seed, epoch, int(i))

        mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
        ds = tf.data.Dataset.from_generator(train_gen, output_signature=(
            tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, None], tf.uint8),
            tf.TensorSpec([2], tf.int64)))
        ref = reference or (height, width)
        ds = ds.map(lambda img, lbl, s: targets(*_augment(img, lbl, s, (height, width), augment, mean_t, std_t,
                                                          ref)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        def eval_gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for rgb, labels in samples:
                yield normalize(resize_rgb(rgb, height, width), mean, std), resize_labels(labels, height, width)

        ds = tf.data.Dataset.from_generator(eval_gen, output_signature=(
            tf.TensorSpec([height, width, 3], tf.float32), tf.TensorSpec([height, width], tf.uint8)))
        ds = ds.map(targets, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
