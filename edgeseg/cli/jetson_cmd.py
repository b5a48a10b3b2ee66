"""`edgeseg check` (TensorRT conformance of a bundle's ONNX) and `edgeseg compile` (engine on the device)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..runtime.errors import EdgesegError


def check(bundle: Path = typer.Argument(..., help="Bundle folder with ONNX artifacts.")) -> None:
    """Check every ONNX artifact against TensorRT's rules: ops, static shapes, Q/DQ zero points, scales, axes."""
    from ..converters.trt_conformance import check_bundle

    violations = check_bundle(bundle)
    for v in violations:
        typer.echo(str(v))
    if violations:
        raise EdgesegError(f"{bundle}: {len(violations)} TensorRT conformance violation(s)")
    typer.echo(f"{bundle}: every ONNX artifact is TensorRT-conformant")


def compile_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder exported with --target jetson."),
    precision: str = typer.Option("int8", "--precision", help="int8 (from the Q/DQ ONNX) | fp16 | fp32."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="Builder workspace limit."),
    dla: Optional[int] = typer.Option(None, "--dla", help="DLA core (Xavier, AGX Orin); GPU fallback."),
) -> None:
    """Build a TensorRT engine on this device and add it to the bundle (the new default artifact)."""
    from ..converters.tensorrt import compile_bundle

    artifact = compile_bundle(bundle, precision, workspace_mb, dla, log=typer.echo)
    typer.echo(f"built {bundle / artifact.file} ({precision}); the bundle's default artifact is now this engine")
