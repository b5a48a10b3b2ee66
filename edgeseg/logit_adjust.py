"""Logit adjustment: take back the bias towards rare classes that class-weighted training leaves.

Cross-entropy weighted by w_c trains logits whose softmax follows w_c p(c|x) (renormalised): rare classes
win pixels they should not (high recall, low precision, low IoU). Adding -alpha * log(w_c) to the logits
undoes that shift fully at alpha = 1 ("logit adjustment", Menon et al., ICLR 2021). The strength is
chosen on the validation split, like the best epoch, and folded into the classifier's bias, so the
model, and every artifact exported from it, predicts with it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .evaluate import Tally
from .metrics import SegmentationScores
from .runtime.preprocess import resize_labels

#: Strengths tried on the validation split (0: leave the model as trained).
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def logit_offsets(weights: np.ndarray, alpha: float) -> np.ndarray:
    """Per-class `-alpha * log(w)`; 0 for classes whose weight is 0 (absent from training)."""
    weights = np.asarray(weights, np.float64)
    safe = np.where(weights > 0, weights, 1.0)
    return (-alpha * np.log(safe)).astype(np.float32)


def scores_by_alpha(logits_fn: Callable[[np.ndarray], np.ndarray], pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                    weights: np.ndarray, classes: Sequence[str], alphas: Sequence[float] = ALPHAS
                    ) -> dict[float, SegmentationScores]:
    """Scores of argmax(logits + offsets) for each alpha, from one forward pass per (RGB, labels) pair.

    `logits_fn`: RGB frame -> logits (H x W x classes) at the model's size (e.g. `KerasRunner.logits`); labels
    are resized to the target's.
    """
    offsets = {alpha: logit_offsets(weights, alpha) for alpha in alphas}
    tallies = {alpha: Tally(classes) for alpha in alphas}
    for rgb, target in pairs:
        logits = logits_fn(rgb)
        for alpha in alphas:
            labels = np.argmax(logits + offsets[alpha], axis=-1).astype(np.uint8)
            tallies[alpha].add(resize_labels(labels, *target.shape), target)
    return {alpha: tally.scores() for alpha, tally in tallies.items()}


def fold_offsets(model, offsets: np.ndarray) -> None:
    """Add per-class `offsets` to `model`'s logits by changing the bias of its `classifier` layer.

    The classifier feeds the learned `upsample*` `Conv2DTranspose` (stride s, kernel 2s), which mixes
    classes: a classifier bias b reaches the outputs of sub-pixel phase p as M_p b, M_p being the sum of
    that phase's kernel taps. b is the least-squares solution of M_p b = offsets over the s * s phases
    (exact for the bilinear initialisation; border pixels, which miss taps, shift less).
    """
    classifier = model.get_layer("classifier")
    upsample = next(layer for layer in model.layers if layer.name.startswith("upsample"))
    stride = upsample.strides[0]
    kernel = np.asarray(upsample.get_weights()[0], np.float64)  # (k, k, out, in)
    phases = [kernel[py::stride, px::stride].sum((0, 1)) for py in range(stride) for px in range(stride)]
    target = np.tile(np.asarray(offsets, np.float64), len(phases))
    bias_shift = np.linalg.lstsq(np.concatenate(phases), target, rcond=None)[0]
    kernel_1x1, bias = classifier.get_weights()
    classifier.set_weights([kernel_1x1, (bias + bias_shift).astype(bias.dtype)])
