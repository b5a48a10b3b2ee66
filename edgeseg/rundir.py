"""A training run folder: `config.json`, `model.keras` (best epoch), checkpoints, history, logs (and a pretrain
run's `state.json`)."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .choices import AUGMENT_NAMES, MODEL_NAMES, PRETRAIN_LOSSES, WEIGHT_METHODS
from .runtime import schema as s
from .runtime.errors import EdgesegError
from .runtime.manifest import DEFAULT_MEAN, DEFAULT_STD, MANIFEST_NAME

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

    def __post_init__(self) -> None:
        check_config(asdict(self), "train")

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
        data = read_json(path, "run config")
        if isinstance(data, dict):
            data.setdefault("logit_adjustment", False)  # runs from before the option keep their logits
        check_config(data, str(path))
        sizes = {k: tuple(data[k]) for k in ("input_size", "mean", "std", "crop_size") if data.get(k) is not None}
        return cls(**{**data, **sizes})


def is_run_folder(path: Path) -> bool:
    """Whether `path` is a training run folder (a `config.json`, and not a bundle beside it)."""
    return (Path(path) / CONFIG).is_file() and not (Path(path) / MANIFEST_NAME).is_file()


#: Types and ranges of the run config's fields (fields left out here are only required to be present).
CONFIG_FIELDS: dict[str, s.Check] = {
    "model": s.text(*MODEL_NAMES), "classes": s.list_of(s.text(), min_length=1), "palette": s.list_of(s.RGB),
    "input_size": s.list_of(s.integer(1), length=2), "data": s.text(), "data_format": s.text(),
    "seed": s.integer(0), "epochs": s.integer(1), "batch_size": s.integer(1),
    "learning_rate": s.number(above=0), "class_weighting": s.text(*WEIGHT_METHODS),
    "mean": s.list_of(s.number(), length=3), "std": s.list_of(s.number(above=0), length=3),
    "init_from": s.optional(s.text()), "freeze_encoder_epochs": s.integer(0),
    "labels_fraction": s.number(above=0, high=1), "logit_adjustment": s.boolean, "extra": s.dict_of(s.anything),
    "logit_alpha": s.optional(s.number(0, 1)), "train_splits": s.list_of(s.text(), min_length=1),
    "val_split": s.optional(s.text()), "holdout_groups": s.list_of(s.text()), "group_pattern": s.optional(s.text()),
    "crop_size": s.optional(s.list_of(s.integer(1), length=2)), "augment": s.text(*AUGMENT_NAMES),
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """Check training settings (RunConfig fields) before any work: one line naming the bad one."""
    s.validate(dict(settings), s.record(CONFIG_FIELDS, open_ended=True), "train", "setting")


def check_config(data: Any, source: str) -> None:
    """One-line EdgesegError naming `source` and the field if a run config (as JSON) is malformed."""
    s.validate(data, config_schema(), source, "run config")
    if len(data["palette"]) != len(data["classes"]):
        raise EdgesegError(f"{source}: invalid run config: palette has {len(data['palette'])} colours for "
                           f"{len(data['classes'])} classes")


def config_schema() -> s.Check:
    """`config.json`: every RunConfig field (those without a default required), checked by `CONFIG_FIELDS`."""
    return s.record({f.name: CONFIG_FIELDS.get(f.name, s.anything) for f in fields(RunConfig)},
                    required=[f.name for f in fields(RunConfig)
                              if f.default is MISSING and f.default_factory is MISSING])


#: `state.json`: the last finished epoch, the best one, and the logit adjustment once made.
STATE_SCHEMA = s.record({
    "epoch": s.integer(0), "best_epoch": s.integer(-1), "best_miou": s.number(),
    "logit_adjustment": s.record({"alpha": s.number(0), "val_miou_trained": s.optional(s.number()),
                                  "val_miou": s.optional(s.number())},
                                 required=("alpha",), open_ended=True),
}, required=("epoch", "best_epoch", "best_miou"), open_ended=True)


#: `PretrainConfig` as a pretrain run's `state.json` holds it (the fields it shares with training checked alike).
PRETRAIN_CONFIG_FIELDS: dict[str, s.Check] = {
    **{k: CONFIG_FIELDS[k] for k in ("model", "input_size", "epochs", "batch_size", "learning_rate", "seed", "mean",
                                     "std")},
    "images": s.text(), "every": s.integer(1), "loss": s.text(*PRETRAIN_LOSSES), "mask_ratio": s.number(0, 1),
    "noise": s.number(0), "masked_loss": s.boolean, "whiten_colour": s.boolean,
}
#: A pretrain run's `state.json`: the last finished epoch, the preview error before training, the seconds
#: trained so far and the run's config.
PRETRAIN_STATE_SCHEMA = s.record({
    "epoch": s.integer(0), "initial_error": s.number(0), "seconds": s.number(0),
    "config": s.record(PRETRAIN_CONFIG_FIELDS, required=PRETRAIN_CONFIG_FIELDS),
}, required=("epoch", "initial_error", "seconds", "config"))


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; a one-line EdgesegError naming the file if it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable {what} ({exc})") from None


def check_resume(source: Path, saved: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Refuse, in one line, settings given with --resume that differ from those the run was started with
    (`saved`, as read from the file `source`)."""
    for key, value in given.items():
        if json.loads(json.dumps(value, default=str)) != json.loads(json.dumps(saved[key], default=str)):
            raise EdgesegError(f"{source}: --resume continues the run with its {key} {s.show(saved[key])}, not "
                               f"{s.show(value)} (use a new --out to change it)")


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, then rename it into place: never a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise EdgesegError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """`write_atomic` of UTF-8 text."""
    write_atomic(path, text.encode())


