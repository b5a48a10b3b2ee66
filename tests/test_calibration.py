"""Calibration: deterministic stratified choice, content hash, cache reuse/invalidation, bad input."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeseg.calibration.frames import MIN_CALIB_IMAGES, choose_calibration
from edgeseg.calibration.select import class_histograms, content_hash, stratified_order
from edgeseg.data import load_sample, open_dataset
from edgeseg.runtime.errors import EdgesegError

EDGESEG = str(Path(sys.executable).with_name("edgeseg"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
_TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d"
                       r"|INFO: Created TensorFlow Lite XNNPACK delegate)")
SIZE = (64, 96)  # the tiny run's input size (conftest TINY_SIZE)


def test_class_histograms_leave_ignore_out() -> None:
    masks = [np.array([[0, 1], [255, 1]], np.uint8), np.full((2, 3), 255, np.uint8)]
    np.testing.assert_array_equal(class_histograms(masks, 3), [[1, 2, 0], [0, 0, 0]])


def test_stratified_order_by_hand() -> None:
    #            bg  c1  c2      images holding each class: bg 4, c1 2, c2 1 -> rounds c2, c1, bg
    hist = np.array([[100, 0, 0],   # a
                     [50, 10, 0],   # b
                     [60, 0, 5],    # c: the only image with the rarest class
                     [40, 20, 0],   # d: most c1 pixels
                     [0, 0, 0]])    # e: nothing labelled, always last
    names = ["a", "b", "c", "d", "e"]
    # Round 1: c2 -> c; c1 -> d (20 px > 10); bg -> a (most bg). Round 2: c1 -> b. Then e.
    assert [names[i] for i in stratified_order(hist, names)] == ["c", "d", "a", "b", "e"]
    # The order depends on content and names only, not on how the images were listed.
    perm = [4, 2, 0, 3, 1]
    shuffled = stratified_order(hist[perm], [names[i] for i in perm])
    assert [names[perm[i]] for i in shuffled] == ["c", "d", "a", "b", "e"]


def test_stratified_order_breaks_ties_by_name() -> None:
    hist = np.array([[5, 3], [5, 3], [5, 0]])
    # Round 1: c1 (rarer) -> y (3 px each, "y" < "z"); bg -> x (5 px each, "x" first). Round 2: c1 -> z.
    assert stratified_order(hist, ["z", "y", "x"]) == [1, 2, 0]


def test_choice_is_deterministic_and_rare_classes_come_first(synth_data: Path) -> None:
    spec = open_dataset(synth_data, "train")
    a_set, a_frames = choose_calibration(spec, 8, spec.classes, SIZE)
    b_set, b_frames = choose_calibration(open_dataset(synth_data, "train"), 8, spec.classes, SIZE)
    assert a_set == b_set and len(a_set.files) == 8 and len(set(a_set.files)) == 8
    assert all(np.array_equal(x, y) for x, y in zip(a_frames, b_frames))
    assert all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for f in a_frames)
    assert a_set.sha256 == content_hash(synth_data, a_set.files) and len(a_set.sha256) == 64

    # By hand: the class found in the fewest training images, and the images that hold it.
    masks = {str(s.image.relative_to(synth_data)): load_sample(spec, s)[1] for s in spec.samples}
    holders = {c: {n for n, m in masks.items() if (m == c).any()} for c in range(spec.num_classes)}
    rarest = min(range(spec.num_classes), key=lambda c: (len(holders[c]), c))
    best = max(holders[rarest], key=lambda n: ((masks[n] == rarest).sum(), [-ord(ch) for ch in n]))
    assert a_set.files[0] == best
    assert a_set.images_per_class == {
        name: sum(1 for f in a_set.files if f in holders[c]) for c, name in enumerate(spec.classes)}
    assert a_set.record()["num_images"] == 8 and a_set.record()["files"] == a_set.files

    # More images asked than there are: all of them, still in stratified order.
    everything, _ = choose_calibration(spec, 1000, spec.classes, SIZE)
    assert everything.files[:8] == a_set.files and len(everything.files) == len(spec.samples)


def test_content_hash_follows_bytes_and_order(synth_data: Path, tmp_path: Path) -> None:
    files = ["train/rec0_0000.png", "train/rec0_0001.png"]
    copy = tmp_path / "copy"
    (copy / "train").mkdir(parents=True)
    for f in files:
        shutil.copy(synth_data / f, copy / f)
    assert content_hash(copy, files) == content_hash(synth_data, files)  # content, not location
    assert content_hash(copy, files[::-1]) != content_hash(copy, files)
    image = cv2.imread(str(copy / files[1]))
    image[0, 0] ^= 1
    cv2.imwrite(str(copy / files[1]), image)
    assert content_hash(copy, files) != content_hash(synth_data, files)


def _calib_copy(synth_data: Path, dest: Path, keep: int | None = None) -> Path:
    shutil.copytree(synth_data, dest)
    if keep is not None:
        for split in ("train", "trainannot"):
            for p in sorted((dest / split).iterdir())[keep:]:
                p.unlink()
    return dest


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_bad_calibration_input(synth_data: Path, tmp_path: Path) -> None:
    spec = open_dataset(synth_data, "train")
    # Too few images: in the data, or asked for.
    few = open_dataset(_calib_copy(synth_data, tmp_path / "few", keep=MIN_CALIB_IMAGES - 1), "train")
    with pytest.raises(EdgesegError, match="too few calibration images") as exc:
        choose_calibration(few, 200, spec.classes, SIZE)
    assert str(few.root) in _one_line(exc)
    with pytest.raises(EdgesegError, match="too few calibration images"):
        choose_calibration(spec, MIN_CALIB_IMAGES - 1, spec.classes, SIZE)
    # An unreadable image is named.
    broken = _calib_copy(synth_data, tmp_path / "broken")
    (broken / "train" / "rec0_0005.png").write_bytes(b"not an image")
    with pytest.raises(EdgesegError, match="unreadable image") as exc:
        choose_calibration(open_dataset(broken, "train"), 8, spec.classes, SIZE)
    assert "train/rec0_0005.png" in _one_line(exc)
    # Classes that do not match the model's.
    with pytest.raises(EdgesegError, match="do not match") as exc:
        choose_calibration(spec, 8, spec.classes[:-1], SIZE)
    _one_line(exc)
    # Images (96x128, 4:3) far from the model's aspect ratio (1:2); within 15% is accepted.
    with pytest.raises(EdgesegError, match="aspect ratio") as exc:
        choose_calibration(spec, 8, spec.classes, (48, 96))
    assert str(synth_data) in _one_line(exc)
    choose_calibration(spec, 8, spec.classes, (96, 120))  # 5:4 vs 4:3 is close enough


def test_bad_calibration_data_via_cli(tiny_run: Path, synth_data: Path, tmp_path: Path) -> None:
    calib = _calib_copy(synth_data, tmp_path / "calib")
    meta = yaml.safe_load((calib / "dataset.yaml").read_text())
    meta["classes"][1] = "sphere"
    (calib / "dataset.yaml").write_text(yaml.safe_dump(meta))
    out = tmp_path / "bundle"
    proc = subprocess.run([EDGESEG, "export", str(tiny_run), "--out", str(out), "--calib-data", str(calib)],
                          check=False, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _TF_NOISE.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sphere" in lines[0], lines
    assert str(calib) in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".bundle*"))


def test_calibration_cache_reused_and_invalidated(tiny_run: Path, synth_data: Path, tmp_path: Path) -> None:
    from edgeseg.export import ExportOptions, export_cpu

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("calibration", "logs"))
    cache = run / "calibration"

    def export(name: str, calib_data: Path | None = None):
        opts = ExportOptions(precision="int8", output="logits", num_calib=8, calib_data=calib_data)
        return export_cpu(run, tmp_path / name, opts, log=lambda _: None)

    first = export("a")
    assert not first.calibration_cached and first.manifest.calibration["reused_cache"] is False
    assert len(list(cache.glob("*.calib.tflite"))) == 1

    # The same images (here a byte-identical copy elsewhere): the cached ranges are reused.
    calib = _calib_copy(synth_data, tmp_path / "calib")
    second = export("b", calib)
    assert second.calibration_cached and second.manifest.calibration["reused_cache"] is True
    assert second.manifest.calibration["sha256"] == first.manifest.calibration["sha256"]
    int8 = "model_int8.tflite"
    assert (tmp_path / "b" / int8).read_bytes() == (tmp_path / "a" / int8).read_bytes()
    assert len(list(cache.glob("*.calib.tflite"))) == 1

    # One chosen image changes: a different set, so it is calibrated afresh.
    changed = calib / first.manifest.calibration["files"][3]
    image = cv2.imread(str(changed))
    cv2.imwrite(str(changed), 255 - image)
    third = export("c", calib)
    assert not third.calibration_cached and third.manifest.calibration["reused_cache"] is False
    assert third.manifest.calibration["sha256"] != first.manifest.calibration["sha256"]
    assert third.manifest.calibration["files"] == first.manifest.calibration["files"]
    assert len(list(cache.glob("*.calib.tflite"))) == 2
