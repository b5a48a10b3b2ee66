"""The one backend interface: load a bundle artifact, preprocess a frame, infer, return labels.

Modelled on Polygraphy's runners: `activate()` loads the model (heavy imports happen there),
`infer()` runs one prepared batch, `deactivate()` frees resources; a runner is a context manager.
"""
from __future__ import annotations

import abc
import importlib
from pathlib import Path

import numpy as np

from ..errors import EdgesegError
from ..manifest import Artifact, Manifest, read_manifest, resolve_bundle
from ..preprocess import labels_from_output, resize_labels, to_model_input
from ..stats import time_calls

#: backend name -> "module:Class", imported only when asked for.
BACKENDS = {
    "litert": "edgeseg.runtime.backends.litert:LiteRTRunner",
    "onnxruntime": "edgeseg.runtime.backends.onnxrt:OnnxRuntimeRunner",
    "tensorrt": "edgeseg.runtime.backends.tensorrt:TensorRTRunner",
}


class Runner(abc.ABC):
    """Runs one artifact of a bundle. Frames in are RGB uint8 HxWx3; labels out are uint8 HxW."""

    def __init__(self, bundle: Path, manifest: Manifest, artifact: Artifact, threads: int | None = None):
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.artifact = artifact
        self.threads = threads
        self.is_active = False

    @property
    def model_path(self) -> Path:
        return self.bundle / self.artifact.file

    @property
    def name(self) -> str:
        return f"{self.artifact.backend}-{self.artifact.precision}"

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
        return to_model_input(rgb, self.artifact.input)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Raw output to a uint8 label map at the model's resolution."""
        return labels_from_output(output, self.artifact.output.kind, self.artifact.output.layout)

    def predict(self, rgb: np.ndarray, full_size: bool = True) -> np.ndarray:
        """Labels for one RGB frame, at the frame's size (or the model's with `full_size=False`)."""
        labels = self.postprocess(self.infer(self.preprocess(rgb)))
        if full_size:
            labels = resize_labels(labels, rgb.shape[0], rgb.shape[1])
        return labels

    def time_inference(self, warmup: int = 10, runs: int = 100) -> np.ndarray:
        """Model-only latency in milliseconds for `runs` calls after `warmup` calls."""
        spec = self.artifact.input
        shape = (spec.batch, 3, spec.height, spec.width) if spec.layout == "NCHW" else (
            spec.batch, spec.height, spec.width, 3)
        batch = np.random.default_rng(0).integers(0, 256, shape).astype(spec.dtype)
        return time_calls(lambda: self.infer(batch), warmup, runs)


def load_runner(bundle: str | Path, artifact: str | None = None, threads: int | None = None) -> Runner:
    """The runner for one artifact of a bundle (a path or a shipped bundle's name)."""
    bundle = resolve_bundle(bundle)
    manifest = read_manifest(bundle)
    return runner_for(bundle, manifest, manifest.artifact(artifact), threads)


def runner_for(bundle: Path, manifest: Manifest, art: Artifact, threads: int | None = None) -> Runner:
    """The runner for an artifact whose manifest is already read (e.g. a bundle being written)."""
    target = BACKENDS.get(art.backend)
    if target is None:
        raise EdgesegError(f"{bundle}: unknown backend {art.backend!r} (known: {', '.join(BACKENDS)})")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(bundle, manifest, art, threads=threads)
