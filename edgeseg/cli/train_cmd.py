"""`edgeseg train`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..choices import AugmentName, ClassWeighting, DataFormat, ModelName, Strategy
from .options import (
    GIVEN,
    Scope,
    check_scope,
    check_size,
    default_data,
    given_on_command_line,
    listed,
    model_option,
    parse_size,
)
from .training_extra import require_training

#: Options that apply only to some runs (judged on the run's settings, the saved ones with --resume).
TRAIN_SCOPE: Scope = {
    "backbone_weights": {"model": ("fcn8s",)},
    "freeze_backbone": {"model": ("fcn8s",)},
    "freeze_encoder_epochs": {"init_from": GIVEN},
    "logit_alpha": {"logit_adjustment": (True,), "class_weighting": ("median_frequency",)},
}


def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run folder (model.keras, config.json, history.csv, logs)."),
    data: Optional[Path] = typer.Option(None, "--data", exists=True, file_okay=False,
                                        help="Dataset root (default: built-in synthetic)."),
    data_format: Optional[DataFormat] = typer.Option(
        None, "--format", metavar="LAYOUT", help=f"Dataset layout: {listed(DataFormat)} (default: detect)."),
    model: ModelName = model_option(),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    input_size: str = typer.Option("96x128", "--input-size", callback=check_size,
                                   help="Training crop and model input HxW."),
    learning_rate: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    class_weighting: ClassWeighting = typer.Option("median_frequency", "--class-weights", metavar="METHOD",
                                                   help=f"{listed(ClassWeighting)}."),
    logit_adjustment: bool = typer.Option(
        True, "--logit-adjustment/--no-logit-adjustment",
        help="After training, take back on val (strength 0-1) the bias towards rare classes that class "
             "weights leave in the logits."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) bad samples instead of failing."),
    strategy: Strategy = typer.Option("default", "--strategy", metavar="NAME",
                                      help=f"{listed(Strategy)} (the machines in TF_CONFIG)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", exists=True, dir_okay=False,
                                                    help="fcn8s: local VGG16 (no top) weights file."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="fcn8s: keep the encoder fixed."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", exists=True, file_okay=False,
                                             help="Pretrain run folder: start the encoder from its weights."),
    freeze_encoder_epochs: int = typer.Option(0, "--freeze-encoder-epochs",
                                              help="Keep the encoder fixed for the first N epochs."),
    labels_fraction: float = typer.Option(1.0, "--labels-fraction",
                                          help="Train on this seeded fraction of the labeled images (at least 1)."),
    train_splits: str = typer.Option("train", "--train-splits",
                                     help="Comma-separated splits to train on (e.g. train,val for the final model)."),
    val_split: str = typer.Option("val", "--val-split",
                                  help="Split that picks the best epoch and adjustment strength; 'none' (or a "
                                       "split also trained on) keeps the last epoch."),
    holdout_groups: Optional[str] = typer.Option(
        None, "--holdout-groups",
        help="Comma-separated recordings kept out of training and model selection, scored once at the end "
             "(the held-out estimate of accuracy on new footage)."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern", help="Regex giving a frame's recording from its file name (first group, else "
                                      "the match); default: dataset.yaml's, CamVid's prefix before '_'."),
    logit_alpha: Optional[float] = typer.Option(None, "--logit-alpha",
                                                help="Fixed logit-adjustment strength 0-1 (no choice on val)."),
    crop_size: Optional[str] = typer.Option(None, "--crop-size", callback=check_size,
                                            help="Training crop HxW (default: input size)."),
    augment: AugmentName = typer.Option("standard", "--augment", metavar="RECIPE",
                                        help=f"{listed(AugmentName)} (scale 0.5-2, exposure, blur, noise)."),
) -> None:
    """Train a compact FCN; the best epoch by validation mIoU is kept as RUN/model.keras."""
    from dataclasses import asdict

    from ..console import keep_log, say
    from ..data.groups import parse_groups
    from ..data.readers import open_dataset
    from ..rundir import CONFIG, RunConfig, check_resume, check_settings
    from ..summary import heldout_line

    settings = {"model": model, "input_size": parse_size(input_size), "seed": seed, "epochs": epochs,
                "batch_size": batch_size, "learning_rate": learning_rate, "class_weighting": class_weighting,
                "init_from": str(init_from) if init_from else None, "freeze_encoder_epochs": freeze_encoder_epochs,
                "labels_fraction": labels_fraction, "logit_adjustment": logit_adjustment, "logit_alpha": logit_alpha,
                "train_splits": parse_groups(train_splits),
                "val_split": None if val_split.lower() == "none" else val_split,
                "holdout_groups": parse_groups(holdout_groups), "group_pattern": group_pattern,
                "crop_size": parse_size(crop_size) if crop_size else None, "augment": augment}
    check_settings(settings)
    saved = RunConfig.load(out) if resume else None
    check_scope(ctx, TRAIN_SCOPE, asdict(saved) if saved else settings)
    if saved:
        given = {"data": str(Path(data).resolve()) if data else None, "data_format": data_format, **settings}
        check_resume(out / CONFIG, asdict(saved), {k: v for k, v in given.items() if given_on_command_line(ctx, k)})
    require_training("train")
    from ..progress import stage
    from ..train import check_groups, val_overlap_warning
    from ..train import train as run_training
    from ..train_progress import StepProgress

    if saved:
        cfg = saved
    else:
        data = default_data(data, say)
        spec = open_dataset(data, "train", data_format)
        cfg = RunConfig(classes=spec.classes, palette=spec.palette, data=str(Path(data).resolve()),
                        data_format=spec.format, **settings)
    for split, groups in check_groups(cfg).items():
        typer.echo(f"{split}: " + ", ".join(f"{g} ({n})" for g, n in groups.items()))
    if cfg.holdout_groups:
        typer.echo(f"held out (never trained on or selected on): {', '.join(cfg.holdout_groups)}")
    warning = val_overlap_warning(cfg)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    keep_log(out / "train.log")
    with stage(f"training {cfg.model}") as bar:
        def on_epoch(epoch: int, row: dict) -> None:
            val = f"  val mIoU {row['val_miou'] * 100:.2f}" if row["val_miou"] != "" else ""
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}{val}")

        result = run_training(cfg, out, resume=resume, skip_bad=skip_bad, strategy=strategy,
                              backbone_weights=backbone_weights, freeze_backbone=freeze_backbone, on_epoch=on_epoch,
                              callbacks=[StepProgress(bar, cfg.epochs)])
    skipped = f", {result.skipped} bad samples skipped" if result.skipped else ""
    adjustment = result.adjustment
    chosen = (f"best val mIoU {result.best_miou * 100:.2f} (epoch {result.best_epoch + 1})" if cfg.selects_on_val
              else f"last epoch kept ({result.best_epoch + 1}, no validation split)")
    say(f"trained {cfg.model} for {result.epochs_run} epochs in {result.seconds:.0f}s: {chosen} -> "
        f"{out / 'model.keras'}{skipped}")
    if adjustment and adjustment["alpha"]:
        how = "fixed" if adjustment.get("fixed") else "chosen on val"
        change = (f": val mIoU {adjustment['val_miou_trained'] * 100:.2f} -> {adjustment['val_miou'] * 100:.2f}"
                  if adjustment.get("val_miou") is not None else "")
        say(f"logit adjustment (strength {adjustment['alpha']}, {how}){change}")
    if result.heldout:
        say(heldout_line(result.heldout))
