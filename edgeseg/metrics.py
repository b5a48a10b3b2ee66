"""Segmentation metrics from one confusion matrix accumulated over a whole split (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime.manifest import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Counts[t, p] of pixels with target class t predicted as p; ignored target pixels left out."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if t.size and t.max() >= num_classes:
        raise ValueError(f"target label {int(t.max())} outside {num_classes} classes")
    p = np.clip(p, 0, num_classes - 1)
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where a class is neither present nor predicted."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


@dataclass
class SegmentationScores:
    """mIoU (over classes present in target or prediction), per-class IoU and pixel accuracy."""

    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    num_images: int

    @classmethod
    def from_confusion(cls, cm: np.ndarray, class_names: list[str], num_images: int) -> SegmentationScores:
        ious = per_class_iou(cm)
        total = cm.sum()
        return cls(
            miou=float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else 0.0,
            pixel_accuracy=float(np.trace(cm) / total) if total else 0.0,
            per_class_iou={n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, ious)},
            num_images=num_images,
        )

    def to_dict(self) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "per_class_iou": self.per_class_iou, "num_images": self.num_images}
