"""Evaluation: one metric path for Keras models and every bundle backend."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable  # subscripted at run time below: typing's works on 3.8

import numpy as np

from .metrics import SegmentationScores, confusion_matrix

LabelFn = Callable[[np.ndarray], np.ndarray]


def evaluate_arrays(
    predict: LabelFn, pairs: Iterable[tuple[np.ndarray, np.ndarray]], classes: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> SegmentationScores:
    """mIoU etc. of `predict` (RGB frame -> labels at frame size) over (RGB, labels) pairs."""
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    count = 0
    for rgb, target in pairs:
        cm += confusion_matrix(predict(rgb), target, n)
        count += 1
        if progress:
            progress()
    return SegmentationScores.from_confusion(cm, list(classes), count)
