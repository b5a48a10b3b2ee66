"""`edgeseg data synth`: the built-in synthetic dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..choices import DataFormat
from .options import check_size, parse_size

data_app = typer.Typer(help="Datasets: generate the built-in synthetic set; show recording groups.",
                       no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write (CamVid layout + dataset.yaml)."),
    num: Optional[int] = typer.Option(None, "--num", min=1, help="Number of images, train + val (default 128)."),
    size: str = typer.Option("96x128", "--size", callback=check_size, help="Image size HxW."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same files."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
) -> None:
    """Generate a deterministic synthetic segmentation dataset (shapes on textured backgrounds)."""
    from ..data.synth import DEFAULT_NUM, generate_synthetic

    num = DEFAULT_NUM if num is None else num
    path = generate_synthetic(out, num=num, size=parse_size(size), seed=seed, force=force)
    typer.echo(f"wrote {num} images of {size} to {path}")


@data_app.command("groups")
def groups(
    data: Path = typer.Argument(..., exists=True, file_okay=False, help="Dataset root."),
    data_format: Optional[DataFormat] = typer.Option(None, "--format", help="Dataset layout (default: detect)."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern", help="Regex giving a frame's recording from its file name (default: "
                                      "dataset.yaml's group_pattern; CamVid: the prefix before the first '_')."),
) -> None:
    """Frames per recording (group) in each split, and which splits share recordings."""
    from ..data.groups import counts, overlap_warning
    from ..data.readers import detect_format, open_dataset, split_names

    fmt = data_format or detect_format(data)
    specs = {split: open_dataset(data, split, fmt, group_pattern) for split in split_names(data, fmt)}
    for split, spec in specs.items():
        per_group = counts(spec.groups)
        typer.echo(f"{split}: {len(spec.samples)} frames in {len(per_group)} group(s): "
                   + ", ".join(f"{g} ({n})" for g, n in per_group.items()))
    pattern = next(iter(specs.values())).group_pattern if specs else None
    typer.echo(f"group pattern: {pattern or 'none (every frame of unknown recording)'}")
    if "train" in specs:
        for split, spec in specs.items():
            warning = overlap_warning(split, specs["train"].groups, spec.groups) if split != "train" else None
            if warning:
                typer.echo(f"warning: {warning}")
