"""TensorRT engines from edgeseg ONNX files, with the TensorRT Python API (run on the target device).

One code path, keyed on TensorRT's major version:
* 8.5/8.6: explicit-batch networks (`EXPLICIT_BATCH` flag); 10.x: `create_network(0)`.
  Precision by builder flags: INT8 (plus FP16 for the float layers around the Q/DQ islands) or FP16.
* 11.x: strongly typed networks, no precision flags: INT8 comes from the Q/DQ ONNX as it is, FP16
  from an FP16 copy of the fp32 ONNX (`convert_onnx_fp16`), written beside the engine.
Implicit INT8 calibration (a calibrator over frames, for an fp32 ONNX) exists up to 10.x only
(deprecated in 10.1; the Q/DQ ONNX is the supported INT8 path).
Engines are written atomically with a JSON sidecar: TensorRT version, GPU, compute capability,
precision and the ONNX sha256; the runtime refuses an engine built for another version or GPU.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable  # typing's Callable: `Log` is evaluated on 3.8

import numpy as np

from edgeseg.choices import TRT_CALIBRATORS, TRT_PRECISIONS
from edgeseg.rundir import write_atomic
from edgeseg.runtime.backends.tensorrt import (
    device_target,
    dims,
    require_tensorrt,
    sidecar_path,
    trt_logger,
    trt_major,
)
from edgeseg.runtime.cuda_buffers import CudaStream
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import (
    Artifact,
    InputSpec,
    read_manifest,
    sha256_file,
    staging_dir,
    write_bundle,
)
from edgeseg.runtime.preprocess import model_batches

if TYPE_CHECKING:
    import tensorrt as trt

PRECISIONS = TRT_PRECISIONS
CALIBRATORS = TRT_CALIBRATORS
Log = Callable[[str], None]


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    precision: str = "int8",
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    calibrator: str | None = None,
    calib_frames: Sequence[np.ndarray] = (),
    calib_cache: str | os.PathLike[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Build and write a TensorRT engine; returns what its JSON sidecar records.

    `precision` "int8" needs a Q/DQ ONNX, or an fp32 one with `calibrator` ("entropy"/"minmax",
    TensorRT < 11) and `calib_frames` (RGB uint8 at model size), the cache at `calib_cache`.
    `dla_core`: run on that DLA core, layers DLA lacks falling back to the GPU. `timing_cache`
    defaults to `<engine>.timing.cache` beside the engine and is reused by later builds.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if calibrator is not None and calibrator not in CALIBRATORS:
        raise ValueError(f"calibrator must be one of {CALIBRATORS} or None, not {calibrator!r}")
    version = require_tensorrt()
    import tensorrt as trt

    major = trt_major(version)
    onnx_path, engine = Path(onnx_path), Path(engine_path)
    if calibrator is not None and (major >= 11 or precision != "int8" or not calib_frames):
        raise EdgesegError(
            "implicit INT8 calibration was removed in TensorRT 11: build from the Q/DQ ONNX instead"
            if major >= 11 else "a calibrator needs precision 'int8' and calibration frames")
    cuda = CudaStream()
    try:
        source = onnx_path
        if major >= 11 and precision == "fp16":
            from .onnx import convert_onnx_fp16

            source = convert_onnx_fp16(onnx_path, engine.with_name(f"{engine.stem}.fp16.onnx"))
        builder = trt.Builder(trt_logger())
        network, _parser = _parse(builder, major, source)  # the parser owns weights until the build
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        _set_precision(major, builder, network, config, precision, calibrator)
        if calibrator is not None:
            config.int8_calibrator = _calibrator(calibrator, calib_frames, network, cuda,
                                                 Path(calib_cache or engine.with_suffix(".calib.cache")))
        if dla_core is not None:
            _use_dla(builder, config, dla_core)
        cache_path = timing_cache_path(engine, timing_cache)
        cache = _timing_cache(config, cache_path)
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(log)
        log(f"building a TensorRT {version} {precision} engine from {onnx_path.name} (this takes minutes)")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EdgesegError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
        write_atomic(engine, bytes(plan))
        write_atomic(cache_path, bytes(cache.serialize()))
        built = {
            **device_target(version, cuda),
            "precision": precision,
            "dla_core": dla_core,
            "onnx": onnx_path.name,
            "onnx_sha256": sha256_file(onnx_path),
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_atomic(sidecar_path(engine), (json.dumps(built, indent=2) + "\n").encode())
        return built
    finally:
        cuda.close()


def _parse(builder: trt.Builder, major: int,
           onnx_path: Path) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The network parsed from `onnx_path` (explicit batch flag before TensorRT 10, the only mode since)."""
    import tensorrt as trt

    explicit_batch = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit_batch if major < 10 else 0)
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgesegError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    return network, parser


def _use_dla(builder: trt.Builder, config: trt.IBuilderConfig, core: int) -> None:
    """Run on DLA core `core`, layers the DLA lacks falling back to the GPU."""
    import tensorrt as trt

    if not 0 <= core < builder.num_DLA_cores:
        raise EdgesegError(f"no DLA core {core} on this device (it has {builder.num_DLA_cores})")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def timing_cache_path(engine: Path, timing_cache: str | os.PathLike[str] | None = None) -> Path:
    """`timing_cache`, or by default `<engine>.timing.cache` beside the engine (Python and trtexec builds share it)."""
    return Path(timing_cache or engine.with_suffix(".timing.cache"))


