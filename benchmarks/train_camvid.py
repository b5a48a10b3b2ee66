"""Benchmark: the shipped CamVid recipe, with its held-out estimate, end to end.

Two trainings of the same recipe run side by side (each resumes if interrupted):
- `heldout`: train+val without recording 0006R0, which is scored once at the end (never trained on, never
  used to pick anything): the estimate of accuracy on a street the model has not seen;
- `final`: train+val, every recording: the shipped model.
With no validation split left, both keep their last epoch and fold a fixed logit-adjustment strength.
Then `final` is exported to INT8 TFLite with val figures (recording 0016E5, also in train: memory, not
accuracy) and the held-out estimate (`heldout` exported alike, scored on 0006R0).

Usage: python benchmarks/train_camvid.py [--camvid ../shared/datasets/camvid] [--model fcn-context]
       [--epochs 36] [--holdout 0006R0] [--work benchmarks/_work/ctx]
Prints and writes `<work>/results.json`: params, MACs, sizes, val and held-out mIoU (float, INT8), per-class
IoU, training wall time and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

EDGESEG = [sys.executable, "-m", "edgeseg.cli.app"]


def run(cmd: list[str]) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def train_side_by_side(commands: dict[str, list[str]], work: Path) -> dict[str, float]:
    """Run the trainings as parallel processes (logs in `work/<name>.log`); wall seconds of each."""
    started = time.perf_counter()
    procs = {}
    for name, cmd in commands.items():
        print("+", " ".join(cmd), f"> {work / name}.log", flush=True)
        procs[name] = subprocess.Popen(cmd, stdout=(work / f"{name}.log").open("a"), stderr=subprocess.STDOUT)
    seconds = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"training {name} failed: see {work / name}.log")
        seconds[name] = round(time.perf_counter() - started, 1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--model", default="fcn-context")
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--holdout", default="0006R0", help="Recording(s) held out for the estimate.")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/ctx"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    recipe = ["--data", str(args.camvid), "--model", args.model, "--epochs", str(args.epochs), "--batch-size", "8",
              "--lr", "2e-3", "--input-size", "360x480", "--crop-size", "288x384", "--train-splits", "train,val",
              "--val-split", "none", "--augment", "strong", "--logit-alpha", "0.75"]
    runs = {"heldout": args.work / "heldout", "final": args.work / "final"}
    commands = {name: [*EDGESEG, "train", *recipe, "--out", str(path)]
                + (["--holdout-groups", args.holdout] if name == "heldout" else [])
                + (["--resume"] if (path / "state.json").exists() else [])
                for name, path in runs.items()}
    train_s = train_side_by_side(commands, args.work)
    bundle = args.work / "bundle"
    export_s = run([*EDGESEG, "export", str(runs["final"]), "--out", str(bundle), "--precision", "int8",
                    "--eval-data", str(args.camvid), "--heldout-run", str(runs["heldout"]), "--force"])
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    evaluation = manifest["evaluation"]
    comparison, heldout = evaluation["comparison"], evaluation["heldout"]
    results = {
        "model": args.model, "epochs": args.epochs, "recipe": " ".join(recipe), "holdout": args.holdout,
        "params": manifest["model"]["params"], "macs": manifest["model"]["macs"],
        "train_wall_seconds": train_s, "export_seconds": round(export_s, 1),
        "val_miou": {"float": comparison["float"]["miou"], "int8": comparison["int8"]["miou"]},
        "heldout_miou": {"float": heldout["float"]["miou"], "int8": heldout["int8"]["miou"]},
        "int8_drop_points": comparison["drop_points"],
        "heldout_per_class_iou": {"float": heldout["float"]["per_class_iou"],
                                  "int8": heldout["int8"]["per_class_iou"]},
        "files": {name: (bundle / a["file"]).stat().st_size for name, a in manifest["artifacts"].items()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
