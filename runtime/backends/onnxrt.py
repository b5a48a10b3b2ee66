"""onnxruntime backend: an fp32 or Q/DQ INT8 ONNX artifact on the CPU (CPUExecutionProvider)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, EdgesegError
from .base import Runner


def ort_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """A CPU `onnxruntime.InferenceSession` for a model file (or serialized model) on `threads`
    intra-op threads (None: onnxruntime's default)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        where = "ONNX model" if isinstance(model, bytes) else model
        raise EdgesegError(f"{where}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None


class OnnxRuntimeRunner(Runner):
    """Runs a .onnx artifact with onnxruntime's CPU execution provider on `threads` threads."""

    backend = "onnxruntime"

    def _activate(self) -> None:
        self._session = ort_session(self.model_path, self.threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def _deactivate(self) -> None:
        del self._session

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]
