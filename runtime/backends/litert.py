"""LiteRT (TFLite) backend: `ai_edge_litert`, else `tflite_runtime`, else `tensorflow.lite`."""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, EdgesegError
from .base import Runner

_INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def interpreter_class() -> Any:
    """The first TFLite interpreter class that imports; TensorFlow only as a last resort."""
    for name in _INTERPRETER_MODULES:
        try:
            return importlib.import_module(name).Interpreter
        except ImportError:
            continue
    raise BackendUnavailable("no TFLite interpreter installed: pip install 'edgeseg[cpu]' (ai-edge-litert)")


class LiteRTRunner(Runner):
    """Runs a .tflite artifact with XNNPACK on `threads` CPU threads."""

    backend = "litert"

    def _activate(self) -> None:
        cls = interpreter_class()
        try:
            self._interp = cls(model_path=str(self.model_path), num_threads=self.threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgesegError(f"{self.model_path}: cannot load TFLite model ({exc})") from None
        self._input = self._interp.get_input_details()[0]
        self._output = self._interp.get_output_details()[0]

    def _deactivate(self) -> None:
        del self._interp

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._interp.set_tensor(self._input["index"], batch)
        self._interp.invoke()
        return self._interp.get_tensor(self._output["index"])
