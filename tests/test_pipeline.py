"""TensorFlow input pipeline: class weights, batch contents and determinism."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgeseg.data.pipeline import Augment, class_weights, make_dataset
from edgeseg.runtime.errors import EdgesegError


def _sample(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose brightness encodes the label: label 1 white, 0 black, an ignored band grey."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    labels[top:top + h // 2, left:left + w // 2] = 1
    labels[:, :3] = 255
    image = np.repeat(np.where(labels == 1, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    image[labels == 255] = 128
    return image, labels


SAMPLES = [_sample(40, 50, 0), _sample(64, 96, 1), _sample(30, 30, 2), _sample(50, 70, 3), _sample(48, 64, 4)]


def _batches(ds) -> list[tuple[np.ndarray, ...]]:
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_median_frequency_hand_worked() -> None:
    masks = [np.array([[0, 0], [0, 1]]), np.array([[0, 2], [255, 2]])]
    # Labelled pixels: 4 in the first mask, 3 in the second (the 255 pixel is ignored).
    # freq: class 0 = 4/7 (in both), class 1 = 1/4, class 2 = 2/3; median = 4/7; class 3 absent.
    expected = np.array([1.0, (4 / 7) / (1 / 4), (4 / 7) / (2 / 3), 0.0], np.float32)
    masks = [m.astype(np.uint8) for m in masks]
    weights = class_weights(masks, num_classes=4)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    np.testing.assert_allclose(class_weights(masks, 4, max_weight=2.0), [1.0, 2.0, 6 / 7, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(class_weights(masks, 4, method="none"), np.ones(4, np.float32))
    with pytest.raises(EdgesegError, match="unknown class-weight method"):
        class_weights(masks, 4, method="inverse")


def test_eval_batches() -> None:
    weights = np.array([0.5, 2.0], np.float32)
    batches = _batches(make_dataset(SAMPLES, (48, 64), batch_size=3, training=False, weights=weights))
    assert [b[0].shape for b in batches] == [(3, 48, 64, 3), (2, 48, 64, 3)]
    x, y, w = (np.concatenate(parts) for parts in zip(*batches))
    assert (x.dtype, y.dtype, w.dtype) == (np.float32, np.int32, np.float32)
    assert y.shape == w.shape == (5, 48, 64)
    assert np.all(y[:, :, 0] == 0) and np.all(w[:, :, 0] == 0)  # ignored band: label 0, weight 0
    np.testing.assert_array_equal(w[y == 1], 2.0)
    np.testing.assert_array_equal(np.unique(w), [0.0, 0.5, 2.0])
    # In order, and the last sample (already 48x64) is untouched apart from (x - 127.5) / 127.5.
    image, labels = SAMPLES[4]
    np.testing.assert_array_equal(x[4], (image.astype(np.float32) - 127.5) / 127.5)
    np.testing.assert_array_equal(y[4], np.where(labels == 255, 0, labels))


def test_training_batches_align_images_and_labels() -> None:
    augment = Augment(scale=(0.5, 1.5), brightness=0.0, contrast=0.0, saturation=0.0)
    x, y, w = (np.concatenate(parts) for parts in zip(*_batches(
        make_dataset(SAMPLES * 4, (32, 48), batch_size=8, training=True, seed=1, augment=augment))))
    assert x.shape == (20, 32, 48, 3) and y.shape == w.shape == (20, 32, 48)
    assert set(np.unique(w)) == {0.0, 1.0} and np.all(y[w == 0] == 0)
    labelled = w > 0
    bright = x[..., 0] > 0
    assert np.mean(bright[labelled] == (y[labelled] == 1)) > 0.97  # crop/scale/flip move both together


def test_padding_when_zoomed_out_is_ignored() -> None:
    augment = Augment(scale=(0.5, 0.5), flip=False, brightness=0.0, contrast=0.0, saturation=0.0)
    x, _, w = _batches(make_dataset(SAMPLES[:1], (40, 50), batch_size=1, training=True, augment=augment))[0]
    assert np.mean(w == 0) > 0.7  # a quarter of the area is the image, the rest is padding
    assert np.all(np.abs(x[w == 0]) < 0.01)  # padding is 0 (the mean); the ignored band is grey 128


def test_same_seed_and_epoch_identical_other_epoch_differs() -> None:
    def run(seed: int, epoch: int) -> list[tuple[np.ndarray, ...]]:
        return _batches(make_dataset(SAMPLES, (32, 48), batch_size=2, training=True, seed=seed, epoch=epoch))

    first = run(7, 3)
    again = run(7, 3)
    assert len(first) == 3
    for a, b in zip(first, again):
        for ta, tb in zip(a, b):
            np.testing.assert_array_equal(ta, tb)
    for other in (run(7, 4), run(8, 3)):
        assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_rejects_empty_input() -> None:
    with pytest.raises(EdgesegError, match="needs samples"):
        make_dataset([], (32, 32), batch_size=2, training=True)


def test_flip_and_colour_jitter() -> None:
    """At scale 1 on an input-sized image, only flip (and jitter) change it."""
    image, labels = SAMPLES[4]
    plain = (image.astype(np.float32) - 127.5) / 127.5
    target = np.where(labels == 255, 0, labels)
    flips = set()
    for epoch in range(8):
        x, y, _ = _batches(make_dataset([SAMPLES[4]], (48, 64), 1, training=True, epoch=epoch,
                                        augment=Augment(scale=(1.0, 1.0), brightness=0.0, contrast=0.0,
                                                        saturation=0.0)))[0]
        flipped = bool(np.array_equal(y[0], target[:, ::-1]))
        assert flipped or np.array_equal(y[0], target)
        np.testing.assert_allclose(x[0], plain[:, ::-1] if flipped else plain, atol=1e-6)
        flips.add(flipped)
    assert flips == {True, False}
    x, y, _ = _batches(make_dataset([SAMPLES[4]], (48, 64), 1, training=True, augment=Augment(scale=(1.0, 1.0))))[0]
    assert np.array_equal(y[0], target) or np.array_equal(y[0], target[:, ::-1])
    assert not np.allclose(x[0], plain, atol=0.02) and not np.allclose(x[0], plain[:, ::-1], atol=0.02)
