"""`edgeseg build`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..runtime.errors import EdgesegError
from .options import parse_size


def build(
    target: str = typer.Option("cpu", "--target", help="cpu | jetson."),
    out: Optional[Path] = typer.Option(None, "--out", help="Build folder (default build/TARGET)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default: built-in synthetic)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Reuse this training run instead of training."),
    model: str = typer.Option("fcn-tiny", "--model"),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    input_size: str = typer.Option("96x128", "--input-size"),
    seed: int = typer.Option(0, "--seed"),
    num_calib: int = typer.Option(200, "--num-calib"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Fail if INT8 loses more mIoU points."),
    output: str = typer.Option("logits", "--output", help="logits | labels."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for evaluation and latency."),
    force: bool = typer.Option(False, "--force", help="Rebuild every stage."),
    holdout: str = typer.Option(
        "auto", "--holdout-groups",
        help="Recordings kept out of training for the held-out estimate: auto (the last group of the training "
             "split when it has two or more), none, or comma-separated names."),
) -> None:
    """Data -> train -> calibrate -> export float and INT8 -> check -> evaluate -> bundle + report."""
    from ..build import BuildOptions
    from ..build import build as run_build

    if target not in ("cpu", "jetson"):
        raise EdgesegError(f"unknown target {target!r}; choose cpu or jetson")
    opts = BuildOptions(out=out or Path("build") / target, data=data, run=run, model=model, epochs=epochs,
                        batch_size=batch_size, input_size=parse_size(input_size), seed=seed, num_calib=num_calib,
                        max_drop=max_drop, output=output, threads=threads, force=force, holdout=holdout)
    bundle, report = run_build(opts, target, log=typer.echo)
    typer.echo((bundle / "report.md").read_text())
    arts = report["artifacts"]
    cmp_ = report["comparison"]
    typer.echo(f"built {bundle}: float mIoU {cmp_['float']['miou'] * 100:.2f}, INT8 {cmp_['int8']['miou'] * 100:.2f} "
               f"(drop {cmp_['drop_points']:.2f}), INT8 {arts['int8']['bytes'] / 1024:.0f} KiB, "
               f"{arts['int8']['latency_ms']['p50']} ms p50")
