"""Quiet output: edgeseg's own lines on the terminal, everyone else's in a log file.

TensorFlow, the converters and the interpreters write to the process's file descriptors 1 and 2 from
C++ (absl, MLIR, XNNPACK) and from Python (Keras' export dumps, `logging`, `warnings`). `quiet()` points
both descriptors at a log file and gives `sys.stdout`/`sys.stderr` back to the terminal through copies
of the original descriptors, so edgeseg's lines (and its one-line errors) still reach the user while the
chatter lands in the log (`logging` and `warnings` go there too; the CLI also turns Keras' printed
messages into `logging` ones). A command that writes a run or a bundle keeps the log beside it
(`keep_log`); `--verbose` turns all of this off.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, TextIO

#: The open log while `quiet()` is active, and where to keep it when the command ends.
_log: Optional[TextIO] = None
_keep: Optional[Path] = None
#: Whether a `quiet(True)` block is running (also where there are no descriptors to capture).
_quiet = False


def detail(message: str) -> None:
    """A line for the log only (on the terminal with --verbose)."""
    stream = _log or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def say(message: str) -> None:
    """A line for the user: on the terminal, and in the log."""
    print(message, flush=True)
    if _log is not None:
        detail(message)


def is_quiet() -> bool:
    """Whether a `quiet()` block is running (the command has no --verbose)."""
    return _quiet


def keep_log(path: Path) -> None:
    """Keep this command's log at `path` when it ends (nothing happens with --verbose)."""
    global _keep
    _keep = Path(path)


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Send file descriptors 1 and 2 to a log file while the block runs (see the module docstring)."""
    global _quiet
    _quiet = enabled
    try:
        with _captured(enabled):
            yield
    finally:
        _quiet = False


@contextmanager
def _captured(enabled: bool) -> Iterator[None]:
    global _log, _keep
    if not enabled:
        yield
        return
    try:
        fds = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real descriptors (an embedding host): nothing to capture
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    handle, temp = tempfile.mkstemp(prefix="edgeseg-", suffix=".log")
    saved = [os.dup(fd) for fd in fds]
    streams = sys.stdout, sys.stderr
    log = os.fdopen(handle, "w", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    ours = logging.getLogger("edgeseg")
    user: Optional[logging.Handler] = None
    try:
        for fd in fds:
            os.dup2(handle, fd)
        sys.stdout, sys.stderr = (os.fdopen(fd, "w", buffering=1, encoding=s.encoding, errors="replace",
                                            closefd=False) for fd, s in zip(saved, streams))
        root.addHandler(handler)
        # edgeseg's own warnings (a skipped frame, a reconnect) are for the user: on the terminal too
        user = logging.StreamHandler(sys.stderr)
        user.setLevel(logging.WARNING)
        user.setFormatter(logging.Formatter("warning: %(message)s"))
        ours.addHandler(user)
        logging.captureWarnings(True)
        _log, _keep = log, None
        yield
    finally:
        _log = None
        logging.captureWarnings(False)
        root.removeHandler(handler)
        ours.removeHandler(user)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        log.close()
        if _keep is not None and _keep.parent.is_dir():
            shutil.move(temp, _keep)
        else:
            os.unlink(temp)
        _keep = None
