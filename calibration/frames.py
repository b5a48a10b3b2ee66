"""Calibration frames: chosen images through exactly the runtime's preprocessing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.readers import DataError, DatasetSpec, load_valid, read_image
from ..runtime.errors import EdgesegError
from ..runtime.preprocess import resize_rgb
from .select import CalibrationSet, class_histograms, content_hash, stratified_order

MIN_CALIB_IMAGES = 8
#: Largest relative difference between image and model aspect ratios before resizing distorts shapes.
MAX_ASPECT_MISMATCH = 0.15


def choose_calibration(
    spec: DatasetSpec, num: int, classes: list[str], input_size: tuple[int, int]
) -> tuple[CalibrationSet, list[np.ndarray]]:
    """Up to `num` images of `spec` (all if fewer), rare classes first, and their model-size frames."""
    if spec.classes != classes:
        raise EdgesegError(
            f"{spec.root}: calibration data classes {spec.classes} do not match the model's {classes}")
    samples, pairs, _ = load_valid(spec, skip_bad=False)
    if len(samples) < MIN_CALIB_IMAGES or num < MIN_CALIB_IMAGES:
        raise EdgesegError(f"{spec.root}: too few calibration images ({min(len(samples), num)}; "
                           f"at least {MIN_CALIB_IMAGES} needed)")
    names = [str(s.image.relative_to(spec.root)) for s in samples]
    hist = class_histograms([m for _, m in pairs], len(classes))
    chosen = stratified_order(hist, names)[:num]
    height, width = input_size
    for i in chosen:
        image = pairs[i][0]
        aspect = (image.shape[1] / image.shape[0]) / (width / height)
        if abs(aspect - 1.0) > MAX_ASPECT_MISMATCH:
            raise EdgesegError(f"{samples[i].image}: size {image.shape[1]}x{image.shape[0]} does not match "
                               f"the model input {width}x{height} (aspect ratio differs)")
    files = [names[i] for i in chosen]
    per_class = {c: int((hist[chosen, k] > 0).sum()) for k, c in enumerate(classes)}
    calib = CalibrationSet(str(spec.root), files, content_hash(Path(spec.root), files), per_class)
    return calib, [resize_rgb(pairs[i][0], height, width) for i in chosen]


def holds_record(root: Path, record: dict) -> bool:
    """Whether `root` has every file of a bundle's calibration record."""
    return bool(record.get("files")) and all((Path(root) / name).is_file() for name in record["files"])


def frames_from_record(record: dict, input_size: tuple[int, int], root: Path | None = None) -> list[np.ndarray]:
    """The frames of a bundle's calibration record (`data` + `files`), resized as at export; the files are
    looked up under `root` when given, and must hash to the recorded `sha256`."""
    root = Path(record.get("data", "") if root is None else root)
    files = record.get("files", [])
    if not files:
        raise EdgesegError("the bundle records no calibration images (give --calib-data DIR)")
    frames = []
    for name in files:
        path = root / name
        try:
            frames.append(resize_rgb(read_image(path), *input_size))
        except DataError:
            raise EdgesegError(f"{path}: calibration image not found or unreadable (give --calib-data DIR)") from None
    if record.get("sha256") and content_hash(root, files) != record["sha256"]:
        raise EdgesegError(f"{root}: the recorded calibration files differ from the images the bundle was "
                           f"calibrated on (sha256 mismatch)")
    return frames
