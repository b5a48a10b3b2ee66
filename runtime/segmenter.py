"""The Python API: segment BGR frames (as OpenCV gives them) with a deploy bundle.

    seg = Segmenter("bundle_dir")
    for frame in open_source("video.mp4"):
        labels = seg.segment(frame.image)       # HxW uint8 at the frame's size
        vis = seg.overlay(frame.image, labels)
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .backends.base import runner_for
from .manifest import read_manifest, resolve_bundle
from .preprocess import resize_labels, resize_rgb
from .render import Renderer

if TYPE_CHECKING:
    from typing_extensions import Self


class Segmenter:
    """One artifact of a bundle behind a BGR-in, labels-out interface.

    The manifest is read (and checked) at once; the model loads on `activate()` or the first frame.
    `preprocess`, `infer` and `postprocess` are the stages `segment` chains, for pipelines that
    run them in separate threads.
    """

    def __init__(self, bundle: str | os.PathLike[str], *, artifact: str | None = None,
                 threads: int | None = None, alpha: float = 0.5):
        folder = resolve_bundle(bundle)
        self.manifest = read_manifest(folder)
        self.runner = runner_for(folder, self.manifest.artifact(artifact), threads=threads)
        self.renderer = Renderer(self.classes, self.manifest.palette, alpha=alpha, legend=False)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(class name, RGB colour) pairs from the manifest."""
        return [(name, (r, g, b)) for name, (r, g, b) in zip(self.manifest.classes, self.manifest.palette)]

    def activate(self) -> Self:
        """Load the model now (otherwise the first frame does)."""
        self.runner.activate()
        return self

    def warmup(self, runs: int = 2) -> Self:
        """Load the model and run it `runs` times on a blank frame, so that the first frames of a live
        source are not slow (and dropped)."""
        spec = self.runner.spec.input
        blank = np.zeros((spec.height, spec.width, 3), np.uint8)
        for _ in range(runs):
            self.segment(blank)
        return self

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """A BGR frame to the model's input batch (resized first, so the colour swap is cheap)."""
        spec = self.runner.spec.input
        small = resize_rgb(image, spec.height, spec.width)
        return self.runner.preprocess(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.activate().infer(batch)

    def postprocess(self, output: np.ndarray, height: int, width: int) -> np.ndarray:
        """Raw model output to a label map of `height` x `width` (nearest neighbour)."""
        return resize_labels(self.runner.postprocess(output), height, width)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Labels (uint8, class indices of the manifest) for a BGR frame, at the frame's size."""
        return self.postprocess(self.infer(self.preprocess(image)), image.shape[0], image.shape[1])

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Labels in the manifest's palette, as a BGR image."""
        return self.renderer.colorize(labels)

    def overlay(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The BGR frame blended with its coloured labels."""
        return self.renderer.overlay(image, labels)