def save_atomic(path: Path, save: Callable[[Path], object]) -> None:
    """`save(tmp)` (a library's writer, e.g. `model.save`) to a hidden name beside `path` that keeps its
    extension, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".tmp.{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgesegError(f"{path}: cannot write ({exc.strerror or exc})") from None


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail before any work, in one line, if the output file `path` could not be written later (by
    `write_atomic`/`save_atomic`, which create missing parent folders)."""
    path = Path(path)
    if path.is_dir():
        raise EdgesegError(f"{path}: is a folder, not a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgesegError(f"{path}: cannot write ({parent} is not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def read_state(run_dir: Path, schema: s.Check = STATE_SCHEMA) -> dict:
    """The run's `state.json` (a training run's last epoch, best epoch and mIoU, logit adjustment; a pretrain
    run's with `PRETRAIN_STATE_SCHEMA`); {} before the first epoch."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        return {}
    state = read_json(path, "run state")
    s.validate(state, schema, str(path), "run state")
    return state


def write_state(run_dir: Path, state: dict) -> None:
    """Replace the run's `state.json` atomically."""
    atomic_write_text(Path(run_dir) / STATE, json.dumps(state, indent=2) + "\n")


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """The checkpoint written after `epoch` (0-based)."""
    return Path(run_dir) / CHECKPOINTS / f"epoch_{epoch:03d}.keras"


def load_keras_model(path: Path, compile: bool = False):
    """Load a `.keras` model with edgeseg's custom layers registered (and, with `compile`, its optimizer
    state); one-line error if it is missing or unreadable."""
    import keras

    from . import deploy, model  # noqa: F401 - registers custom layers

    if not Path(path).is_file():
        raise EdgesegError(f"{path}: missing (the run folder is incomplete)")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgesegError(f"{path}: cannot load Keras model ({str(exc).splitlines()[0]})") from None


def load_run_model(run_dir: Path):
    """A run's best Keras model and its config."""
    cfg = RunConfig.load(run_dir)
    return load_keras_model(Path(run_dir) / BEST_MODEL), cfg
