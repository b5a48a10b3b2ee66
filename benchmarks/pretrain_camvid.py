"""Benchmark: does autoencoder pretraining pay at 10% of CamVid's labels, on a recording it never saw?

For each seed (it picks the labeled subset, the initialisation and the pretraining's shuffling and masks):
the model's encoder is pretrained as a convolutional autoencoder (`edgeseg pretrain`, one run per recipe)
on the unlabeled images of CamVid train + val outside the held-out recording; then fine-tunings on the
same seeded fraction of the labeled images outside that recording, with a fixed schedule that keeps the
last epoch (nothing is selected on data): `scratch` from random weights and one per recipe from its
pretrained encoder. Every model is scored once on the held-out recording (default 0006R0: 101 frames of
CamVid train), which took no part in pretraining, fine-tuning or model selection. The gain is pretrained
minus scratch per seed; the table gives each seed and the mean ± sd (sample sd) over the seeds.

Usage: python benchmarks/pretrain_camvid.py [--camvid ../shared/datasets/camvid] [--work benchmarks/_work/pretrain]
       [--seeds 0,1,2] [--recipes inpaint,baseline] [--holdout-groups 0006R0] [--input-size 180x240] ...
Prints a markdown table and writes `<work>/results.json`. Finished runs in `<work>` are reused and
interrupted fine-tunings and pretrainings resumed, so the benchmark can be stopped and re-run
at any time; a work folder refuses settings other than those it was started with. Runs go recipe by
recipe, seed by seed, so the first recipe's seeds finish first. Calls with different `--seeds` may run in
parallel in one work folder; a last call with every seed (all reused) then writes the whole table.

Defaults, sized for 2 shared CPU cores: pretraining and fine-tuning at 180x240 (half of CamVid's 360x480
each way, a quarter of the pixels and of the time), batch 8, pretraining for 30 epochs over the 367
unlabeled frames, fine-tuning for 80 epochs (5 steps each on 37 labeled images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgeseg.data.groups import parse_groups
from edgeseg.data.readers import open_dataset

#: Pretraining recipes (extra `edgeseg pretrain` options). `baseline`: the recipe first recorded in
#: RESULTS.md, half of the 16x16 blocks masked and an L2 loss on every pixel. `inpaint`: 60% masked (the
#: ratio masked convnet pretraining found best in ConvNeXt V2), the loss on the masked blocks only (nothing
#: to gain by copying visible pixels through) and whitened colour targets (colour errors weigh like
#: brightness errors; the baseline's reconstructions come out nearly grey).
RECIPES = {
    "baseline": ["--mask-ratio", "0.5"],
    "inpaint": ["--mask-ratio", "0.6", "--masked-loss", "--whiten-colour"],
}
SCRATCH = "scratch"
SPLITS = ("train", "val")


def run(cmd: list[str]) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def link_unlabeled(camvid: Path, holdout: list[str], out: Path) -> int:
    """Symlink the train and val images (not their annotations) outside the held-out groups into `out/<split>/`;
    returns how many there are."""
    total = 0
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for sample in open_dataset(camvid, split).by_groups(holdout, inside=False).samples:
            link = out / split / sample.image.name
            if not link.exists():
                link.symlink_to(sample.image.resolve())
            total += 1
    return total


def check_settings(work: Path, settings: dict) -> None:
    """Record the settings of a new work folder; refuse to mix runs made with other settings."""
    path = work / "settings.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != settings:
            changed = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
            sys.exit(f"{path}: this work folder holds runs made with other settings ({', '.join(changed)}); "
                     f"use another --work")
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


class Bench:
    """The runs of one work folder and the seconds each took (summed over the calls that ran it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.edgeseg = [sys.executable, "-m", "edgeseg.cli.app"]
        self.seconds_path = args.work / "seconds.json"
        self.seconds = json.loads(self.seconds_path.read_text()) if self.seconds_path.is_file() else {}

    def _timed(self, key: str, cmd: list[str]) -> None:
        seconds = run(cmd)
        if self.seconds_path.is_file():  # another call (other seeds, in parallel) may have added runs
            self.seconds = json.loads(self.seconds_path.read_text())
        self.seconds[key] = round(self.seconds.get(key, 0.0) + seconds, 1)
        write_json(self.seconds_path, self.seconds)

    def pretrain(self, seed: int, recipe: str) -> Path:
        """The seed's pretrain run of `recipe` (run now unless it finished before)."""
        a, out = self.args, self.args.work / f"seed{seed}" / f"pretrain-{recipe}"
        if not (out / "encoder.json").is_file():  # an interrupted pretraining resumes (an empty one starts)
            self._timed(str(out.relative_to(a.work)), [
                *self.edgeseg, "pretrain", "--images", str(a.work / "unlabeled"), "--out", str(out),
                "--model", a.model, "--epochs", str(a.pretrain_epochs), "--input-size", a.input_size,
                "--batch-size", str(a.batch_size), "--seed", str(seed), *RECIPES[recipe], "--resume"])
        return out

    def fine_tune(self, seed: int, name: str, init_from: Path | None) -> dict:
        """Fine-tune (or resume, or reuse) the seed's run `name`; its held-out score."""
        a, out = self.args, self.args.work / f"seed{seed}" / name
        state_path = out / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if "heldout" not in state:  # the held-out score is the last thing a run writes
            init = ["--init-from", str(init_from), "--freeze-encoder-epochs", str(a.freeze_encoder_epochs)]
            self._timed(str(out.relative_to(a.work)), [
                *self.edgeseg, "train", "--data", str(a.camvid), "--out", str(out), "--model", a.model,
                "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
                "--input-size", a.input_size, "--labels-fraction", str(a.labels_fraction), "--seed", str(seed),
                "--train-splits", ",".join(SPLITS), "--val-split", "none", "--holdout-groups", a.holdout_groups,
                *(init if init_from else []), *(["--resume"] if state_path.is_file() else [])])
            state = json.loads(state_path.read_text())
        return {"heldout_miou": round(state["heldout"]["miou"], 4), "heldout_images": state["heldout"]["num_images"],
                "seconds": self.seconds.get(f"seed{seed}/{name}")}


def mean_sd(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2), "sd": round(statistics.stdev(values), 2) if len(values) > 1
            else None, "n": len(values)}


