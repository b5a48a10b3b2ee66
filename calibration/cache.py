"""The calibration cache: observed activation ranges, keyed by model weights and calibration set."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_key(weights: list[np.ndarray], input_size: tuple[int, int], output_kind: str, calib_sha: str) -> str:
    """Changes whenever the model, its input size, its output or the calibration images change."""
    digest = hashlib.sha256(f"{input_size}|{output_kind}|{calib_sha}".encode())
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:24]


class CalibrationCache:
    """A folder of calibrated models (`<key>.calib.tflite`), written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.calib.tflite"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        return path.read_bytes() if path.is_file() else None

    def put(self, key: str, calibrated: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".calib-", dir=self.folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(calibrated)
        os.replace(tmp, self.path(key))
        return self.path(key)
