"""Logit adjustment: offsets from class weights, the strength chosen by score, folding into the classifier."""
from __future__ import annotations

import numpy as np
import pytest

from edgeseg.logit_adjust import ALPHAS, fold_offsets, logit_offsets, scores_by_alpha


def test_offsets_take_alpha_log_weight_back_and_leave_absent_classes_alone() -> None:
    offsets = logit_offsets(np.array([1.0, np.e, 0.0, np.e**-2]), 0.5)
    np.testing.assert_allclose(offsets, [0.0, -0.5, 0.0, 1.0], atol=1e-6)


def test_the_strength_that_undoes_the_weighting_prior_scores_best() -> None:
    """Logits that know the class but favour class 1 by log(w_1) = 3 (as weighted training does):
    alpha 0 labels everything class 1; alpha >= 0.5 takes enough back to be exact."""
    rng = np.random.default_rng(0)
    weights = np.array([1.0, np.exp(3.0), 1.0])
    pairs = []
    for _ in range(3):
        target = rng.integers(0, 3, (8, 12)).astype(np.uint8)
        logits = 2.0 * np.eye(3)[target] + np.log(weights)
        pairs.append((logits[::2, ::2], target[::2, ::2].repeat(2, 0).repeat(2, 1)))  # labels resized to target
    scores = scores_by_alpha(lambda x: x, pairs, weights, ["a", "b", "c"])
    assert list(scores) == list(ALPHAS)
    assert scores[0.0].per_class_iou["b"] < 0.5 and scores[0.0].miou < 0.5
    assert scores[0.5].miou == scores[1.0].miou == 1.0
    assert scores[1.0].num_images == 3


def _interior(x: np.ndarray, margin: int) -> np.ndarray:
    return x[:, margin:-margin, margin:-margin]


@pytest.mark.parametrize("kernel_kind", ["bilinear", "mixing"])
def test_folded_offsets_shift_the_logits(kernel_kind: str) -> None:
    """Exact with the bilinear upsampling kernel, and with one that mixes classes differently in every
    sub-pixel phase (as trained kernels do), where adding the offsets to the classifier bias misses."""
    from edgeseg.model import build_model

    model = build_model("fcn-tiny", 3, (64, 96))
    upsample = model.get_layer("upsample8")
    kernel = upsample.get_weights()[0]  # bilinear, class by class: (16, 16, out, in)
    offsets = np.array([0.5, -1.0, 0.25], np.float32)
    if kernel_kind == "mixing":
        # phase p sums to M_p = A + E_p with E_p b = 0: the phases differ, one classifier bias b fits all
        rng = np.random.default_rng(1)
        mixing = 1.5 * np.eye(3) + 0.3 * rng.random((3, 3))
        b = np.linalg.solve(mixing, offsets)
        null = np.eye(3) - np.outer(b, b) / (b @ b)
        kernel = np.zeros_like(kernel)
        for py in range(8):
            for px in range(8):
                kernel[py::8, px::8] = (mixing + 0.5 * rng.normal(size=(3, 3)) @ null) / 4  # 2 x 2 taps
    upsample.set_weights([kernel.astype(np.float32)])
    x = np.random.default_rng(2).normal(size=(2, 64, 96, 3)).astype(np.float32)
    before = _interior(np.asarray(model(x)), 16)
    k, bias = model.get_layer("classifier").get_weights()
    model.get_layer("classifier").set_weights([k, bias + offsets])
    naive_error = np.abs(_interior(np.asarray(model(x)), 16) - before - offsets).max()
    model.get_layer("classifier").set_weights([k, bias])
    fold_offsets(model, offsets)
    error = np.abs(_interior(np.asarray(model(x)), 16) - before - offsets).max()
    assert error < 1e-4
    assert (naive_error > 0.1) == (kernel_kind == "mixing")
