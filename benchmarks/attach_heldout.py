"""Give an existing bundle its held-out estimate (`evaluation.heldout`) without re-exporting its model.

For a bundle whose own run folder is gone (the shipped `camvid` bundle was exported from a run that is not
kept): runs of the same recipe trained with `--holdout-groups` (one, or one per group
fold) are exported alike (the bundle's target, precision, output and number of calibration images, each
calibrated on the frames that run trained on) and scored on their held-out recordings, pooled, as
`edgeseg export --heldout-run RUN [--heldout-run RUN ...]` does. The bundle is then rewritten through a
staging copy and one rename: the model files are the same bytes, the manifest gains `evaluation.heldout`.

Usage: python benchmarks/attach_heldout.py BUNDLE HELDOUT_RUN [HELDOUT_RUN ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from edgeseg.console import quiet
from edgeseg.export import heldout_estimate, heldout_run_configs
from edgeseg.export_options import ExportOptions
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import read_manifest, staging_dir, write_bundle
from edgeseg.summary import heldout_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("heldout_runs", type=Path, nargs="+")
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    default = manifest.artifacts[manifest.default]
    sources = heldout_run_configs(args.heldout_runs, manifest.classes, manifest.model["name"],
                                  (default.input.height, default.input.width))
    opts = ExportOptions(precision=default.precision, output=default.output.kind,
                         num_calib=manifest.calibration.get("num_images", 200), force=True)
    with quiet():
        record = heldout_estimate(args.bundle, manifest, args.bundle, sources, opts, manifest.target, print)
    manifest.evaluation["heldout"] = record
    staging = staging_dir(args.bundle)
    try:
        shutil.copytree(args.bundle, staging, dirs_exist_ok=True)
        write_bundle(staging, args.bundle, manifest, force=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(heldout_line(record))
    print(json.dumps({k: v for k, v in record.items() if k in ("miou", "method", "groups", "num_images")}))


if __name__ == "__main__":
    try:
        main()
    except EdgesegError as exc:
        raise SystemExit(f"error: {exc}") from None
