"""The `edgeseg` command: one Typer app; each command lives in its own module."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Tuple

import typer

from .. import __version__
from ..console import quiet
from ..runtime.errors import EdgesegError
from . import commands
from .training_extra import missing_module_message

try:  # typer vendors click from 0.2x on
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

app = typer.Typer(
    help="edgeseg: train, quantize, compile and run real-time semantic segmentation at the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show TensorFlow's, the converters' and the interpreters' output (by default "
                                 "kept in a log file beside the run or bundle)."),
) -> None:
    """edgeseg: train, quantize, compile and run real-time semantic segmentation at the edge."""


commands.register(app)


#: Commands that always need TensorFlow >= 2.16, hence Python >= 3.9 (`eval` and `bench` of a bundle do not).
TRAINING_COMMANDS = {"train", "pretrain", "export", "build"}


def require_training_python(command: str, version: Tuple[int, int]) -> None:
    """On Python 3.8 (JetPack 5) the training commands stop in one line: TensorFlow >= 2.16 needs 3.9."""
    if command in TRAINING_COMMANDS and version < (3, 9):
        raise EdgesegError(f"edgeseg {command} needs Python >= 3.9 (TensorFlow >= 2.16, the train extra); this is "
                           f"Python {version[0]}.{version[1]}, where demo, compile, check, info and eval/bench of a "
                           "bundle run")


def usage_error(exc: click_exceptions.ClickException) -> str:
    """A command-line error as one line: the command, then click's message (which names the option and,
    for a choice, the values it takes)."""
    where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "edgeseg"
    message = " ".join(exc.format_message().split()).replace("Value error, ", "")  # typer's validation prefix
    return f"{where}: {message}"


def main() -> None:
    """Entry point: user errors, command-line ones included, are one line on stderr and a non-zero exit,
    never a traceback or a usage box. Options are parsed and checked before anything is imported or read."""
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)
    verbose = "--verbose" in args[:args.index(command) if command else len(args)]
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow|keras)\.")
    try:
        require_training_python(command or "", sys.version_info[:2])
        with quiet(not verbose):
            code = app(standalone_mode=False)
    except click_exceptions.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `edgeseg` or `edgeseg data` alone: the help
            exc.show()
        else:
            typer.echo(f"error: {usage_error(exc)}", err=True)
        sys.exit(exc.exit_code)
    except EdgesegError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == "edgeseg":  # a bug, not an install without an extra
            raise
        typer.echo(f"error: {missing_module_message(command or '', exc.name)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
