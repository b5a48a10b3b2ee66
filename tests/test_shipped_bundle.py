"""The CamVid bundle shipped in the package is addressable by name and runs with no training."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from edgeseg.runtime.backends.base import load_runner
from edgeseg.runtime.manifest import read_manifest, resolve_bundle


def test_camvid_resolves_by_name_and_verifies() -> None:
    bundle = resolve_bundle("camvid")
    manifest = read_manifest(bundle)  # checksums of every file
    assert manifest.num_classes == 11 and manifest.classes[0] == "Sky"
    assert {"int8", "fp32"} <= set(manifest.artifacts) and manifest.default == "int8"
    assert sum(f.stat().st_size for f in bundle.iterdir()) <= 5 * 1024 * 1024  # a few MB at most
    assert (bundle / manifest.artifacts["int8"].file).stat().st_size <= 1024 * 1024
    drop = manifest.evaluation["comparison"]["drop_points"]
    assert abs(drop) < 1.0


def test_camvid_segments_a_frame_by_name() -> None:
    frame = np.zeros((360, 480, 3), np.uint8)
    frame[:150] = (128, 128, 128)  # grey sky above
    frame[250:] = (128, 64, 128)  # road colour below
    with load_runner("camvid", threads=2) as int8, load_runner("camvid", "fp32", threads=2) as fp32:
        a, b = int8.predict(frame), fp32.predict(frame)
    assert a.shape == (360, 480) and a.dtype == np.uint8 and a.max() < 11
    # a flat synthetic frame is far from CamVid, where INT8 and fp32 mIoU differ by 0.42 points: 0.8 here
    assert (a == b).mean() > 0.8


def test_info_takes_the_shipped_name() -> None:
    out = subprocess.run([sys.executable, "-m", "edgeseg.cli.app", "info", "camvid"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fcn-medium" in out.stdout and "Bicyclist" in out.stdout and "int8 (default)" in out.stdout
