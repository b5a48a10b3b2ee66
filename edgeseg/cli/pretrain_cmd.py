"""`edgeseg pretrain`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..choices import ModelName, PretrainLoss
from ..rundir import PRETRAIN_STATE_SCHEMA, STATE, check_resume, read_state
from ..runtime.errors import EdgesegError
from .options import check_size, given_on_command_line, model_option, parse_size
from .training_extra import require_training

DEFAULT_MASK_RATIO = 0.5


def pretrain(
    ctx: typer.Context,
    images: str = typer.Option(..., "--images", help="Image folder (recursive), glob, video file or folder of videos."),
    out: Path = typer.Option(..., "--out", help="Run folder (encoder.weights.h5, encoder.json, reconstructions.png)."),
    model: ModelName = model_option("Whose encoder to pretrain"),
    epochs: int = typer.Option(10, "--epochs"),
    input_size: str = typer.Option("96x128", "--input-size", callback=check_size,
                                   help="Frames are resized to this HxW."),
    every: int = typer.Option(1, "--every", help="Keep every K-th frame of each video (and every K-th image)."),
    loss: PretrainLoss = typer.Option("l2", "--loss", help="Reconstruction loss."),
    mask_ratio: Optional[float] = typer.Option(
        None, "--mask-ratio", help=f"Mask this fraction of 16x16 blocks (default {DEFAULT_MASK_RATIO})."),
    noise: Optional[float] = typer.Option(
        None, "--noise", help="Instead of masking: Gaussian noise of this std (0..1 pixel scale)."),
    masked_loss: bool = typer.Option(False, "--masked-loss",
                                     help="Loss only on the masked blocks (inpainting), not on every pixel."),
    whiten_colour: bool = typer.Option(False, "--whiten-colour",
                                       help="Reconstruct whitened colours, so colour errors weigh like brightness."),
    batch_size: int = typer.Option(8, "--batch-size"),
    learning_rate: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue an interrupted pretraining after its last finished epoch."),
) -> None:
    """Pretrain a model's encoder as a convolutional autoencoder on unlabeled frames (for train --init-from)."""
    if mask_ratio is not None and noise is not None:
        raise EdgesegError("--mask-ratio and --noise are alternatives: give one")
    default_mask = DEFAULT_MASK_RATIO if noise is None else 0.0
    settings = {"images": images, "model": model, "input_size": parse_size(input_size), "every": every,
                "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "loss": loss,
                "seed": seed, "mask_ratio": default_mask if mask_ratio is None else mask_ratio, "noise": noise or 0.0,
                "masked_loss": masked_loss, "whiten_colour": whiten_colour}
    state = read_state(out, PRETRAIN_STATE_SCHEMA) if resume else {}
    if state:  # the run keeps its saved config
        check_resume(out / STATE, state["config"],
                     {k: v for k, v in settings.items() if given_on_command_line(ctx, k)})
    require_training("pretrain")
    from rich.console import Console
    from rich.progress import Progress

    from ..data.frames import sample_frames
    from ..encoder import ENCODER_INFO, ENCODER_WEIGHTS
    from ..pretrain import RECONSTRUCTIONS, PretrainConfig, check_out
    from ..pretrain import pretrain as run_pretraining

    cfg = PretrainConfig.from_saved(state["config"]) if state else PretrainConfig(**settings)
    cfg.check()
    if resume and (out / ENCODER_INFO).is_file():
        typer.echo(f"{out}: already pretrained ({ENCODER_INFO} written), nothing to resume")
        return
    check_out(out)
    console = Console()
    with console.status(f"reading frames from {cfg.images}"):
        frames = sample_frames(cfg.images, cfg.every, cfg.input_size)
    console.print(f"{len(frames)} frames at {cfg.input_size[0]}x{cfg.input_size[1]}")
    done = state.get("epoch", -1) + 1
    if done:
        console.print(f"resuming after epoch {done}/{cfg.epochs}")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("pretraining", total=cfg.epochs, completed=done)

        def on_epoch(epoch: int, row: dict) -> None:
            progress.update(task, completed=epoch + 1)
            progress.console.print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}  "
                                   f"preview error {row['preview_error']:.2f}")

        result = run_pretraining(cfg, out, frames, resume=resume, on_epoch=on_epoch)
    typer.echo(f"pretrained the {cfg.model} encoder on {result.frames} frames for {result.epochs} epochs in "
               f"{result.seconds:.0f}s: reconstruction error {result.initial_error:.2f} -> {result.final_error:.2f} "
               f"(mean abs, 0..255) -> {out / ENCODER_WEIGHTS}, grid {out / RECONSTRUCTIONS}")
