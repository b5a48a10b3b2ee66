"""A training run folder: `config.json`, `model.keras` (best epoch), checkpoints, history, logs."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .runtime.errors import EdgesegError
from .runtime.manifest import DEFAULT_MEAN, DEFAULT_STD

CONFIG = "config.json"
BEST_MODEL = "model.keras"
STATE = "state.json"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"


@dataclass
class RunConfig:
    """What a run was trained with, and everything export needs to know about the model."""

    model: str
    classes: list[str]
    palette: list[list[int]]
    input_size: tuple[int, int]
    data: str
    data_format: str
    seed: int = 0
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 2e-3
    class_weighting: str = "median_frequency"
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    #: Pretrain run whose encoder starts the model (not re-applied on resume).
    init_from: str | None = None
    #: Epochs at the start that keep the encoder fixed.
    freeze_encoder_epochs: int = 0
    #: Seeded fraction of the labeled training images used (at least one image).
    labels_fraction: float = 1.0
    #: After training, pick on val how much of the class-weighting prior to take back out of the logits.
    logit_adjustment: bool = True
    #: A fixed logit-adjustment strength (0-1) instead of choosing it on val (what a run without val needs).
    logit_alpha: float | None = None
    #: Splits whose frames train the model; a split listed here is not also used for validation.
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    #: The split that picks the best epoch and the adjustment strength (None: none; the last epoch is kept).
    val_split: str | None = "val"
    #: Recordings kept out of training and model selection, scored once at the end (the held-out estimate).
    holdout_groups: list[str] = field(default_factory=list)
    #: Regular expression giving a frame's recording from its file name (None: the dataset's own).
    group_pattern: str | None = None
    #: Training crop HxW (None: the input size); the model is fully convolutional.
    crop_size: tuple[int, int] | None = None
    #: Augmentation recipe (see `edgeseg.data.pipeline.AUGMENTS`).
    augment: str = "standard"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def selects_on_val(self) -> bool:
        """Whether a validation split (not among the training splits) picks the epoch and adjustment."""
        return self.val_split is not None and self.val_split not in self.train_splits

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / CONFIG, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        path = Path(run_dir) / CONFIG
        if not path.is_file():
            raise EdgesegError(f"{run_dir}: not a training run (no {CONFIG})")
        try:
            data = json.loads(path.read_text())
            data["input_size"] = tuple(data["input_size"])
            if data.get("crop_size") is not None:
                data["crop_size"] = tuple(data["crop_size"])
            data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
            data.setdefault("logit_adjustment", False)  # runs from before the option keep their logits
            return cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EdgesegError(f"{path}: invalid run config ({exc})") from None


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, then rename it into place: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """`write_atomic` of UTF-8 text."""
    write_atomic(path, text.encode())


def save_atomic(path: Path, save: Callable[[Path], object]) -> None:
    """`save(tmp)` (a library's writer, e.g. `model.save`) to a hidden name beside `path` that keeps its
    extension, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp.{path.name}")
    save(tmp)
    os.replace(tmp, path)


def read_state(run_dir: Path) -> dict:
    """The run's `state.json` (last epoch, best epoch and mIoU, logit adjustment); {} before the first epoch."""
    path = Path(run_dir) / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(run_dir: Path, state: dict) -> None:
    """Replace the run's `state.json` atomically."""
    atomic_write_text(Path(run_dir) / STATE, json.dumps(state, indent=2) + "\n")


def load_keras_model(path: Path):
    """Load a `.keras` model with edgeseg's custom layers registered; one-line error if unreadable."""
    import keras

    from . import deploy, model  # noqa: F401 - registers custom layers

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{path}: cannot load Keras model ({str(exc).splitlines()[0]})") from None
