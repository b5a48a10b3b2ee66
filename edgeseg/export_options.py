"""What an export is asked for, and the checks on it that need no model: light to import (no TensorFlow),
so that the CLI refuses a bad combination before the training libraries load."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .choices import TARGET_PRECISIONS
from .runtime.errors import EdgesegError


@dataclass
class ExportOptions:
    precision: str = "int8"
    output: str = "logits"
    calib_data: Path | None = None
    num_calib: int = 200
    eval_data: Path | None = None
    eval_split: str = "val"
    max_drop: float | None = None
    debug_quant: bool = False
    float_layers: Sequence[str] = ()
    float_ops: Sequence[str] = ()
    force: bool = False
    threads: int | None = None
    # jetson target
    opset: int = 17
    layout: str = "nchw"
    batch: int = 1
    calib_method: str | None = None  # None: "auto" with eval data, else "entropy"
    #: Runs of the same recipe trained with `--holdout-groups` (one, or one per group
    #: fold): each exported alike and scored on its held-out groups, pooled into this bundle's estimate
    #: of accuracy on new footage (see `heldout_estimate`).
    heldout_runs: Sequence[Path] = ()


def check_export(out: Path, opts: ExportOptions, target: str) -> None:
    """Refuse, in one line, an export that cannot succeed whatever the model: an unknown target, a precision
    the target does not offer, a comparison without its data, a bundle in the way."""
    if target not in TARGET_PRECISIONS:
        raise EdgesegError(f"unknown target {target!r}; choose from {', '.join(TARGET_PRECISIONS)}")
    if opts.precision not in TARGET_PRECISIONS[target]:
        raise EdgesegError(f"precision {opts.precision!r} is not offered for --target {target}; "
                           f"choose from {', '.join(TARGET_PRECISIONS[target])}")
    if opts.max_drop is not None and (opts.eval_data is None or opts.precision != "int8"):
        raise EdgesegError("--max-drop compares float and INT8 on evaluation images: give --precision int8 "
                           "and --eval-data")
    if opts.calib_method == "auto" and opts.eval_data is None:
        raise EdgesegError("--calib-method auto scores each method on the evaluation images: give --eval-data")
    if Path(out).exists() and not opts.force:
        raise EdgesegError(f"{out}: already exists (use --force to overwrite)")
