"""mIoU, per-class IoU and pixel accuracy against confusion matrices worked out by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeseg.evaluate import Tally
from edgeseg.metrics import SegmentationScores, confusion_matrix, per_class_iou

IGNORE = 255


def _scores(pred, target, classes: list[str]) -> SegmentationScores:
    cm = confusion_matrix(np.asarray(pred, np.uint8), np.asarray(target, np.uint8), len(classes))
    return SegmentationScores.from_confusion(cm, classes, 1)


def test_confusion_matrix_by_hand_with_ignore_excluded() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]], np.uint8)
    # (t, p) over the six labelled pixels: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0); the two ignored
    # pixels (predicted 2 and 0) must not be counted anywhere.
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [1, 0, 1]])
    cm = confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 6

    # IoU_c = tp / (row + col - tp): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1)
    np.testing.assert_allclose(per_class_iou(cm), [1 / 3, 2 / 3, 1 / 2])
    scores = SegmentationScores.from_confusion(cm, ["a", "b", "c"], 1)
    assert scores.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores.pixel_accuracy == pytest.approx(4 / 6)
    assert scores.per_class_iou == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 1 / 2})


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    # Classes 2 and 3 appear neither in target nor prediction.
    scores = _scores([[0, 1, 1, 1]], [[0, 0, 1, 1]], ["a", "b", "c", "d"])
    ious = per_class_iou(confusion_matrix(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 4))
    assert ious[0] == pytest.approx(1 / 2) and ious[1] == pytest.approx(2 / 3)
    assert math.isnan(ious[2]) and math.isnan(ious[3])
    assert scores.miou == pytest.approx((1 / 2 + 2 / 3) / 2)  # not divided by 4
    assert scores.per_class_iou["c"] is None and scores.per_class_iou["d"] is None


def test_predicting_a_class_absent_from_target_counts_as_zero_iou() -> None:
    # Class 2 is never in the target but predicted once: IoU 0 and it drags the mean down.
    scores = _scores([[0, 0, 0, 2]], [[0, 0, 0, 0]], ["a", "b", "c"])
    assert scores.per_class_iou == {"a": pytest.approx(3 / 4), "b": None, "c": 0.0}
    assert scores.miou == pytest.approx((3 / 4 + 0.0) / 2)
    assert scores.pixel_accuracy == pytest.approx(3 / 4)


def test_prediction_on_ignored_pixels_never_counts() -> None:
    # Every pixel that is wrong is ignored in the target: a perfect score.
    scores = _scores([[1, 1, 0, 2]], [[1, 1, IGNORE, IGNORE]], ["a", "b", "c"])
    assert scores.per_class_iou == {"a": None, "b": 1.0, "c": None}
    assert scores.miou == 1.0 and scores.pixel_accuracy == 1.0


def test_all_ignored_gives_zero_scores_not_nan() -> None:
    scores = _scores([[0, 1]], [[IGNORE, IGNORE]], ["a", "b"])
    assert scores.miou == 0.0 and scores.pixel_accuracy == 0.0
    assert scores.per_class_iou == {"a": None, "b": None}


def test_custom_ignore_index() -> None:
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 3, ignore_index=2)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(4, np.uint8), np.array([0, 1, 2, 3], np.uint8), 3)


def test_split_score_pools_one_confusion_matrix_not_mean_of_images() -> None:
    # Image A: all class 0, predicted right (per-image mIoU 1). Image B: target [0,1,1,1],
    # predicted all 0 (per-image mIoU (1/4 + 0)/2). Pooled cm = [[5, 0], [3, 0]]:
    # IoU_0 = 5 / (5 + 8 - 5) = 5/8, IoU_1 = 0 -> mIoU 5/16 (the mean of per-image mIoUs is 9/16).
    tally = Tally(["a", "b"])
    tally.add(np.array([[0, 0], [0, 0]], np.uint8), np.array([[0, 0], [0, 0]], np.uint8))
    tally.add(np.array([[0, 0], [0, 0]], np.uint8), np.array([[0, 1], [1, 1]], np.uint8))
    scores = tally.scores()
    assert scores.num_images == 2
    assert scores.miou == pytest.approx(5 / 16)
    assert scores.pixel_accuracy == pytest.approx(5 / 8)
    assert scores.per_class_iou == {"a": pytest.approx(5 / 8), "b": 0.0}


def test_to_dict_is_strict_json() -> None:
    scores = _scores([[0, 0, 0, 2]], [[0, 0, 0, 0]], ["a", "b", "c"])
    data = json.loads(json.dumps(scores.to_dict(), allow_nan=False))
    assert set(data) == {"miou", "pixel_accuracy", "per_class_iou", "num_images"}
    assert data["per_class_iou"]["b"] is None and data["num_images"] == 1
