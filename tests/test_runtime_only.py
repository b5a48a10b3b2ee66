"""A device install (`pip install 'edgeseg[cpu]'`, no TensorFlow): every command that needs the training
extra says so in one line, and the demo runs the shipped model on the shipped clip (no camera, no network).

`.ci/run` runs this file in a second venv that holds only `edgeseg[cpu]` and pytest; where TensorFlow is
installed (the main test venv) it skips.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                                reason="TensorFlow is installed; this checks a runtime-only install (.ci/run)")

EDGESEG = str(Path(sys.executable).with_name("edgeseg"))
EXTRA = "needs the training extra: pip install 'edgeseg[train]'"


def edgeseg(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EDGESEG, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_tensorflow_is_absent_here() -> None:
    assert importlib.util.find_spec("keras") is None and importlib.util.find_spec("tensorflow") is None


@pytest.mark.parametrize("args", [
    ["train", "--out", "{tmp}/r", "--data", "{data}"],
    ["train", "--out", "{tmp}/r"],
    ["pretrain", "--images", "{data}/train", "--out", "{tmp}/p"],
    ["export", "{run}", "--out", "{tmp}/b"],
    ["export", "{run}", "--out", "{tmp}/b", "--target", "jetson"],
    ["build"],
    ["build", "--data", "{data}", "--target", "jetson"],
    ["eval", "{run}", "--data", "{data}"],
    ["info", "{run}"],
    ["bench", "{run}"],
    ["bench", "camvid", "{run}"],
], ids=lambda args: " ".join(args))
def test_a_training_command_names_the_extra_in_one_line(args: list[str], config_only_run: dict[str, Path],
                                                        tmp_path: Path) -> None:
    proc = edgeseg(*(a.format(tmp=tmp_path, **config_only_run) for a in args), cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [f"error: edgeseg {args[0]} {EXTRA}"], proc.stderr
    assert not list(tmp_path.iterdir())  # nothing generated or written first


def test_the_demo_runs_the_shipped_model_on_the_sample_clip(tmp_path: Path) -> None:
    proc = edgeseg("demo", "camvid", "--source", "sample", "--sink", "null", "--max-frames", 5, "--stats-json",
                   tmp_path / "stats.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["frames_out"] == 5
