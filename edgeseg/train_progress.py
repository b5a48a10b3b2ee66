"""A Keras callback that moves a progress bar (`edgeseg.progress`) by one per training step."""
from __future__ import annotations

import keras

from .progress import Bar


class StepProgress(keras.callbacks.Callback):
    """Advances `bar` per training step over the epochs left of `epochs` (training fits one epoch at a
    time, so the total is set at the first epoch seen: steps per epoch x epochs left)."""

    def __init__(self, bar: Bar, epochs: int):
        super().__init__()
        self.bar, self.epochs = bar, epochs

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.bar.total is None and self.params.get("steps"):
            self.bar.update(total=self.params["steps"] * (self.epochs - epoch))

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.bar.advance()
