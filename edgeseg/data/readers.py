"""Dataset readers: CamVid (SegNet layout), generic image/mask pairs and Pascal VOC.

Every reader gives a `DatasetSpec`; `load_sample` returns RGB uint8 images and uint8 labels with the
dataset's void value mapped to `IGNORE_INDEX`.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from edgeseg.data.groups import PREFIX_PATTERN, compile_pattern, group_of
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import IGNORE_INDEX

FORMATS = ("camvid", "pairs", "voc")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
META_NAME = "dataset.yaml"
LAYOUTS = ("camvid (<split>/ and <split>annot/), pairs (<split>/images and <split>/masks, or images/ and "
           "masks/) or voc (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt)")

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                  [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
CAMVID_VOID = 11
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


class DataError(EdgesegError):
    """Bad or missing dataset data; the message starts with the offending path."""


@dataclass
class Sample:
    image: Path
    mask: Path | None
    #: The recording the frame comes from (see `edgeseg.data.groups`), None where unknown.
    group: str | None = None


@dataclass
class DatasetSpec:
    root: Path
    format: str
    split: str
    samples: list[Sample]
    classes: list[str]
    palette: list[list[int]]
    #: The label value on disk that means "ignore" (mapped to IGNORE_INDEX on load), or None.
    ignore_index_on_disk: int | None
    #: The regular expression that gives each sample's group (recording), None where groups are unknown.
    group_pattern: str | None = None

    @property
    def groups(self) -> list[str | None]:
        """Each sample's group, in sample order."""
        return [s.group for s in self.samples]

    def by_groups(self, groups: Collection[str], inside: bool) -> DatasetSpec:
        """This split with only the samples whose group is (`inside`) or is not in `groups`."""
        return replace(self, samples=[s for s in self.samples if (s.group in groups) == inside])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def voc_colormap(n: int = 256) -> list[list[int]]:
    """Pascal VOC's label colormap (bit-interleaved class index), n entries."""
    cmap = []
    for i in range(n):
        rgb, c = [0, 0, 0], i
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        cmap.append(rgb)
    return cmap


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_colour(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_int(v, 0, 255) for v in value)


