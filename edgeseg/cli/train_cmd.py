"""`edgeseg train`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import default_data, parse_size


def train(
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
    from ..console import keep_log, say
    from ..data.readers import open_dataset
    from ..progress import stage
    from ..rundir import RunConfig
    from ..train import train as run_training
    from ..train_progress import StepProgress

    if resume:
        cfg = RunConfig.load(out)
    else:
        data = default_data(data, say)
        spec = open_dataset(data, "train", data_format)
        cfg = RunConfig(model=model, classes=spec.classes, palette=spec.palette, input_size=parse_size(input_size),
                        data=str(Path(data).resolve()), data_format=spec.format, seed=seed, epochs=epochs,
                        batch_size=batch_size,
                        learning_rate=learning_rate, class_weighting=class_weighting,
                        init_from=str(init_from) if init_from else None,
                        freeze_encoder_epochs=freeze_encoder_epochs, labels_fraction=labels_fraction,
                        logit_adjustment=logit_adjustment)
    out.mkdir(parents=True, exist_ok=True)
    keep_log(out / "train.log")
    with stage(f"training {cfg.model}") as bar:
        def on_epoch(epoch: int, row: dict) -> None:
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}  val mIoU {row['val_miou'] * 100:.2f}")

        result = run_training(cfg, out, resume=resume, skip_bad=skip_bad, strategy=strategy,
                              backbone_weights=backbone_weights, freeze_backbone=freeze_backbone, on_epoch=on_epoch,
                              callbacks=[StepProgress(bar, cfg.epochs)])
    skipped = f", {result.skipped} bad samples skipped" if result.skipped else ""
    adjustment = result.adjustment
    say(f"trained {cfg.model} for {result.epochs_run} epochs in {result.seconds:.0f}s: best val mIoU "
        f"{result.best_miou * 100:.2f} (epoch {result.best_epoch + 1}) -> {out / 'model.keras'}{skipped}")
    if adjustment and adjustment["alpha"]:
        say(f"logit adjustment (strength {adjustment['alpha']}, chosen on val): val mIoU "
            f"{adjustment['val_miou_trained'] * 100:.2f} -> {adjustment['val_miou'] * 100:.2f}")
