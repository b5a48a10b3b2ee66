"""Dataset readers: CamVid, image/mask pairs and VOC layouts, metadata, and bad data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from edgeseg.data import DataError, load_all, load_sample, open_dataset, validate
from edgeseg.data.readers import detect_format, voc_colormap

META = {"classes": ["bg", "a", "b"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "ignore_index": 255}


def _image(path: Path, h: int = 8, w: int = 10, bgr: tuple[int, int, int] = (0, 0, 255)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), bgr, np.uint8))


def _mask(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for rgb in voc_colormap() for v in rgb])
    im.save(path)


def _labels(values: list[int], h: int = 8, w: int = 10) -> np.ndarray:
    """An h x w label map cycling through `values`."""
    return np.resize(np.array(values, np.uint8), h * w).reshape(h, w)


def _pairs(root: Path, names: tuple[str, ...] = ("x", "y"), split: str | None = "train",
           meta: dict | None = META) -> Path:
    base = root / split if split else root
    for name in names:
        _image(base / "images" / f"{name}.jpg")
        _mask(base / "masks" / f"{name}.png", _labels([0, 1, 2, 255]))
    if meta is not None:
        (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


def _camvid(root: Path, names: tuple[str, ...] = ("0001", "0002")) -> Path:
    for name in names:
        _image(root / "train" / f"{name}.png")
        _mask(root / "trainannot" / f"{name}.png", _labels([0, 3, 10, 11]))
    return root


def test_camvid_defaults_and_void_is_ignored(tmp_path: Path) -> None:
    spec = open_dataset(_camvid(tmp_path))
    assert (spec.format, spec.split, len(spec.samples)) == ("camvid", "train", 2)
    assert spec.classes[0] == "Sky" and spec.classes[-1] == "Bicyclist" and spec.num_classes == 11
    assert spec.palette[0] == [128, 128, 128] and spec.palette[4] == [60, 40, 222]
    assert spec.ignore_index_on_disk == 11
    image, labels = load_sample(spec, spec.samples[0])
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (255, 0, 0)  # written as BGR red, read as RGB
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 3, 10, 255}


def test_camvid_missing_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no split 'val'; it has: train"):
        open_dataset(_camvid(tmp_path), "val")


def test_pairs_with_splits(tmp_path: Path) -> None:
    spec = open_dataset(_pairs(tmp_path))
    assert spec.format == "pairs" and spec.classes == META["classes"] and spec.palette == META["palette"]
    assert [s.image.name for s in spec.samples] == ["x.jpg", "y.jpg"]
    assert [s.mask.name for s in spec.samples if s.mask] == ["x.png", "y.png"]
    _, labels = load_sample(spec, spec.samples[1])
    assert set(np.unique(labels)) == {0, 1, 2, 255}


def test_pairs_without_split_folders_serve_any_split(tmp_path: Path) -> None:
    _pairs(tmp_path, split=None)
    assert len(open_dataset(tmp_path, "val").samples) == 2


def test_pairs_need_dataset_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset.yaml"):
        open_dataset(_pairs(tmp_path, meta=None))


def test_voc_palette_pngs(tmp_path: Path) -> None:
    labels = _labels([0, 15, 255])
    for stem in ("2007_000001", "2007_000002"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        _mask(tmp_path / "SegmentationClass" / f"{stem}.png", labels, palette=True)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n2007_000002\n")
    spec = open_dataset(tmp_path)
    assert spec.format == "voc" and spec.num_classes == 21 and spec.classes[15] == "person"
    assert spec.palette[1] == [128, 0, 0] and spec.palette[15] == [192, 128, 128]
    with Image.open(spec.samples[0].mask) as im:
        assert im.mode == "P"
    _, loaded = load_sample(spec, spec.samples[0])
    np.testing.assert_array_equal(loaded, labels)
    with pytest.raises(DataError, match="no split 'val'; it has: train"):
        open_dataset(tmp_path, "val")


def test_format_detection_and_unknown_layout(tmp_path: Path) -> None:
    assert detect_format(_camvid(tmp_path / "c")) == "camvid"
    assert detect_format(_pairs(tmp_path / "p")) == "pairs"
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match=r"junk: unrecognised dataset layout; expected camvid"):
        open_dataset(tmp_path / "junk")
    with pytest.raises(DataError, match="unknown dataset format 'coco'"):
        open_dataset(tmp_path / "c", format="coco")
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "missing")


def test_dataset_yaml_overrides_camvid_defaults(tmp_path: Path) -> None:
    (_camvid(tmp_path) / "dataset.yaml").write_text(yaml.safe_dump({"classes": [f"c{i}" for i in range(11)],
                                                                   "ignore_index": 11}))
    spec = open_dataset(tmp_path)
    assert spec.classes[0] == "c0" and spec.ignore_index_on_disk == 11
    assert spec.palette[:2] == [[0, 0, 0], [128, 0, 0]]  # no palette given: VOC colormap


@pytest.mark.parametrize("meta, message", [
    ("classes: [a, b\n", "unreadable"),
    ("- just a list\n", "expected a mapping"),
    ({"classes": "a,b"}, "classes must be"),
    ({"classes": ["a", 3]}, "classes must be"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, "palette must"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0], [0, 0, 300]]}, "palette must"),
    ({"classes": ["a", "b", "c"], "ignore_index": 1}, "ignore_index must"),
])
def test_bad_dataset_yaml(tmp_path: Path, meta: dict | str, message: str) -> None:
    _pairs(tmp_path, meta=None)
    yaml_path = tmp_path / "dataset.yaml"
    yaml_path.write_text(meta if isinstance(meta, str) else yaml.safe_dump(meta))
    with pytest.raises(DataError, match=message) as exc:
        open_dataset(tmp_path)
    assert str(exc.value).startswith(f"{yaml_path}: ") and "\n" not in str(exc.value)


def _break_missing_mask(spec_root: Path) -> Path:
    (spec_root / "train" / "masks" / "x.png").unlink()
    return spec_root / "train" / "images" / "x.jpg"


def _break_size(spec_root: Path) -> Path:
    _mask(spec_root / "train" / "masks" / "x.png", _labels([0], 8, 12))
    return spec_root / "train" / "masks" / "x.png"


def _break_label_range(spec_root: Path) -> Path:
    _mask(spec_root / "train" / "masks" / "x.png", _labels([0, 1, 7, 9]))
    return spec_root / "train" / "masks" / "x.png"


def _break_image(spec_root: Path) -> Path:
    (spec_root / "train" / "images" / "x.jpg").write_bytes(b"not a jpeg")
    return spec_root / "train" / "images" / "x.jpg"


def _break_mask_file(spec_root: Path) -> Path:
    (spec_root / "train" / "masks" / "x.png").write_bytes(b"\x89PNG truncated")
    return spec_root / "train" / "masks" / "x.png"


def _break_rgb_mask(spec_root: Path) -> Path:
    Image.new("RGB", (10, 8)).save(spec_root / "train" / "masks" / "x.png")
    return spec_root / "train" / "masks" / "x.png"


@pytest.mark.parametrize("breaker, message", [
    (_break_missing_mask, "missing mask"),
    (_break_size, "mask is 12x8 but its image is 10x8"),
    (_break_label_range, "label values 7, 9 outside classes 0..2"),
    (_break_image, "unreadable image"),
    (_break_mask_file, "unreadable mask"),
    (_break_rgb_mask, "RGB mask"),
])
def test_bad_sample_names_the_file(tmp_path: Path, breaker, message: str) -> None:
    bad_path = breaker(_pairs(tmp_path, names=("x", "y", "z")))
    spec = open_dataset(tmp_path)
    with pytest.raises(DataError, match=message) as exc:
        validate(spec)
    assert str(exc.value).startswith(f"{bad_path}: ") and "\n" not in str(exc.value)
    good, errors = validate(spec, skip_bad=True)
    assert [s.image.stem for s in good] == ["y", "z"]
    assert len(errors) == 1 and errors[0] == str(exc.value)
    assert len(load_all(spec, good)) == 2


def test_empty_and_all_bad_splits(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(DataError, match="split 'val' has no samples"):
        validate(open_dataset(tmp_path, "val"))
    _image(tmp_path / "val" / "a.png")
    with pytest.raises(DataError, match="no usable samples .*missing mask"):
        validate(open_dataset(tmp_path, "val"), skip_bad=True)