def _read_meta(path: Path) -> tuple[list[str], list[list[int]], int | None, str | None]:
    """Classes, palette, on-disk ignore value and group pattern from a dataset.yaml (all but classes optional)."""
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: unreadable ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a mapping with classes, palette and ignore_index")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and 0 < len(classes) < IGNORE_INDEX
            and all(isinstance(c, str) and c for c in classes)):
        raise DataError(f"{path}: classes must be a list of 1 to {IGNORE_INDEX - 1} non-empty names")
    palette = meta.get("palette", voc_colormap(len(classes)))
    if not (isinstance(palette, list) and len(palette) == len(classes) and all(map(_is_colour, palette))):
        raise DataError(f"{path}: palette must list one [r, g, b] (0..255) per class ({len(classes)})")
    ignore = meta.get("ignore_index", IGNORE_INDEX)
    if ignore is not None and not _is_int(ignore, len(classes), 255):
        raise DataError(f"{path}: ignore_index must be null or an integer {len(classes)}..255, got {ignore!r}")
    pattern = meta.get("group_pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise DataError(f"{path}: group_pattern must be a regular expression string, got {pattern!r}")
    return classes, palette, ignore, pattern


def _metadata(root: Path, fmt: str) -> tuple[list[str], list[list[int]], int | None, str | None]:
    """Classes, palette, on-disk ignore value and group pattern (camvid: the prefix before the first `_`)."""
    default_pattern = PREFIX_PATTERN if fmt == "camvid" else None
    if (root / META_NAME).is_file():
        classes, palette, ignore, pattern = _read_meta(root / META_NAME)
        return classes, palette, ignore, pattern or default_pattern
    if fmt == "camvid":
        return list(CAMVID_CLASSES), [list(c) for c in CAMVID_PALETTE], CAMVID_VOID, default_pattern
    if fmt == "voc":
        return list(VOC_CLASSES), voc_colormap(len(VOC_CLASSES)), IGNORE_INDEX, None
    raise DataError(f"{root}: no {META_NAME}; a {fmt} dataset needs one listing classes, palette and "
                    "ignore_index")


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _camvid_splits(root: Path) -> list[str]:
    return [d.name for d in _subdirs(root) if (root / f"{d.name}annot").is_dir()]


def _has_pairs(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _pairs_splits(root: Path) -> list[str]:
    return [d.name for d in _subdirs(root) if _has_pairs(d)]


def detect_format(root: Path) -> str:
    """The layout of the dataset folder `root`: "voc", "camvid" or "pairs"."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if _camvid_splits(root):
        return "camvid"
    if _has_pairs(root) or _pairs_splits(root):
        return "pairs"
    raise DataError(f"{root}: unrecognised dataset layout; expected {LAYOUTS}")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _pair_by_stem(image_dir: Path, mask_dir: Path) -> list[Sample]:
    """Images in `image_dir` with the mask of the same stem in `mask_dir` (PNG preferred), or None."""
    masks: dict[str, Path] = {}
    for p in sorted(_images(mask_dir), key=lambda p: (p.suffix.lower() != ".png", p.name)):
        masks.setdefault(p.stem, p)
    return [Sample(p, masks.get(p.stem)) for p in _images(image_dir)]


def _missing_split(root: Path, split: str, available: list[str]) -> DataError:
    return DataError(f"{root}: no split {split!r}; it has: {', '.join(available) or 'none'}")


def split_names(root: Path, fmt: str) -> list[str]:
    """The splits of the dataset at `root` in layout `fmt` ("all" for a pairs folder without splits)."""
    if fmt == "camvid":
        return _camvid_splits(root)
    if fmt == "pairs":
        return ["all"] if _has_pairs(root) else _pairs_splits(root)
    lists = root / "ImageSets" / "Segmentation"
    return sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []


def _samples(root: Path, fmt: str, split: str) -> list[Sample]:
    if fmt == "camvid":
        if split not in _camvid_splits(root):
            raise _missing_split(root, split, _camvid_splits(root))
        return _pair_by_stem(root / split, root / f"{split}annot")
    if fmt == "pairs":
        if _has_pairs(root):
            return _pair_by_stem(root / "images", root / "masks")
        if split not in _pairs_splits(root):
            raise _missing_split(root, split, _pairs_splits(root))
        return _pair_by_stem(root / split / "images", root / split / "masks")
    lists = root / "ImageSets" / "Segmentation"
    listing = lists / f"{split}.txt"
    if not listing.is_file():
        available = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        raise _missing_split(root, split, available)
    stems = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
    masks = [root / "SegmentationClass" / f"{s}.png" for s in stems]
    return [Sample(root / "JPEGImages" / f"{s}.jpg", m if m.is_file() else None) for s, m in zip(stems, masks)]


def open_dataset(root: str | os.PathLike[str], split: str = "train", format: str | None = None,
                 group_pattern: str | None = None) -> DatasetSpec:
    """Index one split of the dataset at `root` (format None: detect it from the folder structure).

    `group_pattern` overrides the dataset's own (dataset.yaml, or CamVid's prefix before the first `_`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if format is not None and format not in FORMATS:
        raise DataError(f"{root}: unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    fmt = format or detect_format(root)
    classes, palette, ignore, pattern = _metadata(root, fmt)
    pattern = group_pattern or pattern
    where = "--group-pattern" if group_pattern else str(root / META_NAME)
    compiled = compile_pattern(pattern, where) if pattern else None
    samples = _samples(root, fmt, split)
    for sample in samples:
        sample.group = group_of(sample.image, compiled)
    return DatasetSpec(root, fmt, split, samples, classes, palette, ignore, pattern)


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (EXIF orientation ignored, as cameras deliver frames)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        raise DataError(f"{path}: image missing or unreadable") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if bgr is None:
        raise DataError(f"{path}: unreadable image (not a PNG/JPEG/BMP file?)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1", "I", "I;16"):
                raise DataError(f"{path}: {im.mode} mask; expected a single-channel label PNG or a palette PNG")
            return np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask ({_one_line(exc)})") from None


def _values_present(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    return np.unique(labels)


def load_sample(spec: DatasetSpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 HxWx3 image and uint8 HxW labels (on-disk ignore value -> IGNORE_INDEX)."""
    if sample.mask is None:
        raise DataError(f"{sample.image}: missing mask")
    image = read_image(sample.image)
    raw = _read_mask(sample.mask)
    if raw.shape != image.shape[:2]:
        raise DataError(f"{sample.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]}")
    values = _values_present(raw)
    bad = [int(v) for v in values if not 0 <= v < spec.num_classes and v != spec.ignore_index_on_disk]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{sample.mask}: label values {shown} outside classes 0..{spec.num_classes - 1}"
                        f" (ignore value: {spec.ignore_index_on_disk})")
    labels = raw.astype(np.uint8)
    if spec.ignore_index_on_disk not in (None, IGNORE_INDEX):
        labels[raw == spec.ignore_index_on_disk] = IGNORE_INDEX
    return image, labels


def _require_samples(spec: DatasetSpec, samples: list[Sample]) -> None:
    if not samples:
        raise DataError(f"{spec.root}: split {spec.split!r} has no samples")


def _checked(spec: DatasetSpec, skip_bad: bool,
             errors: list[str]) -> Iterator[tuple[Sample, tuple[np.ndarray, np.ndarray]]]:
    """Each good sample with its arrays, each loaded once; bad ones raise, or with `skip_bad` go to `errors`."""
    _require_samples(spec, spec.samples)
    for sample in spec.samples:
        try:
            yield sample, load_sample(spec, sample)
        except DataError as exc:
            if not skip_bad:
                raise
            errors.append(str(exc))


def _require_usable(spec: DatasetSpec, good: list, errors: list[str]) -> None:
    if not good:
        raise DataError(f"{spec.root}: split {spec.split!r} has no usable samples (first error: {errors[0]})")


def validate(spec: DatasetSpec, skip_bad: bool = False) -> tuple[list[Sample], list[str]]:
    """Load every sample; return the good ones and, with `skip_bad`, the messages of the bad ones."""
    errors: list[str] = []
    good = [sample for sample, _ in _checked(spec, skip_bad, errors)]
    _require_usable(spec, good, errors)
    return good, errors


def load_valid(spec: DatasetSpec, skip_bad: bool = False
               ) -> tuple[list[Sample], list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """`validate`, keeping what it loaded: the good samples, their (RGB, labels) arrays, the bad ones' messages."""
    errors: list[str] = []
    checked = list(_checked(spec, skip_bad, errors))
    _require_usable(spec, checked, errors)
    return [sample for sample, _ in checked], [pair for _, pair in checked], errors


def load_all(spec: DatasetSpec, samples: list[Sample] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load `samples` (default: all of the split) into memory; the first bad one raises its DataError."""
    samples = spec.samples if samples is None else samples
    _require_samples(spec, samples)
    return [load_sample(spec, sample) for sample in samples]
