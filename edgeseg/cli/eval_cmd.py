"""`edgeseg eval`: Keras models, run folders and bundles, through one metric path."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table

from ..choices import DataFormat
from ..metrics import SegmentationScores
from ..runtime.errors import EdgesegError
from ..runtime.manifest import MANIFEST_NAME
from .training_extra import require_training

if TYPE_CHECKING:
    from ..runtime.backends.base import Runner


def _runner(model: Path, artifact: Optional[str], threads: Optional[int]) -> Tuple[Runner, List[str]]:
    """The runner and class names of a bundle, run folder or .keras file."""
    if (model / MANIFEST_NAME).is_file() or not model.exists():
        from ..runtime.backends.base import runner_for
        from ..runtime.manifest import read_manifest, resolve_bundle

        bundle = resolve_bundle(model)
        manifest = read_manifest(bundle)
        return runner_for(bundle, manifest.artifact(artifact), threads), manifest.classes

    run_dir = model if model.is_dir() else model.parent
    if not (run_dir / "config.json").is_file():
        raise EdgesegError(f"{model}: not a bundle, a run folder or a .keras file inside a run folder")
    if artifact is not None:
        raise EdgesegError(f"--artifact names a bundle's model file; {model} is a Keras model")
    require_training("eval")
    from ..keras_runner import load_keras_runner

    runner, cfg = load_keras_runner(model)
    return runner, cfg.classes


def print_scores(scores: SegmentationScores, title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, iou in scores.per_class_iou.items():
        table.add_row(name, "-" if iou is None else f"{iou * 100:.2f}")
    table.add_row("[b]mean IoU", f"[b]{scores.miou * 100:.2f}")
    table.add_row("pixel accuracy", f"{scores.pixel_accuracy * 100:.2f}")
    Console(width=None if Console().is_terminal else 160).print(table)


def eval_command(
    model: Path = typer.Argument(..., help="Bundle folder or name (e.g. camvid), run folder or .keras file."),
    data: Path = typer.Option(..., "--data", exists=True, file_okay=False, help="Dataset root."),
    split: str = typer.Option("val", "--split"),
    data_format: Optional[DataFormat] = typer.Option(None, "--format", help="Dataset layout (default: detect)."),
    artifact: Optional[str] = typer.Option(None, "--artifact", help="Bundle artifact (default: the bundle's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for bundle backends."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write miou, pixel_accuracy, per_class_iou."),
) -> None:
    """Mean IoU (ignore label excluded, one confusion matrix over the split), per-class IoU, pixel accuracy."""
    from rich.progress import track

    from ..data.readers import load_sample, open_dataset, validate
    from ..evaluate import evaluate
    from ..rundir import atomic_write_text, check_writable

    if json_out is not None:
        check_writable(json_out)
    runner, classes = _runner(model, artifact, threads)
    with runner:
        spec = open_dataset(data, split, data_format)
        if spec.classes != classes:
            raise EdgesegError(f"{data}: dataset classes {spec.classes} do not match the model's {classes}")
        samples, _ = validate(spec, skip_bad=False)
        pairs = (load_sample(spec, s) for s in track(samples, description="evaluating", transient=True))
        scores = evaluate(runner, pairs, classes)
    print_scores(scores, f"{model} on {data} ({split})")
    if json_out:
        atomic_write_text(json_out, json.dumps(scores.to_dict(), indent=2) + "\n")
    typer.echo(f"mIoU {scores.miou * 100:.2f}, pixel accuracy {scores.pixel_accuracy * 100:.2f} "
               f"on {scores.num_images} images")
