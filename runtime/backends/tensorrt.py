"""TensorRT backend: a serialized engine run with the named-tensor API on one CUDA stream.

TensorRT and the CUDA bindings are imported only when a runner activates. An engine only loads
on the TensorRT version and GPU it was built for; the JSON sidecar written beside it at build
time says which, so a mismatch is reported before TensorRT tries.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..cuda_buffers import CudaStream, HostDeviceBuffer
from ..errors import BackendUnavailable, EdgesegError
from .base import Runner

if TYPE_CHECKING:
    import tensorrt as trt

WARMUP_RUNS = 3


def require_tensorrt() -> str:
    """TensorRT's version; a one-line EdgesegError if it is not installed.

    Type stubs alone (tensorrt-stubs) import as an empty namespace package: that counts as absent.
    """
    try:
        import tensorrt
    except ImportError:
        tensorrt = None  # type: ignore[assignment]
    version = getattr(tensorrt, "__version__", None)
    if not isinstance(version, str) or not hasattr(tensorrt, "Builder"):
        raise BackendUnavailable("TensorRT is not installed (JetPack ships it; elsewhere: pip install tensorrt)")
    return version


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


@functools.lru_cache(maxsize=None)
def trt_logger() -> trt.ILogger:
    """The process's one TensorRT logger (warnings and errors to stderr), shared by builder and runtime."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple of ints."""
    return tuple(shape[i] for i in range(len(shape)))


def sidecar_path(engine: Path) -> Path:
    """`model.engine` -> `model.engine.json`: what the engine was built with and for."""
    return engine.with_name(engine.name + ".json")


def device_target(version: str, cuda: CudaStream) -> dict[str, str]:
    """What an engine is tied to: TensorRT version, GPU name and compute capability."""
    major, minor = cuda.compute_capability
    return {"tensorrt": version, "gpu": cuda.device_name, "compute_capability": f"{major}.{minor}"}


def check_engine_target(engine: Path, here: dict[str, str], bundle: Path) -> None:
    """EdgesegError if the sidecar says `engine` was built for another target than `here`."""
    path = sidecar_path(engine)
    if not path.is_file():
        return
    try:
        built = json.loads(path.read_text())
        target = {key: built[key] for key in here}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgesegError(f"{path}: unreadable engine sidecar ({exc})") from None
    if target != here:
        raise BackendUnavailable(
            f"{engine}: built with TensorRT {target['tensorrt']} for {target['gpu']} "
            f"(sm {target['compute_capability']}), this is TensorRT {here['tensorrt']} on {here['gpu']} "
            f"(sm {here['compute_capability']}): rebuild with `edgeseg compile {bundle}`")


class TensorRTRunner(Runner):
    """Runs a TensorRT engine: pinned host buffers, device buffers, async copies on one stream.

    Error messages name the engine's folder as the bundle to rebuild it in."""

    backend = "tensorrt"

    def _activate(self) -> None:
        self._cuda = CudaStream()
        try:
            self._load()
        except BaseException:
            self._cuda.close()
            raise

    def _load(self) -> None:
        version = require_tensorrt()
        import tensorrt as trt

        check_engine_target(self.model_path, device_target(version, self._cuda), self.model_path.parent)
        self._runtime = trt.Runtime(trt_logger())
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            raise EdgesegError(f"{self.model_path}: TensorRT cannot load this engine (another TensorRT "
                               f"version or GPU?): rebuild with `edgeseg compile {self.model_path.parent}`")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._inputs: list[HostDeviceBuffer] = []
        self._outputs: list[HostDeviceBuffer] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            buf = self._cuda.alloc(dims(engine.get_tensor_shape(name)), dtype)
            self._context.set_tensor_address(name, buf.device)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append(buf)
        for _ in range(WARMUP_RUNS):
            self.infer(np.zeros_like(self._inputs[0].host))

    def _deactivate(self) -> None:
        del self._context, self._engine, self._runtime
        self._cuda.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        inp, out = self._inputs[0], self._outputs[0]
        if batch.shape != inp.host.shape:
            raise EdgesegError(f"{self.model_path}: input {batch.shape}, the engine takes {inp.host.shape}")
        np.copyto(inp.host, batch, casting="same_kind")
        self._cuda.to_device(inp)
        if not self._context.execute_async_v3(self._cuda.handle):
            raise EdgesegError(f"{self.model_path}: TensorRT inference failed (see the TensorRT log above)")
        self._cuda.to_host(out)
        self._cuda.synchronize()
        return out.host.copy()

