"""`edgeseg check` (TensorRT conformance of a bundle's ONNX) and `edgeseg compile` (engine on the device)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..choices import Precision, TrtCalibrator
from ..runtime.errors import EdgesegError
from .options import GIVEN, Scope, check_scope

#: Implicit calibration builds INT8 engines only; its data options apply only with a calibrator.
COMPILE_SCOPE: Scope = {
    "calibrator": {"precision": ("int8",)},
    "calib_data": {"calibrator": GIVEN},
    "num_calib": {"calib_data": GIVEN},
}


def check(bundle: Path = typer.Argument(..., help="Bundle folder with ONNX artifacts.")) -> None:
    """Check every ONNX artifact against TensorRT's rules: ops, static shapes, Q/DQ zero points, scales, axes;
    warn (without failing) about Q/DQ placed where it keeps TensorRT from fusing layers."""
    from ..converters.qdq_placement import bundle_placement_warnings
    from ..converters.trt_conformance import check_bundle

    violations = check_bundle(bundle)
    for v in violations:
        typer.echo(str(v))
    if violations:
        raise EdgesegError(f"{bundle}: {len(violations)} TensorRT conformance violation(s)")
    warnings = bundle_placement_warnings(bundle)
    for w in warnings:
        typer.echo(f"warning: {w}")
    note = f" ({len(warnings)} Q/DQ placement warning(s))" if warnings else ""
    typer.echo(f"{bundle}: every ONNX artifact is TensorRT-conformant{note}")


def compile_cmd(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="Bundle folder exported with --target jetson."),
    precision: Precision = typer.Option("int8", "--precision", help="int8: from the Q/DQ ONNX (or --calibrator)."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", min=1, help="Builder workspace limit."),
    dla: Optional[int] = typer.Option(None, "--dla", min=0, help="DLA core (Xavier, AGX Orin); GPU fallback."),
    calibrator: Optional[TrtCalibrator] = typer.Option(
        None, "--calibrator", help="TensorRT < 11: implicit INT8 calibration of the fp32 ONNX."),
    calib_data: Optional[Path] = typer.Option(
        None, "--calib-data", exists=True, file_okay=False,
        help="With --calibrator: a folder holding the bundle's recorded calibration images (default: the folder "
             "the bundle names), or data to choose --num-calib images from."),
    num_calib: int = typer.Option(200, "--num-calib", min=1, help="With --calib-data: how many images."),
) -> None:
    """Build a TensorRT engine on this device and add it to the bundle (the new default artifact)."""
    check_scope(ctx, COMPILE_SCOPE)
    from ..converters.tensorrt import compile_bundle

    frames: list = []
    if calibrator is not None:
        frames = _calibration_frames(bundle, calib_data, num_calib)
    artifact = compile_bundle(bundle, precision, workspace_mb, dla, calibrator=calibrator, calib_frames=frames,
                              log=typer.echo)
    typer.echo(f"built {bundle / artifact.file} ({precision}); the bundle's default artifact is now this engine")


def _calibration_frames(bundle: Path, calib_data: Optional[Path], num_calib: int) -> list:
    """The same calibration set as the Q/DQ export: the bundle's recorded images, found where the bundle
    records them or under `calib_data`; a fresh choice from `calib_data` when it does not hold them."""
    from ..calibration.frames import choose_calibration, frames_from_record, holds_record
    from ..data.readers import open_dataset
    from ..runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    spec = manifest.artifact("fp32").input
    size = (spec.height, spec.width)
    if calib_data is None or holds_record(calib_data, manifest.calibration):
        return frames_from_record(manifest.calibration, size, calib_data)
    return choose_calibration(open_dataset(calib_data, "train"), num_calib, manifest.classes, size)[1]
