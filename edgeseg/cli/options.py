"""Shared CLI option parsing and defaults."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple

import typer

from ..runtime.errors import EdgesegError

#: Where the built-in synthetic data is generated when `--data` is left out.
DEFAULT_DATA = Path("data/synth")


def parse_size(text: str) -> Tuple[int, int]:
    """'HxW' (e.g. '360x480') to (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise EdgesegError(f"size {text!r} is not HxW (e.g. 360x480)")
    return int(match[1]), int(match[2])


def default_data(data: Optional[Path], log=print) -> Path:
    """`data`, or the built-in synthetic dataset (generated on first use)."""
    if data is not None:
        return data
    from ..data.synth import generate_synthetic

    if not (DEFAULT_DATA / "dataset.yaml").is_file():
        log(f"no --data given: generating the built-in synthetic dataset in {DEFAULT_DATA}")
        generate_synthetic(DEFAULT_DATA)
    return DEFAULT_DATA


def given_on_command_line(ctx: typer.Context, param: str) -> bool:
    """Whether the user typed `param` (not left at its default); typer may vendor click, so by name."""
    return getattr(ctx.get_parameter_source(param), "name", None) == "COMMANDLINE"
