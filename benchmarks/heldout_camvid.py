"""Benchmark: the shipped CamVid recipe's held-out estimate by group folds, written into the shipped bundle.

CamVid's labelled frames (train and val) come from three recordings: 0001TP, 0006R0 and 0016E5. Two fold
schemes, each run of the shipped recipe trained without its fold's groups and scored once on them at the end:

- `recordings` (leave-one-recording-out): three runs, each without one whole recording. The fold without
  0016E5, val's only recording, has nothing left to select on: it trains on train+val with the last epoch
  kept and the shipped logit-adjustment strength fixed.
- `stretches` (group 2-fold over stretches of driving): a group is a stretch of 1000 source-video frames of
  one recording (`--group-pattern`, about 33 s; 15 stretches), the `late` run holds out the later stretches
  of every recording and the `early` run the earlier ones (one boundary per recording, 231 and 237 frames).
  Both train on train+val without their fold, keep the last epoch and fix the shipped strength: val's frames
  lie in the late stretches.

Each run resumes when interrupted; finished runs are skipped. `attach_heldout.py` then exports every run of
the scheme alike and pools their held-out frames into one confusion matrix: the bundle's `evaluation.heldout`.

Usage: python benchmarks/heldout_camvid.py [--scheme stretches|recordings] [--camvid ../shared/datasets/camvid]
       [--work benchmarks/_work/SCHEME] [--bundle edgeseg/pretrained/camvid] [--jobs 1] [--no-attach]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EDGESEG = [sys.executable, "-m", "edgeseg.cli.app"]
#: The shipped `camvid` bundle's recipe (its manifest's model, size and adjustment strength).
RECIPE = ["--model", "fcn-medium", "--epochs", "110", "--batch-size", "8", "--lr", "2e-3", "--input-size", "360x480"]
SHIPPED_ALPHA = "0.75"
#: Training on train+val without val selection: the last epoch, the shipped strength.
BLIND = ["--train-splits", "train,val", "--val-split", "none", "--logit-alpha", SHIPPED_ALPHA]
#: A group per 1000 source-video frames of a recording: `0016E5_07959` -> `0016E5_07`, `0006R0_f01230` -> `0006R0_f01`.
STRETCH_PATTERN = r"^(.+?_f?\d+)\d{3}$"
#: What every stretch fold adds to the recipe.
STRETCH_FOLD = [*BLIND, "--group-pattern", STRETCH_PATTERN]
#: Per scheme, per fold (run name): the groups it holds out and what it adds to the recipe.
SCHEMES: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "recordings": {
        "0006R0": (["0006R0"], []),
        "0001TP": (["0001TP"], []),
        "0016E5": (["0016E5"], BLIND),
    },
    "stretches": {
        "late": (["0001TP_008", "0006R0_f02", "0006R0_f03", "0016E5_07", "0016E5_08"], STRETCH_FOLD),
        "early": (["0001TP_006", "0001TP_007", "0006R0_f00", "0006R0_f01", "0016E5_00", "0016E5_01", "0016E5_02",
                   "0016E5_04", "0016E5_05", "0016E5_06"], STRETCH_FOLD),
    },
}


def train_fold(camvid: Path, run: Path, groups: list[str], extra: list[str]) -> None:
    """Train (or resume, or skip when scored) the run that holds out `groups`; its log goes to `run`.log."""
    state = run / "state.json"
    if state.is_file() and "heldout" in json.loads(state.read_text()):
        print(f"{run}: done")
        return
    held = ["--holdout-groups", ",".join(groups)]
    cmd = [*EDGESEG, "train", "--out", str(run), "--resume"] if (run / "config.json").is_file() else [
        *EDGESEG, "train", "--data", str(camvid), "--out", str(run), *RECIPE, *extra, *held]
    print("+", " ".join(cmd), f">> {run}.log", flush=True)
    with open(f"{run}.log", "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"training without {','.join(groups)} failed: see {run}.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=sorted(SCHEMES), default="stretches",
                        help="stretches: the shipped bundle's estimate; recordings: leave-one-recording-out.")
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--work", type=Path, help="Where the runs go (default: benchmarks/_work/loro for "
                        "recordings, benchmarks/_work/stretches for stretches).")
    parser.add_argument("--bundle", type=Path, default=Path("edgeseg/pretrained/camvid"))
    parser.add_argument("--jobs", type=int, default=1, help="Folds trained at once (2 uses a 2-core machine best).")
    parser.add_argument("--no-attach", action="store_true", help="Train the folds only.")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    work = args.work or Path("benchmarks/_work") / ("loro" if args.scheme == "recordings" else args.scheme)
    work.mkdir(parents=True, exist_ok=True)
    folds = SCHEMES[args.scheme]
    runs = [work / name for name in folds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda run, fold: train_fold(args.camvid, run, *fold), runs, folds.values()))
    if not args.no_attach:
        attach = [sys.executable, str(Path(__file__).with_name("attach_heldout.py")), str(args.bundle), *map(str, runs)]
        print("+", " ".join(attach), flush=True)
        subprocess.run(attach, check=True)


if __name__ == "__main__":
    main()
