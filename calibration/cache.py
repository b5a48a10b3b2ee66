"""The calibration cache: observed activation ranges, keyed by model weights and calibration set."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgeseg.rundir import write_atomic


def cache_key(weights: list[np.ndarray], input_size: tuple[int, int], variant: str, calib_sha: str) -> str:
    """Changes whenever the model, its input size, its `variant` (output kind and whatever else shapes the
    converted graph) or the calibration images change."""
    digest = hashlib.sha256(f"{input_size}|{variant}|{calib_sha}".encode())
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:24]


#: What each kind of entry holds: a TFLite model with ranges recorded, or Q/DQ thresholds as JSON.
KINDS = {"tflite": "calib.tflite", "qdq": "qdq-ranges.json"}


class CalibrationCache:
    """A folder of calibration results (`<key>.<kind suffix>`), written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str, kind: str = "tflite") -> Path:
        return self.folder / f"{key}.{KINDS[kind]}"

    def get(self, key: str, kind: str = "tflite") -> bytes | None:
        path = self.path(key, kind)
        return path.read_bytes() if path.is_file() else None

    def put(self, key: str, kind: str, data: bytes) -> Path:
        return write_atomic(self.path(key, kind), data)
