"""The `edgeseg` command as users run it (real subprocesses): version, help, data, train, eval, bad data."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edgeseg import __version__

EDGESEG = str(Path(sys.executable).with_name("edgeseg"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
#: Lines TensorFlow's and LiteRT's C++ runtimes write to stderr whatever TF_CPP_MIN_LOG_LEVEL says.
_TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d"
                       r"|INFO: Created TensorFlow Lite XNNPACK delegate)")


def cli(*args: str, cwd: Path | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([EDGESEG, *map(str, args)], check=False, cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def user_stderr(proc: subprocess.CompletedProcess) -> list[str]:
    """What edgeseg itself wrote to stderr (TensorFlow's import-time log lines left out)."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not _TF_NOISE.match(line)]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = user_stderr(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"edgeseg {__version__}"


@pytest.mark.parametrize("command, options", [
    ([], ["--version", "data", "train", "eval", "export", "info"]),
    (["data"], ["synth"]),
    (["data", "synth"], ["--out", "--num", "--size", "--seed", "--force"]),
    (["train"], ["--data", "--out", "--model", "--epochs", "--resume", "--skip-bad", "--strategy",
                 "--backbone-weights", "--freeze-backbone"]),
    (["eval"], ["--data", "--split", "--artifact", "--json"]),
    (["export"], ["--out", "--target", "--precision", "--output", "--calib-data", "--num-calib",
                  "--eval-data", "--max-drop", "--debug-quant", "--float-layers", "--force"]),
    (["info"], ["--json"]),
])
def test_help_on_every_command(command: list[str], options: list[str]) -> None:
    proc = cli(*command, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and not proc.stderr.strip()
    for option in options:
        assert option in proc.stdout, option


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    """`edgeseg data synth`: 16 images of 48x64."""
    root = tmp_path_factory.mktemp("cli")
    proc = cli("data", "synth", "--out", root / "synth", "--num", "16", "--size", "48x64", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 16 images" in proc.stdout
    return root / "synth"


def test_data_synth_writes_a_dataset(cli_data: Path) -> None:
    from edgeseg.data import DEFAULT_SYNTH_CLASSES, open_dataset

    train, val = open_dataset(cli_data, "train"), open_dataset(cli_data, "val")
    assert train.format == "camvid" and train.classes == DEFAULT_SYNTH_CLASSES
    assert len(train.samples) + len(val.samples) == 16 and len(val.samples) >= 1
    image = cv2.imread(str(val.samples[0].image))
    assert image.shape == (48, 64, 3)
    # No --force: refused with one line, the dataset left alone.
    before = sorted(p.name for p in (cli_data / "train").iterdir())
    proc = cli("data", "synth", "--out", cli_data, "--num", "4", timeout=60)
    assert_one_line_error(proc, str(cli_data), "--force")
    assert sorted(p.name for p in (cli_data / "train").iterdir()) == before
    assert_one_line_error(cli("data", "synth", "--out", cli_data.parent / "x", "--size", "big", timeout=60),
                          "'big'")


@pytest.fixture(scope="module")
def bad_data(cli_data: Path, tmp_path_factory) -> tuple[Path, str]:
    """`cli_data` with one training mask deleted (the val split is untouched)."""
    root = tmp_path_factory.mktemp("bad") / "synth"
    shutil.copytree(cli_data, root)
    victim = sorted((root / "trainannot").iterdir())[1]
    victim.unlink()
    return root, victim.name


def test_train_skip_bad_then_eval_json(bad_data: tuple[Path, str], tmp_path: Path) -> None:
    data, _ = bad_data
    run = tmp_path / "run"
    proc = cli("train", "--data", data, "--out", run, "--epochs", "1", "--batch-size", "4",
               "--input-size", "32x48", "--skip-bad", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 bad samples skipped" in proc.stdout
    assert (run / "model.keras").is_file() and (run / "config.json").is_file()

    out = tmp_path / "scores.json"
    proc = cli("eval", run, "--data", data, "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert set(scores) == {"miou", "pixel_accuracy", "per_class_iou", "num_images"}
    assert 0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["pixel_accuracy"] <= 1.0
    from edgeseg.data import DEFAULT_SYNTH_CLASSES, open_dataset

    assert list(scores["per_class_iou"]) == DEFAULT_SYNTH_CLASSES
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores["per_class_iou"].values())
    assert scores["num_images"] == len(open_dataset(data, "val").samples)
    assert f"on {scores['num_images']} images" in proc.stdout
    # The same model on the same split through the same metric path as training's validation.
    val = json.loads((run / "val_scores.json").read_text())
    assert scores["miou"] == pytest.approx(val["miou"], abs=1e-9)
    assert scores["pixel_accuracy"] == pytest.approx(val["pixel_accuracy"], abs=1e-9)


def test_train_on_bad_data_is_a_one_line_error(bad_data: tuple[Path, str], tmp_path: Path) -> None:
    data, missing = bad_data
    proc = cli("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", "--input-size", "32x48",
               cwd=tmp_path)
    assert_one_line_error(proc, f"train/{missing}", "missing mask")
    assert not (tmp_path / "run" / "model.keras").exists()


def _corrupt(kind: str, root: Path) -> str:
    """Break the first val sample of a copied dataset; return the name of the offending file."""
    image = min((root / "val").iterdir())
    mask = root / "valannot" / image.name
    if kind == "missing mask":
        mask.unlink()
        return f"val/{image.name}"
    if kind == "unreadable image":
        image.write_bytes(b"\x89PNG but not really")
        return f"val/{image.name}"
    if kind == "mask size":
        cv2.imwrite(str(mask), cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)[:-4])
    else:  # label out of range
        labels = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        labels[0, 0] = 77
        cv2.imwrite(str(mask), labels)
    return f"valannot/{image.name}"


@pytest.mark.parametrize("kind, says", [
    ("missing mask", "missing mask"), ("unreadable image", "unreadable image"),
    ("mask size", "mask is 64x44 but its image is 64x48"), ("label values", "label values 77 outside")])
def test_eval_on_bad_data_is_a_one_line_error(kind: str, says: str, cli_data: Path, tiny_bundle: Path,
                                              tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cli_data, data)
    culprit = _corrupt(kind, data)
    proc = cli("eval", tiny_bundle, "--data", data, "--json", tmp_path / "s.json", timeout=120)
    assert_one_line_error(proc, culprit, says)
    assert not (tmp_path / "s.json").exists()


def test_bad_backbone_weights_via_cli_is_a_one_line_error(cli_data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "vgg16.weights.h5"
    weights.write_bytes(b"definitely not HDF5")
    proc = cli("train", "--data", cli_data, "--out", tmp_path / "run", "--model", "fcn8s", "--epochs", "1",
               "--input-size", "32x32", "--backbone-weights", weights, cwd=tmp_path)
    assert_one_line_error(proc, str(weights))
