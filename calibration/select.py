"""Choosing calibration images: deterministic, and stratified so that rare classes appear."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.manifest import IGNORE_INDEX, portable_path


@dataclass
class CalibrationSet:
    """The chosen images (paths relative to the data root `root`, in order) and a hash of their content."""

    root: str
    files: list[str]
    sha256: str
    images_per_class: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict:
        """What the bundle keeps: enough to tell whether a later export used the same images, and to find
        them again (`data`: the root as `portable_path` names it; `--calib-data` points elsewhere)."""
        return {"data": portable_path(self.root), "num_images": len(self.files), "files": self.files,
                "sha256": self.sha256, "images_per_class": self.images_per_class}


def class_histograms(masks: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Pixels of each class in each mask (ignore label left out): images x classes."""
    hist = np.zeros((len(masks), num_classes), np.int64)
    for i, mask in enumerate(masks):
        valid = mask[mask != IGNORE_INDEX].astype(np.int64)
        hist[i] = np.bincount(valid, minlength=num_classes)[:num_classes]
    return hist


def stratified_order(hist: np.ndarray, names: Sequence[str]) -> list[int]:
    """Image indices, rare classes first: rounds over classes from rarest to commonest, each round
    taking for each class the unpicked image with the most pixels of it (ties broken by name);
    images with no labelled class come last, by name."""
    present = hist > 0
    class_order = sorted(range(hist.shape[1]), key=lambda c: (present[:, c].sum() == 0, present[:, c].sum(), c))
    queues = {
        c: sorted(np.flatnonzero(present[:, c]).tolist(), key=lambda i: (-hist[i, c], names[i]))
        for c in class_order
    }
    picked: list[int] = []
    seen: set[int] = set()
    while any(queues.values()):
        for c in class_order:
            queue = queues[c]
            while queue and queue[0] in seen:
                queue.pop(0)
            if queue:
                seen.add(queue[0])
                picked.append(queue.pop(0))
    rest = sorted((i for i in range(len(names)) if i not in seen), key=lambda i: names[i])
    return picked + rest


def content_hash(root: Path, files: Sequence[str]) -> str:
    """sha256 over the chosen files' names and bytes, in order."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode())
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()
