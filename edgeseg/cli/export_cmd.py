"""`edgeseg export`: a run to a deploy bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..summary import heldout_line


def export(
    run: Path = typer.Argument(..., help="Training run folder."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    target: str = typer.Option("cpu", "--target", help="cpu (TFLite/LiteRT) | jetson (ONNX/TensorRT)."),
    precision: str = typer.Option("int8", "--precision", help="fp32 | fp16 | int8."),
    output: str = typer.Option("logits", "--output", help="logits | labels (argmax inside the model)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration data (default: training data)."),
    num_calib: int = typer.Option(200, "--num-calib", help="Calibration images (all if fewer)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluate float and INT8 on this data."),
    eval_split: str = typer.Option("val", "--eval-split"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Fail if INT8 loses more mIoU points."),
    debug_quant: bool = typer.Option(False, "--debug-quant", help="Per-layer quantization error report."),
    float_layers: str = typer.Option("", "--float-layers", help="Comma-separated layers to keep in float."),
    float_ops: str = typer.Option("", "--float-ops", help="Comma-separated op types to keep in float."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for evaluation."),
    opset: int = typer.Option(17, "--opset", help="jetson: ONNX opset (17 parses on TensorRT 8.5+)."),
    layout: str = typer.Option("nchw", "--layout", help="jetson: nchw (TensorRT) | nhwc."),
    batch: int = typer.Option(1, "--batch", help="jetson: static batch size."),
    calib_method: Optional[str] = typer.Option(
        None, "--calib-method", help="jetson: minmax | entropy | percentile | auto (default: auto with --eval-data)."),
    heldout_run: Optional[Path] = typer.Option(
        None, "--heldout-run", help="A run of the same recipe trained with --holdout-groups: exported alike and "
                                    "scored on those recordings, as the bundle's held-out estimate."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
) -> None:
    """Convert a trained run into a deploy bundle (model files + edgeseg.json), checked and evaluated."""
    from ..console import keep_log, say
    from ..export import ExportOptions, export_bundle

    opts = ExportOptions(precision=precision, output=output, calib_data=calib_data, num_calib=num_calib,
                         eval_data=eval_data, eval_split=eval_split, max_drop=max_drop, debug_quant=debug_quant,
                         float_layers=[s for s in float_layers.split(",") if s],
                         float_ops=[s for s in float_ops.split(",") if s], force=force, threads=threads,
                         opset=opset, layout=layout, batch=batch, calib_method=calib_method,
                         heldout_run=heldout_run)
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
