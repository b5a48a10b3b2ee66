"""`edgeseg data synth`: the built-in synthetic dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import parse_size

data_app = typer.Typer(help="Datasets: generate the built-in synthetic set.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write (CamVid layout + dataset.yaml)."),
    num: Optional[int] = typer.Option(None, "--num", help="Number of images, train + val (default 128)."),
    size: str = typer.Option("96x128", "--size", help="Image size HxW."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same files."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
) -> None:
    """Generate a deterministic synthetic segmentation dataset (shapes on textured backgrounds)."""
    from ..data.synth import DEFAULT_NUM, generate_synthetic

    num = DEFAULT_NUM if num is None else num
    path = generate_synthetic(out, num=num, size=parse_size(size), seed=seed, force=force)
    typer.echo(f"wrote {num} images of {size} to {path}")
