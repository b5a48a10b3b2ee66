"""`edgeseg build`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..choices import ModelName, OutputKind, Target
from ..summary import heldout_line
from .options import Scope, check_scope, check_size, model_option, parse_size
from .training_extra import require_training

#: The training options, which a build that reuses a run (`--run`) does not take.
BUILD_SCOPE: Scope = {name: {"run": (None,)} for name in
                      ("model", "epochs", "batch_size", "input_size", "seed", "holdout")}


def build(
    ctx: typer.Context,
    target: Target = typer.Option("cpu", "--target"),
    out: Optional[Path] = typer.Option(None, "--out", help="Build folder (default build/TARGET)."),
    data: Optional[Path] = typer.Option(None, "--data", exists=True, file_okay=False,
                                        help="Dataset root (default: built-in synthetic)."),
    run: Optional[Path] = typer.Option(None, "--run", exists=True, file_okay=False,
                                       help="Reuse this training run instead of training."),
    model: ModelName = model_option(),
    epochs: int = typer.Option(8, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    input_size: str = typer.Option("96x128", "--input-size", callback=check_size),
    seed: int = typer.Option(0, "--seed"),
    num_calib: int = typer.Option(200, "--num-calib", min=1),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0,
                                             help="Fail if INT8 loses more mIoU points."),
    output: OutputKind = typer.Option("logits", "--output", help="labels: argmax inside the model."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for evaluation and latency."),
    force: bool = typer.Option(False, "--force", help="Rebuild every stage."),
    holdout: str = typer.Option(
        "auto", "--holdout-groups",
        help="Recordings kept out of training for the held-out estimate: auto (the last group of the training "
             "split when it has two or more), none, or comma-separated names."),
) -> None:
    """Data -> train -> calibrate -> export float and INT8 -> check -> evaluate -> bundle + report."""
    from ..console import keep_log, say
    from ..rundir import RunConfig, check_settings

    check_scope(ctx, BUILD_SCOPE)
    check_settings({"model": model, "epochs": epochs, "batch_size": batch_size, "input_size": parse_size(input_size),
                    "seed": seed})
    if run is not None:
        RunConfig.load(run)
    require_training("build")
    from ..build import BuildOptions
    from ..build import build as run_build

    opts = BuildOptions(out=out or Path("build") / target, data=data, run=run, model=model, epochs=epochs,
                        batch_size=batch_size, input_size=parse_size(input_size), seed=seed, num_calib=num_calib,
                        max_drop=max_drop, output=output, threads=threads, force=force, holdout=holdout)
    opts.out.mkdir(parents=True, exist_ok=True)
    keep_log(opts.out / "build.log")
    bundle, report = run_build(opts, target, log=say)
    for line in summary(bundle, report, synthetic=data is None, log=opts.out / "build.log"):
        say(line)


def summary(bundle: Path, report: dict, synthetic: bool, log: Path) -> List[str]:
    """The build's closing block: each artifact's size, mIoU and latency, the INT8 drop and what to run next."""
    cmp_ = report["comparison"]
    lines = ["", f"built {bundle}: float mIoU {cmp_['float']['miou'] * 100:.2f}, INT8 {cmp_['int8']['miou'] * 100:.2f} "
                 f"(drop {cmp_['drop_points']:.2f} points on {cmp_['float']['num_images']} val images)",
             f"  {'artifact':<10}{'precision':<11}{'size KiB':>9}{'mIoU %':>8}{'p50 ms':>8}{'FPS':>8}"]
    for name, art in report["artifacts"].items():
        miou = "-" if art["miou"] is None else f"{art['miou'] * 100:.2f}"
        lines.append(f"  {name:<10}{art['precision']:<11}{art['bytes'] / 1024:>9.0f}{miou:>8}"
                     f"{art['latency']['p50_ms']:>8}{art['latency']['fps']:>8}")
    if report.get("heldout"):
        lines.append(f"  {heldout_line(report['heldout'])}")
    lines.append(f"  per-class IoU: {bundle / 'report.md'}; log: {log}")
    if synthetic:
        lines += ["The built-in synthetic shapes checked the whole path here. Next, the shipped CamVid street-scene",
                  "model on a sample clip in the browser, and its latency beside this build's:",
                  "  edgeseg demo camvid --source sample --sink http://127.0.0.1:8080"]
    else:
        lines.append("Latency beside the shipped CamVid model's:")
    lines.append(f"  edgeseg bench camvid {bundle}")
    return lines
