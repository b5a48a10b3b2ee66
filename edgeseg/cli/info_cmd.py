"""`edgeseg info`: what a bundle or a run holds."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..runtime.errors import EdgesegError
from ..runtime.manifest import MANIFEST_NAME, read_manifest, shipped_bundles
from ..summary import heldout_line
from .training_extra import require_training


def info(
    path: Path = typer.Argument(..., help="Bundle folder, shipped bundle name (e.g. camvid) or run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest or config as JSON."),
) -> None:
    """Print a bundle's manifest (artifacts, input, classes, calibration, evaluation) or a run's model."""
    if not path.exists() and str(path) in (shipped := shipped_bundles()):
        path = shipped[str(path)]
    if (path / MANIFEST_NAME).is_file():
        manifest = read_manifest(path)
        if as_json:
            typer.echo(json.dumps(manifest.to_dict(), indent=2))
            return
        typer.echo(f"bundle {path} (format {manifest.format_version}, target {manifest.target})")
        model = manifest.model
        typer.echo(f"model: {model.get('name')}  params {model.get('params', 0):,}  MACs {model.get('macs', 0):,}")
        for name, art in manifest.artifacts.items():
            size = (path / art.file).stat().st_size
            mark = " (default)" if name == manifest.default else ""
            typer.echo(f"artifact {name}{mark}: {art.file} [{art.backend} {art.precision}] {size / 1024:.1f} KiB, "
                       f"input {art.input.layout} {art.input.dtype} {art.input.height}x{art.input.width}, "
                       f"output {art.output.kind} {art.output.dtype}")
        typer.echo(f"classes ({manifest.num_classes}): {', '.join(manifest.classes)}")
        if manifest.calibration:
            cal = manifest.calibration
            typer.echo(f"calibration: {cal.get('num_images')} images from {cal.get('data')}, "
                       f"sha256 {str(cal.get('sha256'))[:16]}")
        comparison = manifest.evaluation.get("comparison")
        if comparison:
            split = manifest.evaluation.get("split", "val")
            typer.echo(f"accuracy on {split}: float mIoU {comparison['float']['miou'] * 100:.2f}, INT8 "
                       f"{comparison['int8']['miou'] * 100:.2f}, drop {comparison['drop_points']:.2f} points")
        if manifest.evaluation.get("overlap_warning"):
            typer.echo(f"warning: {manifest.evaluation['overlap_warning']}")
        if manifest.evaluation.get("heldout"):
            typer.echo(heldout_line(manifest.evaluation["heldout"]))
        typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
        return
    if (path / "config.json").is_file():
        from ..rundir import RunConfig

        cfg = RunConfig.load(path)
        require_training("info")
        from ..model import build_model, count_macs, count_params

        model = build_model(cfg.model, cfg.num_classes, cfg.input_size)
        if as_json:
            typer.echo(json.dumps({**cfg.__dict__, "params": count_params(model), "macs": count_macs(model)}))
            return
        typer.echo(f"run {path}: {cfg.model}, {cfg.num_classes} classes, input {cfg.input_size[0]}x"
                   f"{cfg.input_size[1]}, params {count_params(model):,}, MACs {count_macs(model):,}")
        return
    raise EdgesegError(f"{path}: neither a bundle ({MANIFEST_NAME}) nor a run folder (config.json)")
