"""Quiet output (descriptor-level capture into a kept log) and progress bars."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from edgeseg.progress import Bar, Tracked, stage


class CountingBar(Bar):
    def __init__(self) -> None:
        super().__init__()
        self.advanced = 0

    def advance(self, amount: float = 1) -> None:
        self.advanced += amount


def test_quiet_keeps_native_and_library_output_in_the_log(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging, os, warnings
        from pathlib import Path
        from edgeseg.console import detail, keep_log, quiet, say
        with quiet():
            os.write(1, b"native stdout\\n")
            os.write(2, b"native stderr\\n")
            logging.getLogger("tensorflow").warning("library log line")
            warnings.warn("library warning")
            print("edgeseg print")
            say("edgeseg line")
            detail("detail line")
            keep_log(Path({str(tmp_path / "cmd.log")!r}))
        print("after")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "edgeseg print\nedgeseg line\nafter\n" and proc.stderr == ""
    log = (tmp_path / "cmd.log").read_text()
    for line in ("native stdout", "native stderr", "library log line", "library warning", "edgeseg line",
                 "detail line"):
        assert line in log, (line, log)
    assert "edgeseg print" not in log


def test_without_quiet_everything_reaches_the_terminal(tmp_path: Path) -> None:
    script = ("import os\nfrom edgeseg.console import detail, quiet, say\nwith quiet(False):\n"
              "    os.write(2, b'native\\n')\n    say('line')\n    detail('detail')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (proc.stdout, proc.stderr) == ("line\ndetail\n", "native\n")


def test_stage_draws_nothing_off_a_terminal_and_one_bar_at_a_time(capsys) -> None:
    with stage("outer", total=3) as outer:
        outer.advance()
        with stage("inner", total=2) as inner:
            inner.advance()
            inner.update(total=4, description="inner again")
    assert outer.total == 3 and inner.total == 4
    assert capsys.readouterr().out == ""


def test_tracked_advances_per_item_read() -> None:
    bar = CountingBar()
    frames = Tracked([np.zeros(2), np.ones(2), np.full(2, 2.0)], bar)
    assert len(frames) == 3 and frames[1][0] == 1.0 and bar.advanced == 0
    assert [f[0] for f in frames] == [0.0, 1.0, 2.0] and bar.advanced == 3


def test_step_progress_counts_every_training_step_of_the_epochs_left() -> None:
    import keras

    from edgeseg.train_progress import StepProgress

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((10, 2), np.float32), np.zeros((10, 1), np.float32)
    bar = CountingBar()
    callback = StepProgress(bar, epochs=4)
    for epoch in (1, 2):  # as training runs: one fit per epoch, here resumed at epoch 1 of 4
        model.fit(x, y, batch_size=4, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[callback])
    assert bar.total == 3 * 3 and bar.advanced == 2 * 3
