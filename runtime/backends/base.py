"""The one runner interface: a model file and its spec in, labels out; and the factories that make runners.

Modelled on Polygraphy's runners: a runner is built from a model file and its `ModelSpec` and knows
nothing about bundles; `activate()` loads the model (heavy imports happen there), `infer()` runs one
prepared batch, `deactivate()` frees resources; a runner is a context manager. `load_runner` (a
bundle's artifact) and `runner_for` (an artifact whose manifest is already read) are thin factories.
"""
from __future__ import annotations

import abc
import importlib
import os
from pathlib import Path

import numpy as np

from ..errors import EdgesegError
from ..manifest import Artifact, ModelSpec, read_manifest, resolve_bundle
from ..preprocess import labels_from_output, resize_labels, to_model_input

#: backend name -> "module:Class", imported only when asked for.
BACKENDS = {
    "litert": "edgeseg.runtime.backends.litert:LiteRTRunner",
    "onnxruntime": "edgeseg.runtime.backends.onnxrt:OnnxRuntimeRunner",
    "tensorrt": "edgeseg.runtime.backends.tensorrt:TensorRTRunner",
}


class Runner(abc.ABC):
    """Runs one model. Frames in are RGB uint8 HxWx3; labels out are uint8 HxW."""

    #: The backend's name, as a manifest's artifact names it.
    backend = ""

    def __init__(self, model_path: str | os.PathLike[str], spec: ModelSpec, threads: int | None = None):
        self.model_path = Path(model_path)
        self.spec = spec
        self.threads = threads
        self.is_active = False

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.spec.precision}"

    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None:
        """Load the model and allocate what inference needs."""

    def _deactivate(self) -> None:
        """Release what `_activate` allocated."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one prepared input batch (from `preprocess`) and return the raw output."""

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return to_model_input(rgb, self.spec.input)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Raw output to a uint8 label map at the model's resolution."""
        return labels_from_output(output, self.spec.output.kind, self.spec.output.layout)

    def predict(self, rgb: np.ndarray, full_size: bool = True) -> np.ndarray:
        """Labels for one RGB frame, at the frame's size (or the model's with `full_size=False`)."""
        labels = self.postprocess(self.infer(self.preprocess(rgb)))
        if full_size:
            labels = resize_labels(labels, rgb.shape[0], rgb.shape[1])
        return labels


def open_runner(backend: str, model_path: str | os.PathLike[str], spec: ModelSpec,
                threads: int | None = None) -> Runner:
    """The `backend` runner (see BACKENDS) for a model file; the backend is imported here."""
    target = BACKENDS.get(backend)
    if target is None:
        raise EdgesegError(f"{model_path}: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model_path, spec, threads=threads)


def runner_for(bundle: Path, art: Artifact, threads: int | None = None) -> Runner:
    """The runner for an artifact of a bundle whose manifest is already read (e.g. a bundle being written)."""
    return open_runner(art.backend, Path(bundle) / art.file, art.spec, threads)


def load_runner(bundle: str | os.PathLike[str], artifact: str | None = None, threads: int | None = None) -> Runner:
    """The runner for one artifact of a bundle (a path or a shipped bundle's name)."""
    folder = resolve_bundle(bundle)
    return runner_for(folder, read_manifest(folder).artifact(artifact), threads)
