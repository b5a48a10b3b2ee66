"""Evaluation: one metric path for every runner (Keras models and every bundle backend).

`evaluate` runs one runner, or several side by side, over (RGB frame, labels) pairs; a `Tally` pools the
pixels of a whole split into one confusion matrix per runner.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Callable, Optional, overload  # Callable subscripted at run time: typing's works on 3.8

import numpy as np

from .metrics import SegmentationScores, confusion_matrix
from .runtime.backends.base import Runner

Progress = Optional[Callable[[], None]]


class Tally:
    """One confusion matrix pooled over a split's frames, and how many frames went in."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.matrix = np.zeros((len(classes), len(classes)), np.int64)
        self.frames = 0

    def add(self, labels: np.ndarray, target: np.ndarray) -> None:
        """One frame's predicted labels against its target labels (the same size)."""
        self.matrix += confusion_matrix(labels, target, len(self.classes))
        self.frames += 1

    def scores(self) -> SegmentationScores:
        return SegmentationScores.from_confusion(self.matrix, self.classes, self.frames)

    def __add__(self, other: Tally) -> Tally:
        """The pixels of both tallies in one matrix (the same classes), e.g. the folds of a held-out estimate."""
        if other.classes != self.classes:
            raise ValueError(f"cannot pool tallies of classes {self.classes} and {other.classes}")
        pooled = Tally(self.classes)
        pooled.matrix, pooled.frames = self.matrix + other.matrix, self.frames + other.frames
        return pooled


def tally(runners: Mapping[str, Runner], pairs: Iterable[tuple[np.ndarray, np.ndarray]], classes: Sequence[str],
          progress: Progress = None) -> dict[str, Tally]:
    """One `Tally` per named runner over (RGB, labels) pairs: every runner sees each frame in turn, so `pairs`
    is read once (it may be a generator); `progress` is called once per frame."""
    tallies = {name: Tally(classes) for name in runners}
    for rgb, target in pairs:
        for name, runner in runners.items():
            tallies[name].add(runner.predict(rgb), target)
        if progress:
            progress()
    return tallies


@overload
def evaluate(runners: Runner, pairs: Iterable[tuple[np.ndarray, np.ndarray]], classes: Sequence[str],
             progress: Progress = None) -> SegmentationScores: ...
@overload
def evaluate(runners: Mapping[str, Runner], pairs: Iterable[tuple[np.ndarray, np.ndarray]],
             classes: Sequence[str], progress: Progress = None) -> dict[str, SegmentationScores]: ...
def evaluate(runners, pairs, classes, progress=None):
    """mIoU etc. of an active runner, or of each of a name -> runner mapping, over (RGB, labels) pairs (see
    `tally`)."""
    named = {"": runners} if isinstance(runners, Runner) else dict(runners)
    scores = {name: counted.scores() for name, counted in tally(named, pairs, classes, progress).items()}
    return scores[""] if isinstance(runners, Runner) else scores
