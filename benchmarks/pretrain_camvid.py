"""Benchmark: does autoencoder pretraining on unlabeled frames help when only 10% of CamVid is labeled?

Two fcn-small runs train on the same seeded 10% of CamVid train (37 of 367 images) with the same epochs,
seed, schedule and input size, and are scored by val mIoU (101 images; best epoch and last epoch):
`scratch` starts from random weights, `pretrained` from an encoder pretrained as a convolutional
autoencoder (`edgeseg pretrain`) on all 468 train + val images, their labels unused.

Usage: python benchmarks/pretrain_camvid.py [--camvid ../shared/datasets/camvid] [--work benchmarks/_work/pretrain]
       [--pretrain-epochs 30] [--epochs 80] [--input-size 360x480] [--labels-fraction 0.1] ...
Prints a markdown table and writes `<work>/results.json` (with the path of the reconstruction grid).
Runs that already finished in `<work>` are reused and interrupted ones resumed. The val images are among
the unlabeled pretraining frames (as footage from the deployment site would be), never their labels.

Defaults, chosen to fit about 40 minutes on 2 CPU cores (measured with the CPU shared: pretraining about
27 s per epoch over 468 frames, fine-tuning about 6.5 s per epoch): pretraining and fine-tuning both at
360x480, CamVid's own size, so that the encoder sees objects at the scale it is fine-tuned on; batch 8;
pretraining for 30 epochs (1770 steps, about 14 minutes) with 50% of the 16x16 blocks masked and an L2
loss; fine-tuning for 80 epochs (5 steps each on 37 images plus a val pass, about 9 minutes per run) with
the encoder trainable from the start (`--freeze-encoder-epochs` to change that).
"""
from __future__ import annotations

import argparse
import csv
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


def link_unlabeled(camvid: Path, out: Path) -> None:
    """Symlink the train and val images (not their annotations) into `out/<split>/`."""
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for image in sorted((camvid / split).glob("*.png")):
            link = out / split / image.name
            if not link.exists():
                link.symlink_to(image.resolve())


def scores(run_dir: Path) -> dict:
    state = json.loads((run_dir / "state.json").read_text())
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    return {"best_val_miou": round(state["best_miou"], 4), "best_epoch": state["best_epoch"] + 1,
            "last_val_miou": round(float(history[-1]["val_miou"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/pretrain"))
    parser.add_argument("--model", default="fcn-small")
    parser.add_argument("--labels-fraction", type=float, default=0.1)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--pretrain-size", default="360x480")
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--input-size", default="360x480")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--freeze-encoder-epochs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    edgeseg = [sys.executable, "-m", "edgeseg.cli.app"]
    work, pretrain_dir = args.work, args.work / "pretrain"

    link_unlabeled(args.camvid, work / "unlabeled")
    if not (pretrain_dir / "encoder.json").exists():
        run([*edgeseg, "pretrain", "--images", str(work / "unlabeled"), "--out", str(pretrain_dir),
             "--model", args.model, "--epochs", str(args.pretrain_epochs), "--input-size", args.pretrain_size,
             "--mask-ratio", str(args.mask_ratio), "--batch-size", str(args.batch_size), "--seed", str(args.seed)])
    encoder = json.loads((pretrain_dir / "encoder.json").read_text())

    results = {}
    for name, extra in (("scratch", []), ("pretrained", ["--init-from", str(pretrain_dir), "--freeze-encoder-epochs",
                                                         str(args.freeze_encoder_epochs)])):
        run_dir = work / name
        seconds = run([*edgeseg, "train", "--data", str(args.camvid), "--out", str(run_dir), "--model", args.model,
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                       "--input-size", args.input_size, "--labels-fraction", str(args.labels_fraction),
                       "--seed", str(args.seed), *extra] + (["--resume"] if (run_dir / "state.json").exists() else []))
        results[name] = {**scores(run_dir), "seconds_this_call": round(seconds, 1)}

    summary = {
        "model": args.model, "labels_fraction": args.labels_fraction, "epochs": args.epochs,
        "input_size": args.input_size, "seed": args.seed, "runs": results,
        "gain_points": round((results["pretrained"]["best_val_miou"] - results["scratch"]["best_val_miou"]) * 100, 2),
        "pretrain": {"frames": encoder["frames"], "epochs": encoder["epochs"], "input_size": encoder["input_size"],
                     "mask_ratio": encoder["mask_ratio"], "seconds": encoder["seconds"],
                     "reconstruction_error": encoder["reconstruction_error"],
                     "grid": str((pretrain_dir / "reconstructions.png").resolve())},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{args.model}, {args.labels_fraction:.0%} of CamVid train labels, {args.epochs} epochs at "
          f"{args.input_size}, seed {args.seed}\n")
    print("| init | best val mIoU | best epoch | last val mIoU |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['best_val_miou'] * 100:.2f} | {r['best_epoch']} | {r['last_val_miou'] * 100:.2f} |")
    print(f"\nreconstructions: {summary['pretrain']['grid']}\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
