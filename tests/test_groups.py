"""Recording groups: the overlap warning, held-out groups kept out of training and selection, and the
held-out estimate carried by the manifest, `info --json` and the build report."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.groups import group_of, overlap_warning
from edgeseg.data.readers import load_all, open_dataset
from edgeseg.rundir import RunConfig
from edgeseg.runtime.errors import EdgesegError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _edgeseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli.app", *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def _grouped(synth: Path, root: Path, layout: dict[str, list[str]]) -> Path:
    """A copy of the synthetic set whose frames are renamed `<group>_<n>.png`: `layout` gives, per split,
    the group of each frame in order (train frames first from synth's train, then from its val)."""
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("*.png"))
    sources = [(synth / s / p.name, synth / f"{s}annot" / p.name)
               for s in ("train", "val") for p in sorted((synth / s).glob("*.png"))]
    for split, groups in layout.items():
        (root / split).mkdir(exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        for i, group in enumerate(groups):
            image, mask = sources.pop(0)
            shutil.copy(image, root / split / f"{group}_{i:03d}.png")
            shutil.copy(mask, root / f"{split}annot" / f"{group}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def grouped(synth_data: Path, tmp_path_factory) -> Path:
    """train: recA x16, recB x16, recC x16; val: recA x8 (shares a recording with train), recC x8."""
    return _grouped(synth_data, tmp_path_factory.mktemp("grouped") / "data",
                    {"train": ["recA"] * 16 + ["recB"] * 16 + ["recC"] * 16, "val": ["recA"] * 8 + ["recC"] * 8})


@pytest.fixture(scope="module")
def separate(synth_data: Path, tmp_path_factory) -> Path:
    """train: recA, recB; val: recD only (no recording in common)."""
    return _grouped(synth_data, tmp_path_factory.mktemp("separate") / "data",
                    {"train": ["recA"] * 12 + ["recB"] * 12, "val": ["recD"] * 8})


def _cfg(data: Path, **kwargs) -> RunConfig:
    spec = open_dataset(data, "train")
    return RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(64, 96),
                     data=str(data), data_format=spec.format, epochs=2, batch_size=8, learning_rate=5e-3, **kwargs)


def test_groups_from_names_yaml_and_flag(grouped: Path, tmp_path: Path) -> None:
    spec = open_dataset(grouped, "val")
    assert spec.groups == ["recA"] * 8 + ["recC"] * 8
    assert open_dataset(grouped, "val", group_pattern=r"^rec(.)").groups == ["A"] * 8 + ["C"] * 8
    assert group_of(Path("x/no-underscore.png"), __import__("re").compile(r"^([^_]+)_")) is None
    meta = grouped / "dataset.yaml"
    original = meta.read_text()
    try:
        meta.write_text(original + "group_pattern: '^(rec)'\n")
        assert set(open_dataset(grouped, "train").groups) == {"rec"}
        meta.write_text(original + "group_pattern: 7\n")
        with pytest.raises(EdgesegError, match="group_pattern"):
            open_dataset(grouped, "train")
    finally:
        meta.write_text(original)
    with pytest.raises(EdgesegError, match=r"--group-pattern: invalid group pattern"):
        open_dataset(grouped, "train", group_pattern="(")


def test_run_config_names_every_augmentation_recipe() -> None:
    from edgeseg.choices import AUGMENT_NAMES
    from edgeseg.data.pipeline import AUGMENTS

    assert tuple(AUGMENTS) == AUGMENT_NAMES


def test_overlap_warning_fires_only_when_recordings_are_shared(grouped: Path, separate: Path) -> None:
    from edgeseg.train import val_overlap_warning

    warning = val_overlap_warning(_cfg(grouped))
    assert warning and "recA, recC" in warning and "overstate" in warning
    assert val_overlap_warning(_cfg(grouped, holdout_groups=["recC"])).count("recC") == 0
    assert val_overlap_warning(_cfg(separate)) is None
    assert val_overlap_warning(_cfg(grouped, train_splits=["train", "val"])) is None  # no val split at all
    assert overlap_warning("val", ["a", None], [None, "b"]) is None  # unknown groups never count as shared


def test_heldout_frames_never_reach_training_or_selection(grouped: Path) -> None:
    from edgeseg.train import TrainingData

    data = TrainingData.load(_cfg(grouped, holdout_groups=["recC"]), skip_bad=False)
    held = [img for split in ("train", "val") for (img, _), s in zip(
        load_all(open_dataset(grouped, split)), open_dataset(grouped, split).samples) if s.group == "recC"]
    assert len(data.heldout) == len(held) == 24
    for pool in (data.train, data.val):
        assert not any(np.array_equal(img, h) for img, _ in pool for h in held)
    assert len(data.train) == 32 and len(data.val) == 8
    trainval = TrainingData.load(_cfg(grouped, holdout_groups=["recC"], train_splits=["train", "val"]), False)
    assert len(trainval.train) == 40 and trainval.val == [] and len(trainval.heldout) == 24
    with pytest.raises(EdgesegError, match="recZ not found; its groups are: recA, recB, recC"):
        from edgeseg.train import check_groups
        check_groups(_cfg(grouped, holdout_groups=["recZ"]))


def _train_holding_out(grouped: Path, run: Path, group: str) -> subprocess.CompletedProcess:
    out = _edgeseg("train", "--data", str(grouped), "--out", str(run), "--model", "fcn-tiny", "--epochs", "2",
                   "--input-size", "64x96", "--holdout-groups", group, "--lr", "5e-3")
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def heldout_run(grouped: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """fcn-tiny trained through the CLI with recording recC held out (val: recA)."""
    run = tmp_path_factory.mktemp("runs") / "heldout"
    return run, _train_holding_out(grouped, run, "recC")


def test_train_warns_holds_out_and_scores_the_heldout_groups(heldout_run) -> None:
    run, out = heldout_run
    assert "warning: val frames come from recordings also in train (recA)" in out.stderr
    assert "held-out estimate (groups never trained on: recC): mIoU" in out.stdout
    state = json.loads((run / "state.json").read_text())
    record = json.loads((run / "heldout.json").read_text())
    assert state["heldout"]["groups"] == ["recC"] and state["heldout"]["num_images"] == 24
    assert record["miou"] == state["heldout"]["miou"] and 0 <= record["miou"] <= 1
    assert set(record["scores"]["per_class_iou"]) == set(RunConfig.load(run).classes)


def test_bad_holdout_group_fails_before_training(grouped: Path, tmp_path: Path) -> None:
    out = _edgeseg("train", "--data", str(grouped), "--out", str(tmp_path / "r"), "--holdout-groups", "nope",
                   "--epochs", "1")
    assert out.returncode != 0 and "nope not found" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_manifest_info_and_report_carry_the_heldout_estimate(heldout_run, tiny_run: Path, grouped: Path,
                                                             tmp_path: Path) -> None:
    from edgeseg.build import write_report

    run, _ = heldout_run
    own = tmp_path / "own"
    out = _edgeseg("export", str(run), "--out", str(own), "--eval-data", str(grouped), "--num-calib", "8")
    assert out.returncode == 0, out.stderr
    assert "warning: val frames come from recordings also in train (recA)" in out.stdout
    assert "held-out estimate (groups never trained on: recC)" in out.stdout
    info = json.loads(_edgeseg("info", str(own), "--json").stdout)
    heldout = info["evaluation"]["heldout"]
    assert heldout["groups"] == ["recC"] and heldout["num_images"] == 24
    assert heldout["miou"] == heldout["int8"]["miou"] and 0 <= heldout["float"]["miou"] <= 1
    assert set(heldout["int8"]["per_class_iou"]) == set(info["classes"])
    assert "model itself" in heldout["method"]
    calibration = info["calibration"]["files"]
    assert calibration and not any("recC" in f for f in calibration)  # held-out frames shape no ranges
    assert info["evaluation"]["overlap_warning"].startswith("val frames come from recordings also in train")

    report = write_report(own, threads=1)
    assert report["heldout"] == heldout and report["overlap_warning"]
    text = (own / "report.md").read_text()
    assert "held-out estimate (groups never trained on: recC)" in text and "Warning: val frames" in text

    # another run's estimate: the held-out run of the same recipe, exported alike
    other = tmp_path / "other"
    out = _edgeseg("export", str(tiny_run), "--out", str(other), "--heldout-run", str(run), "--num-calib", "8")
    assert out.returncode == 0, out.stderr
    estimate = json.loads((other / "edgeseg.json").read_text())["evaluation"]["heldout"]
    assert "same recipe" in estimate["method"] and [f["run"] for f in estimate["folds"]] == [run.name]
    assert estimate["int8"]["miou"] == pytest.approx(heldout["int8"]["miou"], abs=0.02)

    # leave-one-group-out: a second fold holding out recB; both folds' frames pooled into one estimate
    fold_b = tmp_path / "heldout_b"
    _train_holding_out(grouped, fold_b, "recB")
    pooled_bundle = tmp_path / "pooled"
    out = _edgeseg("export", str(tiny_run), "--out", str(pooled_bundle), "--heldout-run", str(run),
                   "--heldout-run", str(fold_b), "--num-calib", "8")
    assert out.returncode == 0, out.stderr
    assert "(groups never trained on: recC, recB)" in out.stdout
    assert "2 group folds pooled" in out.stdout
    pooled = json.loads((pooled_bundle / "edgeseg.json").read_text())["evaluation"]["heldout"]
    assert pooled["method"].startswith("group folds: 2 runs")
    assert [(f["run"], f["groups"], f["num_images"]) for f in pooled["folds"]] == [
        (run.name, ["recC"], 24), (fold_b.name, ["recB"], 16)]
    assert pooled["groups"] == ["recC", "recB"] and pooled["num_images"] == pooled["int8"]["num_images"] == 40
    assert pooled["folds"][0]["int8"] == pytest.approx(estimate["int8"]["miou"], abs=1e-9)  # the same export
    assert pooled["miou"] == pooled["int8"]["miou"] and set(pooled["float"]["per_class_iou"]) == set(info["classes"])


def test_tallies_pool_into_the_matrix_of_all_their_frames() -> None:
    from edgeseg.evaluate import Tally

    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 3, (4, 5)), rng.integers(0, 3, (4, 5))) for _ in range(6)]
    first, second, whole = Tally("abc"), Tally("abc"), Tally("abc")
    for i, (labels, target) in enumerate(frames):
        (first if i < 2 else second).add(labels, target)
        whole.add(labels, target)
    pooled = first + second
    assert np.array_equal(pooled.matrix, whole.matrix) and pooled.frames == 6
    assert pooled.scores() == whole.scores() and first.frames == 2  # the parts are left as they were
    with pytest.raises(ValueError, match="cannot pool"):
        first + Tally("abd")


