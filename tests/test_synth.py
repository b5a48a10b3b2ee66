"""Synthetic dataset: layout, determinism, content and safe writing."""
from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeseg.data import DEFAULT_SYNTH_CLASSES, generate_synthetic, load_all, open_dataset
from edgeseg.data.synth import DEFAULT_NUM
from edgeseg.runtime.errors import EdgesegError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(tmp_path: Path) -> None:
    out = generate_synthetic(tmp_path / "synth", num=8, size=(48, 64), val_fraction=0.25)
    for split, count in (("train", 6), ("val", 2)):
        images = sorted(p.name for p in (out / split).iterdir())
        assert len(images) == count
        assert images == sorted(p.name for p in (out / f"{split}annot").iterdir())
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["classes"] == DEFAULT_SYNTH_CLASSES and len(DEFAULT_SYNTH_CLASSES) == 6
    assert len(meta["palette"]) == 6 and meta["ignore_index"] == 255
    image, labels = load_all(open_dataset(out, "val"))[0]
    assert image.shape == (48, 64, 3) and labels.shape == (48, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no staging folders left behind


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_synthetic(tmp_path / "a", num=6, seed=3))
    b = _files(generate_synthetic(tmp_path / "b", num=6, seed=3))
    c = _files(generate_synthetic(tmp_path / "c", num=6, seed=4))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_colour_tells_the_class_mostly_and_shapes_the_rest(tmp_path: Path) -> None:
    """Learnable in a few minutes: each object class keeps to its own hue band on greyish backgrounds; a disc
    and a ring (or a box and a bar) differ only by shape."""
    pairs = load_all(open_dataset(generate_synthetic(tmp_path / "s", num=32, val_fraction=0.0)))
    assert set(np.unique(np.concatenate([lbl.ravel() for _, lbl in pairs]))) == set(range(6))
    assert np.median([len(np.unique(labels)) for _, labels in pairs]) >= 2
    nearest, count, saturation = 0, 0, {"background": [], "objects": []}
    for image, labels in pairs:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        saturation["background"].append(hsv[labels == 0, 1].mean())
        for c in np.unique(labels[labels > 0]):
            angle = hsv[labels == c, 0] * 2 * np.pi / 256  # circular mean hue of the object's pixels
            hue = np.degrees(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360
            centres = 360.0 * np.arange(5) / 5
            nearest += int(np.argmin(np.minimum(abs(centres - hue), 360 - abs(centres - hue)))) + 1 == c
            count += 1
            saturation["objects"].append(hsv[labels == c, 1].mean())
    assert nearest / count >= 0.9
    assert np.mean(saturation["objects"]) > 2 * np.mean(saturation["background"])


def test_names_carry_the_recording_and_validation_is_the_last_one(tmp_path: Path) -> None:
    out = generate_synthetic(tmp_path / "s", num=16, val_fraction=0.25)
    groups = {split: sorted({p.name.split("_")[0] for p in (out / split).iterdir()}) for split in ("train", "val")}
    assert groups == {"train": ["rec0", "rec1", "rec2"], "val": ["rec3"]}
    assert all(re.fullmatch(r"rec\d_\d{4}\.png", p.name) for p in (out / "train").iterdir())


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    generate_synthetic(out, num=2)  # an empty folder is fine
    (out / "keep.txt").write_text("user data")
    with pytest.raises(EdgesegError, match="already exists"):
        generate_synthetic(out, num=2)
    assert (out / "keep.txt").exists()
    generate_synthetic(out, num=2, force=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.yaml").is_file()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="val_fraction"):
        generate_synthetic(tmp_path / "s", num=4, val_fraction=1.0)
    assert not (tmp_path / "s").exists()


def test_default_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = generate_synthetic(tmp_path / "s")
    assert time.perf_counter() - start < 10.0
    assert len(list((out / "train").iterdir())) + len(list((out / "val").iterdir())) == DEFAULT_NUM
