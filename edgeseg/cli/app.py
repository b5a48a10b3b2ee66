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


#: Commands that import TensorFlow (the others run on a device with the runtime alone).
TF_COMMANDS = {"train", "export", "eval", "build", "bench", "pretrain"}
#: Commands that always need TensorFlow >= 2.16, hence Python >= 3.9 (`eval` and `bench` of a bundle do not).
TRAINING_COMMANDS = {"train", "pretrain", "export", "build"}


def require_training_python(command: str, version: Tuple[int, int]) -> None:
    """On Python 3.8 (JetPack 5) the training commands stop in one line: TensorFlow >= 2.16 needs 3.9."""
    if command in TRAINING_COMMANDS and version < (3, 9):
        raise EdgesegError(f"edgeseg {command} needs Python >= 3.9 (TensorFlow >= 2.16, the train extra); this is "
                           f"Python {version[0]}.{version[1]}, where demo, compile, check, info and eval/bench of a "
                           "bundle run")


def _import_training_libraries(verbose: bool) -> None:
    """Import TensorFlow and Keras up front (under `quiet()`, their start-up lines go to the log); without
    --verbose, Keras' printed messages go to `logging` (and so to the log) too."""
    try:
        import keras
        import tensorflow  # noqa: F401
    except ImportError:
        return
    if not verbose:
        keras.config.disable_interactive_logging()


def main() -> None:
    """Entry point: user errors are one line on stderr and a non-zero exit, never a traceback."""
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)
    verbose = "--verbose" in args[:args.index(command) if command else len(args)]
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow|keras)\.")
    try:
        require_training_python(command or "", sys.version_info[:2])
        with quiet(not verbose):
            if command in TF_COMMANDS and "--help" not in args:
                _import_training_libraries(verbose)
            app()
    except EdgesegError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if exc.name not in ("tensorflow", "keras"):
            raise
        typer.echo(f"error: edgeseg {command} needs TensorFlow here, which is not installed "
                   "(pip install 'edgeseg[train]', Python >= 3.9)", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