def _timing_cache(config: trt.IBuilderConfig, path: Path) -> trt.ITimingCache:
    """The timing cache at `path` set on `config`; an empty one if absent or from another GPU/version."""
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _set_precision(major: int, builder: trt.Builder, network: trt.INetworkDefinition,
                   config: trt.IBuilderConfig, precision: str, calibrator: str | None) -> None:
    """Builder flags for `precision` (none on TensorRT 11, where the ONNX's types decide)."""
    import tensorrt as trt

    has_qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
    if precision == "int8" and not has_qdq and calibrator is None:
        raise EdgesegError("INT8 needs a Q/DQ ONNX (`edgeseg export --target jetson`) or a calibrator")
    if major >= 11:
        return
    if precision in ("int8", "fp16") and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def _progress_monitor(log: Log) -> trt.IProgressMonitor:
    """An IProgressMonitor (TensorRT >= 10) logging each top-level build phase."""
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                log(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Progress()


def _calibrator(kind: str, frames: Sequence[np.ndarray], network: trt.INetworkDefinition,
                cuda: CudaStream, cache: Path) -> trt.IInt8Calibrator:
    """An entropy or minmax INT8 calibrator over `frames`, reading/writing the cache at `cache`."""
    import tensorrt as trt

    shape = dims(network.get_input(0).shape)
    layout = "NCHW" if shape[1] == 3 else "NHWC"
    height, width = shape[2:4] if layout == "NCHW" else shape[1:3]
    spec = InputSpec(height=height, width=width, layout=layout, dtype="float32", batch=shape[0])
    base = trt.IInt8EntropyCalibrator2 if kind == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.batches = model_batches(frames, spec)
            self.buffer = cuda.alloc(shape, np.float32)

        def get_batch_size(self) -> int:
            return spec.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            np.copyto(self.buffer.host, batch)
            cuda.to_device(self.buffer)
            cuda.synchronize()
            return [self.buffer.device]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            write_atomic(cache, bytes(data))

    return Calibrator()


def compile_bundle(
    bundle_dir: str | os.PathLike[str],
    precision: str = "int8",
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    make_default: bool = True,
    calibrator: str | None = None,
    calib_frames: Sequence[np.ndarray] = (),
    log: Log = print,
) -> Artifact:
    """Build a TensorRT engine from a bundle's ONNX artifact and add it to the bundle.

    INT8 builds from the Q/DQ ONNX, FP16/FP32 from the fp32 one; with `calibrator` (TensorRT < 11),
    INT8 builds from the fp32 ONNX by implicit calibration over `calib_frames`, its cache kept in the
    bundle as `tensorrt-<calibrator>.calib.cache`. The engine, its sidecar and
    timing cache go into a copy of the bundle that replaces it with a rewritten manifest (atomic).
    The new artifact is named `tensorrt-<precision>[-dla<N>]` and becomes the default unless not
    `make_default`.
    """
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    source = _onnx_artifact(bundle, manifest.artifacts, "fp32" if calibrator else precision)
    name = f"tensorrt-{precision}" + (f"-{calibrator}" if calibrator else "") + (
        f"-dla{dla_core}" if dla_core is not None else "")
    staging = staging_dir(bundle)
    try:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        engine = f"{name}.engine"
        built = build_engine(bundle / source.file, staging / engine, precision, workspace_mb, dla_core,
                             calibrator=calibrator, calib_frames=calib_frames,
                             calib_cache=staging / f"tensorrt-{calibrator}.calib.cache" if calibrator else None,
                             log=log)
        artifact = Artifact(file=engine, backend="tensorrt", precision=precision, input=source.input,
                            output=source.output, extra={"source": source.file, **built})
        manifest.artifacts[name] = artifact
        if make_default:
            manifest.default = name
        write_bundle(staging, bundle, manifest, force=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return artifact


def _onnx_artifact(bundle: Path, artifacts: dict[str, Artifact], precision: str) -> Artifact:
    wanted = "int8" if precision == "int8" else "fp32"
    found = [a for a in artifacts.values() if a.file.endswith(".onnx") and a.precision == wanted]
    if not found:
        raise EdgesegError(f"{bundle}: no {wanted} ONNX artifact to build a {precision} engine from "
                           "(export it with `edgeseg export RUN --target jetson`)")
    return found[0]


def trtexec_command(
    onnx: str | os.PathLike[str],
    engine: str | os.PathLike[str],
    precision: str = "int8",
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
) -> str:
    """The equivalent `trtexec` line, for machines where the TensorRT Python API is missing.

    Flags as TensorRT 8.5-10.x take them; TensorRT 11's trtexec drops --int8/--fp16 (the Q/DQ or
    FP16 ONNX decides), so leave them out there.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", f"--memPoolSize=workspace:{workspace_mb}",
            f"--timingCacheFile={timing_cache_path(Path(engine), timing_cache)}"]
    args += {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"], "fp32": []}[precision]
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    return shlex.join(args)
