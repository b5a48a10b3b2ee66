"""`edgeseg train`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import default_data, given_on_command_line, parse_size


def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run folder (model.keras, config.json, history.csv, logs)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default: built-in synthetic)."),
    data_format: Optional[str] = typer.Option(None, "--format", help="camvid | pairs | voc (default: detect)."),
    model: str = typer.Option("fcn-tiny", "--model", help="fcn-tiny | fcn-small | fcn-medium | fcn8s."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    input_size: str = typer.Option("96x128", "--input-size", help="Training crop and model input HxW."),
    learning_rate: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    class_weighting: str = typer.Option("median_frequency", "--class-weights", help="median_frequency | none."),
    logit_adjustment: bool = typer.Option(
        True, "--logit-adjustment/--no-logit-adjustment",
        help="After training, take back on val (strength 0-1) the bias towards rare classes that class "
             "weights leave in the logits."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad samples instead of failing."),
    strategy: str = typer.Option("default", "--strategy", help="default | mirrored | multiworker (TF_CONFIG)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights",
                                                    help="fcn8s: local VGG16 (no top) weights file."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="fcn8s: keep the encoder fixed."),
    init_from: Optional[Path] = typer.Option(None, "--init-from",
                                             help="Pretrain run folder: start the encoder from its weights."),
    freeze_encoder_epochs: int = typer.Option(0, "--freeze-encoder-epochs",
                                              help="Keep the encoder fixed for the first N epochs."),
    labels_fraction: float = typer.Option(1.0, "--labels-fraction",
                                          help="Train on this seeded fraction of the labeled images (at least 1)."),
) -> None:
    """Train a compact FCN; the best epoch by validation mIoU is kept as RUN/model.keras."""
    from rich.progress import Progress

    from ..data.readers import open_dataset
    from ..rundir import RunConfig, check_resume, check_settings
    from ..train import train as run_training

    settings = {"model": model, "input_size": parse_size(input_size), "seed": seed, "epochs": epochs,
                "batch_size": batch_size, "learning_rate": learning_rate, "class_weighting": class_weighting,
                "init_from": str(init_from) if init_from else None, "freeze_encoder_epochs": freeze_encoder_epochs,
                "labels_fraction": labels_fraction, "logit_adjustment": logit_adjustment}
    check_settings(settings)
    if resume:
        cfg = RunConfig.load(out)
        given = {"data": str(Path(data).resolve()) if data else None, "data_format": data_format, **settings}
        check_resume(out, cfg, {k: v for k, v in given.items() if given_on_command_line(ctx, k)})
    else:
        data = default_data(data, typer.echo)
        spec = open_dataset(data, "train", data_format)
        cfg = RunConfig(classes=spec.classes, palette=spec.palette, data=str(Path(data).resolve()),
                        data_format=spec.format, **settings)
    with Progress(transient=True) as progress:
        task = progress.add_task("training", total=cfg.epochs)

        def on_epoch(epoch: int, row: dict) -> None:
            progress.update(task, completed=epoch + 1)
            progress.console.print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}  "
                                   f"val mIoU {row['val_miou'] * 100:.2f}")

        result = run_training(cfg, out, resume=resume, skip_bad=skip_bad, strategy=strategy,
                              backbone_weights=backbone_weights, freeze_backbone=freeze_backbone, on_epoch=on_epoch)
    skipped = f", {result.skipped} bad samples skipped" if result.skipped else ""
    adjustment = result.adjustment
    typer.echo(f"trained {cfg.model} for {result.epochs_run} epochs in {result.seconds:.0f}s: best val mIoU "
               f"{result.best_miou * 100:.2f} (epoch {result.best_epoch + 1}) -> {out / 'model.keras'}{skipped}")
    if adjustment and adjustment["alpha"]:
        typer.echo(f"logit adjustment (strength {adjustment['alpha']}, chosen on val): val mIoU "
                   f"{adjustment['val_miou_trained'] * 100:.2f} -> {adjustment['val_miou'] * 100:.2f}")
