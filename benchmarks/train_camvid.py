"""Benchmark: train a compact FCN on CamVid (train; val for selection) and export INT8 with evaluation.

Usage: python benchmarks/train_camvid.py [--camvid ../shared/datasets/camvid] [--model fcn-medium]
       [--epochs 110] [--input-size 360x480] [--work benchmarks/_work/camvid]
Prints and writes `<work>/results.json`: val mIoU (Keras float, TFLite fp32, TFLite INT8), params, MACs,
training wall time and the machine.
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


def run(cmd: list[str]) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--model", default="fcn-medium")
    parser.add_argument("--epochs", type=int, default=110)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--input-size", default="360x480")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/camvid"))
    args = parser.parse_args()
    run_dir, bundle = args.work / "run", args.work / "bundle"
    edgeseg = [sys.executable, "-m", "edgeseg.cli.app"]
    train_s = run([*edgeseg, "train", "--data", str(args.camvid), "--out", str(run_dir), "--model", args.model,
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                   "--input-size", args.input_size] + (["--resume"] if (run_dir / "state.json").exists() else []))
    run([*edgeseg, "eval", str(run_dir), "--data", str(args.camvid), "--json", str(args.work / "keras_val.json")])
    run([*edgeseg, "export", str(run_dir), "--out", str(bundle), "--precision", "int8", "--eval-data",
         str(args.camvid), "--force"])
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    keras_val = json.loads((args.work / "keras_val.json").read_text())
    comparison = manifest["evaluation"]["comparison"]
    results = {
        "model": args.model, "epochs": args.epochs, "input_size": args.input_size,
        "params": manifest["model"]["params"], "macs": manifest["model"]["macs"],
        "train_seconds": round(train_s, 1),
        "val_miou": {"keras_fp32": keras_val["miou"], "tflite_fp32": comparison["float"]["miou"],
                     "tflite_int8": comparison["int8"]["miou"]},
        "int8_drop_points": comparison["drop_points"],
        "per_class_iou": comparison["per_class"],
        "files": {name: (bundle / a["file"]).stat().st_size for name, a in manifest["artifacts"].items()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
