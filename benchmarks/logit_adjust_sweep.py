"""Benchmark: val mIoU of a class-weighted run's best epoch at every logit-adjustment strength.

Usage: python benchmarks/logit_adjust_sweep.py RUN_DIR
Prints one table row per alpha (exact offsets on the logits, before folding into the classifier) with
per-class IoU, from the best epoch's checkpoint (the model training adjusts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.keras_runner import keras_runner
from edgeseg.logit_adjust import scores_by_alpha
from edgeseg.rundir import CHECKPOINTS, RunConfig, load_keras_model, read_state
from edgeseg.train import TrainingData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    cfg = RunConfig.load(args.run)
    data = TrainingData.load(cfg, skip_bad=True)  # the samples training kept
    path = args.run / CHECKPOINTS / f"epoch_{read_state(args.run)['best_epoch']:03d}.keras"
    with keras_runner(load_keras_model(path), cfg, path) as runner:
        scores = scores_by_alpha(runner.logits, data.val, data.weights, cfg.classes)
    print("| alpha | val mIoU % | " + " | ".join(cfg.classes) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in cfg.classes) + " |")
    for alpha, s in scores.items():
        cells = " | ".join("-" if v is None else f"{v * 100:.1f}" for v in s.per_class_iou.values())
        print(f"| {alpha} | {s.miou * 100:.2f} | {cells} |")


if __name__ == "__main__":
    main()
