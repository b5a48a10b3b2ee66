"""Benchmark: the shipped CamVid recipe's leave-one-recording-out estimate, written into the shipped bundle.

CamVid's labelled frames (train and val) come from three recordings: 0001TP, 0006R0 and 0016E5. One run of
the shipped recipe per recording is trained without it and scored once on it at the end. The fold without
0016E5, val's only recording, has nothing left to select on: it trains on train+val (which holds out the same
frames, so that all of 0016E5 is scored) with the last epoch kept and the shipped logit-adjustment strength
fixed. Each run resumes when interrupted; finished runs are skipped. `attach_heldout.py` then exports every
run alike and pools their held-out frames into one confusion matrix: the bundle's `evaluation.heldout`.

Usage: python benchmarks/heldout_camvid.py [--camvid ../shared/datasets/camvid] [--work benchmarks/_work/loro]
       [--bundle edgeseg/pretrained/camvid] [--no-attach]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EDGESEG = [sys.executable, "-m", "edgeseg.cli.app"]
#: The shipped `camvid` bundle's recipe (its manifest's model, size and adjustment strength).
RECIPE = ["--model", "fcn-medium", "--epochs", "110", "--batch-size", "8", "--lr", "2e-3", "--input-size", "360x480"]
SHIPPED_ALPHA = "0.75"
#: Per held-out recording, what its fold adds to the recipe.
FOLDS = {
    "0006R0": [],
    "0001TP": [],
    "0016E5": ["--train-splits", "train,val", "--val-split", "none", "--logit-alpha", SHIPPED_ALPHA],
}


def train_fold(camvid: Path, run: Path, group: str) -> None:
    """Train (or resume, or skip when scored) the run that holds out `group`; its log goes to `run`.log."""
    state = run / "state.json"
    if state.is_file() and "heldout" in json.loads(state.read_text()):
        print(f"{run}: done")
        return
    cmd = [*EDGESEG, "train", "--out", str(run), "--resume"] if (run / "config.json").is_file() else [
        *EDGESEG, "train", "--data", str(camvid), "--out", str(run), *RECIPE, *FOLDS[group], "--holdout-groups", group]
    print("+", " ".join(cmd), f">> {run}.log", flush=True)
    with open(f"{run}.log", "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"training without {group} failed: see {run}.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/loro"))
    parser.add_argument("--bundle", type=Path, default=Path("edgeseg/pretrained/camvid"))
    parser.add_argument("--no-attach", action="store_true", help="Train the folds only.")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [args.work / group for group in FOLDS]
    for run, group in zip(runs, FOLDS):
        train_fold(args.camvid, run, group)
    if not args.no_attach:
        attach = [sys.executable, str(Path(__file__).with_name("attach_heldout.py")), str(args.bundle), *map(str, runs)]
        print("+", " ".join(attach), flush=True)
        subprocess.run(attach, check=True)


if __name__ == "__main__":
    main()
