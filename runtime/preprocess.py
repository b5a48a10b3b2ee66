"""Frame preprocessing shared by every backend, calibration and evaluation.

One definition of "what the model sees", so calibration, evaluation and the live runtime agree.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from .manifest import InputSpec


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB uint8 frame to the model input size (bilinear; area when shrinking a lot)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    shrink = rgb.shape[0] >= 2 * height and rgb.shape[1] >= 2 * width
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalize(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(x - mean) / std per channel, float32."""
    return (rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _model_array(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """An RGB uint8 HxWx3 frame as one item of an artifact's input batch (no batch axis)."""
    x = resize_rgb(rgb, spec.height, spec.width)
    if spec.dtype == "uint8":
        arr = np.ascontiguousarray(x)
    elif spec.normalization_folded:
        arr = x.astype(np.float32)
    else:
        arr = normalize(x, spec.mean, spec.std)
    return arr.transpose(2, 0, 1) if spec.layout == "NCHW" else arr


def model_batches(frames: Sequence[np.ndarray], spec: InputSpec) -> Iterator[np.ndarray]:
    """Frames as the input batches of an artifact (the last batch filled up by cycling from the start)."""
    for start in range(0, len(frames), spec.batch):
        group = [frames[(start + i) % len(frames)] for i in range(spec.batch)]
        yield np.ascontiguousarray(np.stack([_model_array(frame, spec) for frame in group]))


def to_model_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """An RGB uint8 HxWx3 frame to the batch tensor an artifact takes (the frame first, repeated to fill it)."""
    return next(model_batches([rgb], spec))


def labels_from_output(out: np.ndarray, kind: str, layout: str) -> np.ndarray:
    """Model output (batch of 1) to an HxW uint8 label map."""
    out = out[0]
    if kind == "labels":
        return out.astype(np.uint8, copy=False)
    axis = 0 if layout == "NCHW" else -1
    return np.argmax(out, axis=axis).astype(np.uint8)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Label map to another size (nearest neighbour: labels are not interpolated)."""
    if labels.shape[:2] == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