def test_heldout_runs_that_score_one_recording_twice_are_one_line(heldout_run, tiny_run: Path,
                                                                 tmp_path: Path) -> None:
    run, _ = heldout_run
    out = _edgeseg("export", str(tiny_run), "--out", str(tmp_path / "b"), "--heldout-run", str(run),
                   "--heldout-run", str(run))
    assert out.returncode != 0 and "holds out recC, as" in out.stderr and "scored by one run only" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_heldout_runs_that_group_frames_differently_are_one_line(heldout_run, tiny_run: Path,
                                                                   tmp_path: Path) -> None:
    run, _ = heldout_run
    regrouped = tmp_path / "regrouped"
    shutil.copytree(run, regrouped)
    config = json.loads((regrouped / "config.json").read_text())
    config.update(group_pattern=r"^(rec)", holdout_groups=["rec"])
    (regrouped / "config.json").write_text(json.dumps(config))
    out = _edgeseg("export", str(tiny_run), "--out", str(tmp_path / "b"), "--heldout-run", str(run),
                   "--heldout-run", str(regrouped))
    assert out.returncode != 0 and f"{regrouped}: groups frames by --group-pattern '^(rec)'" in out.stderr
    assert "pooled folds must group alike" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr and not (tmp_path / "b").exists()


def test_a_validation_split_wholly_held_out_is_refused_before_training(separate: Path, tmp_path: Path) -> None:
    out = _edgeseg("train", "--data", str(separate), "--out", str(tmp_path / "r"), "--holdout-groups", "recD",
                   "--epochs", "1")
    assert out.returncode != 0 and "every val frame is in the held-out group(s) recD" in out.stderr
    assert "--val-split none" in out.stderr and "Traceback" not in out.stderr and not (tmp_path / "r").exists()
    from edgeseg.train import check_groups

    trained_on_all = _cfg(separate, holdout_groups=["recD"], train_splits=["train", "val"], val_split=None)
    assert check_groups(trained_on_all) == {"train": {"recA": 12, "recB": 12}, "val": {"recD": 8}}


def test_export_heldout_run_without_heldout_groups_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    out = _edgeseg("export", str(tiny_run), "--out", str(tmp_path / "b"), "--heldout-run", str(tiny_run))
    assert out.returncode != 0 and "trained without --holdout-groups" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "b").exists()


def test_build_holds_out_the_last_group_by_default(grouped: Path) -> None:
    from edgeseg.build import holdout_groups

    spec = open_dataset(grouped, "train")
    assert holdout_groups(spec, "auto") == ["recC"]
    assert holdout_groups(spec, "none") == [] and holdout_groups(spec, "recA,recB") == ["recA", "recB"]
    single = open_dataset(grouped, "train", group_pattern=r"^(rec)")
    assert holdout_groups(single, "auto") == []


def test_data_groups_command(grouped: Path) -> None:
    out = _edgeseg("data", "groups", str(grouped))
    assert out.returncode == 0, out.stderr
    assert "train: 48 frames in 3 group(s): recA (16), recB (16), recC (16)" in out.stdout
    assert "warning: val frames come from recordings also in train (recA, recC)" in out.stdout
