"""Synthetic dataset: layout, determinism, content and safe writing."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeseg.data import DEFAULT_SYNTH_CLASSES, generate_synthetic, load_all, open_dataset
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


def test_content_has_many_classes_with_overlapping_colours(tmp_path: Path) -> None:
    pairs = load_all(open_dataset(generate_synthetic(tmp_path / "s", num=32, val_fraction=0.0)))
    per_image = [len(np.unique(labels)) for _, labels in pairs]
    assert set(np.unique(np.concatenate([lbl.ravel() for _, lbl in pairs]))) == set(range(6))
    assert np.median(per_image) >= 3
    # Mean colour of each class in each image: ranges of every two object classes overlap on every
    # channel, so colour alone cannot tell the classes apart.
    colours: dict[int, list[np.ndarray]] = {c: [] for c in range(1, 6)}
    for image, labels in pairs:
        for c in np.unique(labels[labels > 0]):
            colours[int(c)].append(image[labels == c].mean(axis=0))
    ranges = {c: (np.min(v, axis=0), np.max(v, axis=0)) for c, v in colours.items()}
    for a in ranges:
        for b in ranges:
            assert np.all(ranges[a][0] <= ranges[b][1]) and np.all(ranges[b][0] <= ranges[a][1]), (a, b)


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
    assert time.perf_counter() - start < 5.0
    assert len(list((out / "train").iterdir())) + len(list((out / "val").iterdir())) == 64
