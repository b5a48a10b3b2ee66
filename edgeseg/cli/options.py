"""Shared CLI option parsing and defaults."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, get_args

import typer

from ..choices import ModelName
from ..runtime.errors import EdgesegError

#: Where the built-in synthetic data is generated when `--data` is left out.
DEFAULT_DATA = Path("data/synth")


def listed(choice: Any) -> str:
    """A choice's values for a help text, where a short metavar stands for them (a long list as the metavar
    squeezes the help table's option column): `a, b or c`."""
    values = get_args(choice)
    return f"{', '.join(values[:-1])} or {values[-1]}"


def model_option(purpose: str = "The model") -> Any:
    """`--model NAME`, default fcn-tiny, as train, pretrain and build take it."""
    return typer.Option("fcn-tiny", "--model", metavar="NAME", help=f"{purpose}: {listed(ModelName)}.")


def parse_size(text: str) -> Tuple[int, int]:
    """'HxW' (e.g. '360x480') to (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise EdgesegError(f"size {text!r} is not HxW (e.g. 360x480)")
    return int(match[1]), int(match[2])


def check_size(value: Optional[str]) -> Optional[str]:
    """Option callback: refuse a size that is not HxW while the command line is parsed."""
    if value is not None:
        try:
            parse_size(value)
        except EdgesegError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


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


#: Where an option applies: {option: {other option: the values the other must have}}, by parameter name.
#: `GIVEN` as the values means "the other option is given"; `(None,)` means "the other is left out".
Scope = Dict[str, Dict[str, Sequence[Any]]]
GIVEN: Sequence[Any] = ("<given>",)


def _param(ctx: typer.Context, name: str) -> Any:
    """The command's click parameter called `name`."""
    return next(p for p in ctx.command.params if p.name == name)


def flag(ctx: typer.Context, name: str) -> str:
    """The command-line spelling of parameter `name` (`calib_data` -> `--calib-data`)."""
    return _param(ctx, name).opts[0]


def _spelled(ctx: typer.Context, name: str, value: Any) -> str:
    """How the user set `name` to `value`: `--target cpu`, `--no-logit-adjustment`, `--run`."""
    param = _param(ctx, name)
    if isinstance(value, bool):
        return param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0]
    return param.opts[0] if isinstance(value, Path) else f"{param.opts[0]} {value}"


def check_scope(ctx: typer.Context, scope: Scope, values: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse, in one line, an option given on the command line where it does not apply (`scope`) instead
    of ignoring it; judged on `values` (default: the parsed options)."""
    values = ctx.params if values is None else values
    for name, conditions in scope.items():
        if not given_on_command_line(ctx, name):
            continue
        for other, allowed in conditions.items():
            value = values[other]
            if allowed is GIVEN and value is None:
                raise EdgesegError(f"{flag(ctx, name)} applies only with {flag(ctx, other)}")
            if allowed is not GIVEN and value not in allowed:
                only = "" if None in allowed or isinstance(value, bool) else \
                    f" (only with {flag(ctx, other)} {' or '.join(map(str, allowed))})"
                raise EdgesegError(f"{flag(ctx, name)} does not apply with {_spelled(ctx, name=other, value=value)}"
                                   f"{only}")
