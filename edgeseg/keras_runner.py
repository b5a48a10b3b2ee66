"""A Keras model as a runner: the training side runs models through the same interface as the bundles.

    with keras_runner(model, cfg, run_dir / "model.keras") as runner:
        scores = evaluate(runner, pairs, cfg.classes)
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .rundir import BEST_MODEL, RunConfig, load_keras_model
from .runtime.backends.base import Runner
from .runtime.manifest import InputSpec, ModelSpec, OutputSpec


class KerasRunner(Runner):
    """Runs a Keras model (loaded or in training) in one traced `tf.function`; `model_path` names its file."""

    backend = "keras"

    def __init__(self, model: keras.Model, spec: ModelSpec, model_path: Path):
        super().__init__(model_path, spec)
        self.model = model

    def _activate(self) -> None:
        model = self.model

        @tf.function(reduce_retracing=True)
        def forward(x):
            return model(x, training=False)

        self._forward = forward

    def _deactivate(self) -> None:
        del self._forward

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(tf.constant(batch)).numpy()

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """Logits (H x W x classes) of one RGB frame at the model's input size."""
        return self.infer(self.preprocess(rgb))[0]


def keras_spec(cfg: RunConfig, folded: bool = False) -> ModelSpec:
    """What a run's model takes and returns: RGB frames at the run's input size, normalised with its mean and
    std (by the model itself when `folded`, as `deploy_model` does), and NHWC float32 logits."""
    height, width = cfg.input_size
    return ModelSpec(InputSpec(height=height, width=width, dtype="float32", mean=tuple(cfg.mean), std=tuple(cfg.std),
                               normalization_folded=folded), OutputSpec(kind="logits", dtype="float32"))


def keras_runner(model: keras.Model, cfg: RunConfig, model_path: Path) -> KerasRunner:
    """A runner for a model trained as `cfg` says (the training model: normalisation outside it)."""
    return KerasRunner(model, keras_spec(cfg), model_path)


def load_keras_runner(path: Path) -> tuple[KerasRunner, RunConfig]:
    """A runner for a run folder's best model or a `.keras` file inside a run folder, and the run's config."""
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg = RunConfig.load(run_dir)
    model_path = run_dir / BEST_MODEL if Path(path).is_dir() else Path(path)
    return keras_runner(load_keras_model(model_path), cfg, model_path), cfg
