"""A deterministic synthetic segmentation dataset (shapes on textures), written in the CamVid layout.

Each object class has its own hue band, with saturation, brightness, texture and noise varying and
backgrounds greyish: colour tells most of the class and shape the rest (a disc and a ring are told
apart by the hole, a box and a bar by their proportions), so a compact model learns the task within
a few minutes on a CPU (the default `edgeseg build` is a smoke test that should end well above 70 %
mIoU). Images are named `<recording>_<frame>.png` like CamVid's `<sequence>_<frame>.png`: each
recording has its own background palette.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import IGNORE_INDEX, staging_dir

DEFAULT_SYNTH_CLASSES = ["background", "disc", "box", "triangle", "ring", "bar"]
SYNTH_PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]]


def _texture(rng: np.random.Generator, h: int, w: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """An h x w x 3 float image blending colours c1 and c2 with a noise, gradient or stripe pattern."""
    kind = rng.integers(3)
    if kind == 0:  # smooth noise
        cell = int(rng.integers(4, 17))
        low = rng.random((max(h // cell, 2), max(w // cell, 2)), dtype=np.float32)
        t = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 1:  # gradient
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:  # stripes
            t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(4, 24))
    t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


#: Half-width of each class's hue band, in degrees; band centres are 360 / 5 = 72 degrees apart.
HUE_SPREAD = 24.0
#: Recordings ("sequences") the images are spread over, in order.
NUM_RECORDINGS = 4
#: Images in the default dataset (train + val).
DEFAULT_NUM = 128


def _class_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    """An RGB colour from the class's hue band (overlapping its neighbours') with random saturation/value."""
    centre = 360.0 * (cls - 1) / (len(DEFAULT_SYNTH_CLASSES) - 1)
    hue = (centre + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 360.0
    hsv = np.array([[[hue / 2.0, rng.uniform(140, 255), rng.uniform(120, 255)]]], np.float32).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _colour(rng: np.random.Generator, cls: int, avoid: np.ndarray) -> np.ndarray:
    """A colour for class `cls`, resampled a few times to stand out from `avoid`."""
    colour = _class_colour(rng, cls)
    for _ in range(8):
        if np.abs(colour - avoid).sum() >= 120:
            break
        colour = _class_colour(rng, cls)
    return colour


def _polygon(rng: np.random.Generator, name: str, centre: tuple[float, float], r: float,
             angle: float) -> np.ndarray:
    """Vertices of a rotated triangle, box or bar of size about `r` around `centre`."""
    if name == "triangle":
        theta = np.deg2rad(angle + np.array([0, 120, 240]) + rng.uniform(-15, 15, 3))
        return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)
    long, short = ((0.7, 1.3), (0.7, 1.3)) if name == "box" else ((1.6, 2.4), (0.3, 0.45))
    return np.asarray(cv2.boxPoints((centre, (2 * r * rng.uniform(*long), 2 * r * rng.uniform(*short)), angle)))


def _draw_shape(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """A boolean h x w mask of one randomly placed, scaled and rotated shape of class `cls`."""
    layer = np.zeros((h, w), np.uint8)
    r = min(h, w) * rng.uniform(0.2, 0.35)
    centre = (rng.uniform(0, w), rng.uniform(0, h))
    angle = rng.uniform(0, 180)
    name = DEFAULT_SYNTH_CLASSES[cls]
    if name in ("disc", "ring"):
        thickness = -1 if name == "disc" else max(2, int(r * rng.uniform(0.35, 0.55)))
        cv2.circle(layer, (int(centre[0]), int(centre[1])), max(int(r), 2), 1, thickness)
    else:
        cv2.fillPoly(layer, [np.round(_polygon(rng, name, centre, r, angle)).astype(np.int32)], 1)
    return layer.astype(bool)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A greyish RGB colour (a little tint, any brightness)."""
    return np.clip(rng.uniform(30, 220) + rng.uniform(-25, 25, 3), 0, 255).astype(np.float32)


def _render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its uint8 label map; later objects occlude earlier ones."""
    bg = _background(rng)
    image = _texture(rng, h, w, bg, _background(rng))
    labels = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(DEFAULT_SYNTH_CLASSES)))
        region = _draw_shape(rng, cls, h, w)
        base = _colour(rng, cls, bg)
        shade = np.clip(base + rng.uniform(-30, 30, 3), 0, 255) if rng.random() < 0.5 else base
        image[region] = _texture(rng, h, w, base, shade)[region]
        labels[region] = cls
    image += rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`, replacing whatever `out` was."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def generate_synthetic(out: Path, num: int = DEFAULT_NUM, size: tuple[int, int] = (96, 128), seed: int = 0,
                       val_fraction: float = 0.25, force: bool = False) -> Path:
    """Write `num` synthetic images of `size` (height, width) to `out` in the CamVid layout.

    Layout: `train/`, `trainannot/`, `val/`, `valannot/` (same PNG names, `rec<R>_<index>.png`, the
    images split in order over `NUM_RECORDINGS` recordings, so validation is the last ones) and `dataset.yaml`.
    The same arguments give byte-identical files. The dataset is generated beside `out` and
    renamed into place; a non-empty existing `out` needs `force`.
    """
    out = Path(out)
    if num < 1 or not 0 <= val_fraction < 1 or min(size) < 16:
        raise EdgesegError(f"{out}: need num >= 1, 0 <= val_fraction < 1 and size >= 16x16 "
                           f"(got num={num}, val_fraction={val_fraction}, size={size})")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise EdgesegError(f"{out}: already exists and is not empty (use --force to overwrite)")
    num_val = min(num - 1, max(1, round(num * val_fraction))) if val_fraction > 0 else 0
    digits = max(4, len(str(num - 1)))
    staging = staging_dir(out)
    try:
        for split in ("train", "trainannot", "val", "valannot"):
            (staging / split).mkdir()
        for i in range(num):
            image, labels = _render(np.random.default_rng([seed, i]), *size)
            split = "val" if i >= num - num_val else "train"
            name = f"rec{i * NUM_RECORDINGS // num}_{i:0{digits}d}.png"
            cv2.imwrite(str(staging / split / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(staging / f"{split}annot" / name), labels)
        meta = {"classes": DEFAULT_SYNTH_CLASSES, "palette": SYNTH_PALETTE, "ignore_index": IGNORE_INDEX}
        (staging / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None))
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
