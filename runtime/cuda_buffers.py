"""Page-locked host buffers, device buffers and one CUDA stream: pycuda, else cuda-python.

Both are imported lazily, only here. With cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` in
releases before 12.6) the runtime API is used, i.e. the device's primary context that TensorRT also
uses; with pycuda the primary context is retained and made current around every copy and wait, as
the driver API binds a context per thread and the pipeline infers in a thread of its own.

Jetson (integrated GPU): host and device memory are the same DRAM, so the two copies per frame are
DRAM-to-DRAM, a few hundred microseconds for a 1024x512 float input. Mapped pinned memory
(`cudaHostAlloc(cudaHostAllocMapped)` + `cudaHostGetDevicePointer`, "zero-copy") would save them,
but per NVIDIA's CUDA-for-Tegra note the iGPU does not cache pinned memory (nor does the CPU below
compute capability 7.2, i.e. before Xavier's I/O coherency), so every kernel touching the input or
output would read or write it uncached; for a conv net that reads its input more than once that
can cost more than the copy. The explicit copies are kept (the same code on dGPU and iGPU);
zero-copy is worth a measurement on the target before switching.
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BackendUnavailable, EdgesegError


@dataclass
class HostDeviceBuffer:
    """A page-locked host array and a device allocation of the same size."""

    host: np.ndarray
    device: int


class CudaStream:
    """One CUDA stream on one device, and the host/device buffer pairs it copies between."""

    def __init__(self, device: int = 0):
        api: type[_PyCuda | _CudaRuntime]
        try:
            import pycuda.driver  # noqa: F401

            api = _PyCuda
        except ImportError:
            api = _CudaRuntime
        self._api = api(device)

    @property
    def handle(self) -> int:
        """The stream as an integer handle (what `execute_async_v3` takes)."""
        return self._api.stream_handle

    @property
    def device_name(self) -> str:
        return self._api.device_name

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self._api.compute_capability

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> HostDeviceBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        host = self._api.malloc_host(nbytes).view(dtype).reshape(shape)
        return HostDeviceBuffer(host, self._api.malloc(nbytes))

    def to_device(self, buf: HostDeviceBuffer) -> None:
        """Queue the host -> device copy on the stream."""
        self._api.copy_htod(buf.device, buf.host)

    def to_host(self, buf: HostDeviceBuffer) -> None:
        """Queue the device -> host copy on the stream."""
        self._api.copy_dtoh(buf.host, buf.device)

    def synchronize(self) -> None:
        self._api.synchronize()

    def close(self) -> None:
        """Free every buffer and the stream; the object and its buffers are unusable afterwards."""
        self._api.close()


def _cuda_error(call: str, detail: str) -> EdgesegError:
    return BackendUnavailable(f"CUDA is not usable ({call}: {detail}); "
                        "the TensorRT backend needs an NVIDIA GPU and driver")


class _CudaRuntime:
    """cuda-python's runtime API; every call returns (error, *values)."""

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # cuda-python < 12.6
            except ImportError:
                raise BackendUnavailable("no CUDA Python bindings: pip install pycuda (or cuda-python)") from None
        self._rt = cudart
        self._owned: list[tuple[Any, int]] = []  # (free function, pointer)
        self._stream: Any = None  # a cudaStream_t once created
        self._call("cudaSetDevice", device)
        props = self._call("cudaGetDeviceProperties", device)
        self.device_name = props.name.decode(errors="replace").rstrip("\0")
        self.compute_capability = (int(props.major), int(props.minor))
        self._stream = self._call("cudaStreamCreate")

    def _call(self, name: str, *args: Any) -> Any:
        err, *values = getattr(self._rt, name)(*args)
        if err != self._rt.cudaError_t.cudaSuccess:
            _, text = self._rt.cudaGetErrorString(err)
            raise _cuda_error(name, f"{err.name}, {text.decode()}")
        return values[0] if values else None

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def malloc_host(self, nbytes: int) -> np.ndarray:
        ptr = int(self._call("cudaMallocHost", nbytes))
        self._owned.append((self._rt.cudaFreeHost, ptr))
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._call("cudaMalloc", nbytes))
        self._owned.append((self._rt.cudaFree, ptr))
        return ptr

    def copy_htod(self, device: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", device, host.ctypes.data, host.nbytes, kind, self._stream)

    def copy_dtoh(self, host: np.ndarray, device: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", host.ctypes.data, device, host.nbytes, kind, self._stream)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        for free, ptr in reversed(self._owned):
            free(ptr)
        self._owned.clear()
        if self._stream is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None


class _PyCuda:
    """pycuda's driver API on the device's primary context."""

    def __init__(self, device: int):
        import pycuda.driver as cuda

        self._cuda = cuda
        self._owned: list[Any] = []  # allocations with a .free()
        try:
            cuda.init()
            dev = cuda.Device(device)
            self._context = dev.retain_primary_context()
            self._context.push()
        except cuda.Error as exc:
            raise _cuda_error("cuInit", str(exc).splitlines()[0]) from None
        major, minor = dev.compute_capability()
        self.device_name: str = dev.name()
        self.compute_capability = (int(major), int(minor))
        self._stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def malloc_host(self, nbytes: int) -> np.ndarray:
        host = self._cuda.pagelocked_empty(nbytes, np.uint8)
        self._owned.append(host.base)
        return host

    def malloc(self, nbytes: int) -> int:
        mem = self._cuda.mem_alloc(nbytes)
        self._owned.append(mem)
        return int(mem)

    @contextmanager
    def _current(self) -> Iterator[None]:
        """The primary context current on the calling thread, whichever thread activated the runner."""
        self._context.push()
        try:
            yield
        finally:
            self._context.pop()

    def copy_htod(self, device: int, host: np.ndarray) -> None:
        with self._current():
            self._cuda.memcpy_htod_async(device, host, self._stream)

    def copy_dtoh(self, host: np.ndarray, device: int) -> None:
        with self._current():
            self._cuda.memcpy_dtoh_async(host, device, self._stream)

    def synchronize(self) -> None:
        with self._current():
            self._stream.synchronize()

    def close(self) -> None:
        if self._context is None:
            return
        for mem in reversed(self._owned):
            mem.free()
        self._owned.clear()
        self._context.pop()
        self._context = None
