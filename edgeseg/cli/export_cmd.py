"""`edgeseg export`: a run to a deploy bundle."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..choices import CalibMethod, OnnxLayout, OutputKind, Precision, Target
from ..summary import heldout_line
from .options import GIVEN, Scope, check_scope
from .training_extra import require_training

#: Where each export option applies: the options one target takes are refused with the other (as
#: Ultralytics' exporter refuses an argument a format does not take), calibration ones without INT8.
EXPORT_SCOPE: Scope = {
    "debug_quant": {"target": ("cpu",), "precision": ("int8",)},
    "float_layers": {"target": ("cpu",), "precision": ("int8",)},
    "float_ops": {"target": ("cpu",), "precision": ("int8",)},
    "opset": {"target": ("jetson",)},
    "layout": {"target": ("jetson",)},
    "batch": {"target": ("jetson",)},
    "calib_method": {"target": ("jetson",), "precision": ("int8",)},
    "calib_data": {"precision": ("int8",)},
    "num_calib": {"precision": ("int8",)},
    "eval_split": {"eval_data": GIVEN},
}


def export(
    ctx: typer.Context,
    run: Path = typer.Argument(..., exists=True, file_okay=False, help="Training run folder."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    target: Target = typer.Option("cpu", "--target", help="cpu (TFLite/LiteRT) or jetson (ONNX/TensorRT)."),
    precision: Precision = typer.Option("int8", "--precision", help="jetson: fp32 or int8."),
    output: OutputKind = typer.Option("logits", "--output", help="labels: argmax inside the model."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", exists=True, file_okay=False,
                                              help="Calibration data (default: training data)."),
    num_calib: int = typer.Option(200, "--num-calib", min=1, help="Calibration images (all if fewer)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", exists=True, file_okay=False,
                                             help="Evaluate float and INT8 on this data."),
    eval_split: str = typer.Option("val", "--eval-split"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0,
                                             help="Fail if INT8 loses more mIoU points."),
    debug_quant: bool = typer.Option(False, "--debug-quant", help="cpu: per-layer quantization error report."),
    float_layers: str = typer.Option("", "--float-layers", help="cpu: comma-separated layers to keep in float."),
    float_ops: str = typer.Option("", "--float-ops", help="cpu: comma-separated op types to keep in float."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for evaluation."),
    opset: int = typer.Option(17, "--opset", min=13, help="jetson: ONNX opset (17 parses on TensorRT 8.5+)."),
    layout: OnnxLayout = typer.Option("nchw", "--layout", help="jetson: nchw (TensorRT) or nhwc."),
    batch: int = typer.Option(1, "--batch", min=1, help="jetson: static batch size."),
    calib_method: Optional[CalibMethod] = typer.Option(
        None, "--calib-method", help="jetson: Q/DQ calibration (default: auto with --eval-data, else entropy)."),
    heldout_runs: List[Path] = typer.Option(
        [], "--heldout-run", exists=True, file_okay=False,
        help="A run of the same recipe trained with --holdout-groups: exported alike and scored on those "
             "recordings, as the bundle's held-out estimate. Repeat it for group folds (leave-one-group-out, "
             "or k folds of recording stretches), pooled into one estimate."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
) -> None:
    """Convert a trained run into a deploy bundle (model files + edgeseg.json), checked and evaluated."""
    from ..console import keep_log, say
    from ..data.readers import open_dataset
    from ..export_options import ExportOptions, check_export
    from ..rundir import RunConfig

    check_scope(ctx, EXPORT_SCOPE)
    opts = ExportOptions(precision=precision, output=output, calib_data=calib_data, num_calib=num_calib,
                         eval_data=eval_data, eval_split=eval_split, max_drop=max_drop, debug_quant=debug_quant,
                         float_layers=[s for s in float_layers.split(",") if s],
                         float_ops=[s for s in float_ops.split(",") if s], force=force, threads=threads,
                         opset=opset, layout=layout, batch=batch, calib_method=calib_method,
                         heldout_runs=tuple(heldout_runs))
    check_export(out, opts, target)
    for folder in (run, *heldout_runs):
        RunConfig.load(folder)
    for data, split in ((calib_data, "train"), (eval_data, eval_split)):
        if data is not None:
            open_dataset(data, split)
    require_training("export")
    from ..export import export_bundle

    if out.parent.is_dir():
        keep_log(out.parent / f"{out.name}.log")
    result = export_bundle(run, out, opts, target, log=say)
    for err in result.quant_errors[:8]:
        typer.echo(f"  quant error {err.rmse_over_scale:7.3f} steps RMSE  {err.op:<18} {err.tensor}")
    comparison = result.manifest.evaluation.get("comparison")
    summary = f"wrote {out} ({', '.join(result.manifest.artifacts)})"
    if comparison:
        summary += (f": float mIoU {comparison['float']['miou'] * 100:.2f}, INT8 "
                    f"{comparison['int8']['miou'] * 100:.2f} (drop {comparison['drop_points']:.2f} points)")
    typer.echo(summary)
    heldout = result.manifest.evaluation.get("heldout")
    if heldout:
        typer.echo(heldout_line(heldout))