def summarise(scores: dict[int, dict[str, float]], recipes: list[str]) -> dict:
    """Mean ± sd (points of mIoU) of scratch, each recipe and its gain, over the seeds where both finished."""
    summary = {}
    for recipe in recipes:
        seeds = [s for s, runs in scores.items() if SCRATCH in runs and recipe in runs]
        if seeds:
            summary[recipe] = {
                "seeds": seeds,
                SCRATCH: mean_sd([scores[s][SCRATCH] for s in seeds]),
                "pretrained": mean_sd([scores[s][recipe] for s in seeds]),
                "gain": mean_sd([scores[s][recipe] - scores[s][SCRATCH] for s in seeds]),
            }
    return summary


def _cell(stats: dict, sign: str = "") -> str:
    mean = f"{stats['mean']:{sign}.2f}"
    return f"{mean} ± {stats['sd']:.2f}" if stats["sd"] is not None else mean


def table(scores: dict[int, dict[str, float]], recipes: list[str], summary: dict) -> str:
    """Markdown: one row per seed, then mean ± sd per recipe (over the seeds it finished)."""
    header = ["seed", SCRATCH, *[c for r in recipes for c in (r, f"gain ({r})")]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for seed, runs in scores.items():
        cells = [str(seed), f"{runs[SCRATCH]:.2f}" if SCRATCH in runs else "—"]
        for recipe in recipes:
            done = recipe in runs and SCRATCH in runs
            cells += [f"{runs[recipe]:.2f}" if recipe in runs else "—",
                      f"{runs[recipe] - runs[SCRATCH]:+.2f}" if done else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    for recipe, stats in summary.items():
        cells = [f"mean ± sd ({recipe}, seeds {', '.join(map(str, stats['seeds']))})", _cell(stats[SCRATCH])]
        for other in recipes:
            cells += [_cell(stats["pretrained"]), _cell(stats["gain"], "+")] if other == recipe else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/pretrain"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default="inpaint,baseline", help=f"Comma-separated, of {', '.join(RECIPES)}.")
    parser.add_argument("--model", default="fcn-small")
    parser.add_argument("--holdout-groups", default="0006R0")
    parser.add_argument("--labels-fraction", type=float, default=0.1)
    parser.add_argument("--input-size", default="180x240", help="Pretraining and fine-tuning HxW.")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--freeze-encoder-epochs", type=int, default=0)
    args = parser.parse_args()
    seeds = [int(s) for s in parse_groups(args.seeds)]
    recipes = parse_groups(args.recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not seeds:
        sys.exit(f"--recipes: unknown {', '.join(unknown)} (choose from {', '.join(RECIPES)})" if unknown
                 else "--seeds: give at least one seed")
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("seeds", "recipes", "work")}
    check_settings(args.work, settings)
    holdout = parse_groups(args.holdout_groups)
    frames = link_unlabeled(args.camvid, holdout, args.work / "unlabeled")

    bench = Bench(args)
    scores: dict[int, dict[str, float]] = {seed: {} for seed in seeds}
    runs: dict[str, dict] = {}
    pretraining: dict[str, dict] = {}
    for recipe in recipes:
        for seed in seeds:
            encoder_dir = bench.pretrain(seed, recipe)
            info = json.loads((encoder_dir / "encoder.json").read_text())
            pretraining[f"seed{seed}/{recipe}"] = {
                "frames": info["frames"], "seconds": info["seconds"],
                "reconstruction_error": info["reconstruction_error"],
                "grid": str((encoder_dir / "reconstructions.png").resolve())}
            for name, init_from in ((SCRATCH, None), (recipe, encoder_dir)):
                if name not in scores[seed]:
                    runs[f"seed{seed}/{name}"] = bench.fine_tune(seed, name, init_from)
                    scores[seed][name] = runs[f"seed{seed}/{name}"]["heldout_miou"] * 100

    summary = summarise(scores, recipes)
    write_json(args.work / "results.json", {
        "settings": settings, "seeds": seeds, "recipes": {r: RECIPES[r] for r in recipes},
        "unlabeled_frames": frames, "heldout_miou_points": summary, "runs": runs, "pretraining": pretraining,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"})
    print(f"\n{args.model}, {args.labels_fraction:.0%} of the {frames} labeled CamVid train + val images outside "
          f"{', '.join(holdout)}, {args.epochs} epochs at {args.input_size} (last epoch kept), pretraining "
          f"{args.pretrain_epochs} epochs on {frames} unlabeled frames; mIoU on the held-out {', '.join(holdout)}\n")
    print(table(scores, recipes, summary))
    print(f"\nresults: {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
