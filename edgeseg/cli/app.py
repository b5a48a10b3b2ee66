"""The `edgeseg` command: one Typer app; each command lives in its own module."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Tuple

import typer

from .. import __version__
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


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr closed: its C++ start-up lines (absl, oneDNN) ignore
    TF_CPP_MIN_LOG_LEVEL and would turn one-line errors into several lines."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main() -> None:
    """Entry point: user errors are one line on stderr and a non-zero exit, never a traceback."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow|keras)\.")
    command = sys.argv[1] if len(sys.argv) > 1 and "--help" not in sys.argv else ""
    try:
        require_training_python(command, sys.version_info[:2])
        if command in TF_COMMANDS:
            _import_tensorflow_quietly()
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
