"""Drawing label maps on BGR frames: overlay, mask or side by side; class legend; status text."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

MODES = ("overlay", "mask", "side")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """A 256x3 BGR lookup table from an RGB palette; labels without a colour (ignore) are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)[:, ::-1]
    return lut


def draw_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5) -> None:
    """White text with a dark outline, readable on any background (in place)."""
    cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


class Renderer:
    """Turns a BGR frame and its label map (same size) into the picture a sink shows."""

    def __init__(self, classes: Sequence[str], palette: Sequence[Sequence[int]], mode: str = "overlay",
                 alpha: float = 0.5, legend: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.classes = list(classes)
        self.lut = palette_lut(palette)
        self.mode = mode
        self.alpha = float(alpha)
        self.legend = legend
        self._legend_cache: dict[int, np.ndarray] = {}

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """The label map in palette colours (BGR)."""
        return cv2.LUT(cv2.merge((labels, labels, labels)), self.lut[:, None, :])

    def overlay(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The frame blended with its colourised labels (`alpha` = weight of the colours)."""
        return cv2.addWeighted(image, 1.0 - self.alpha, self.colorize(labels), self.alpha, 0.0)

    def render(self, image: np.ndarray, labels: np.ndarray, text: str | None = None) -> np.ndarray:
        """The picture for one frame in this renderer's mode, with legend and `text` if given."""
        if self.mode == "overlay":
            out = self.overlay(image, labels)
        elif self.mode == "mask":
            out = self.colorize(labels)
        else:
            out = np.hstack((image, self.colorize(labels)))
        if self.legend:
            self._draw_legend(out)
        if text:
            draw_text(out, text, (8, 20))
        return out

    def _legend_image(self, height: int) -> np.ndarray:
        """Swatches and names in a dark box, sized to fit a frame `height` pixels high."""
        if height not in self._legend_cache:
            row = max(10, min(16, (height - 8) // max(1, len(self.classes))))
            scale = row / 30.0
            width = 16 + row + max(cv2.getTextSize(c, _FONT, scale, 1)[0][0] for c in self.classes)
            box = np.full((row * len(self.classes) + 8, width, 3), 32, np.uint8)
            for i, name in enumerate(self.classes):
                top = 4 + i * row
                box[top + 2: top + row - 2, 6: 6 + row - 4] = self.lut[i]
                cv2.putText(box, name, (10 + row, top + row - 5), _FONT, scale, (255, 255, 255), 1,
                            cv2.LINE_AA)
            self._legend_cache[height] = box
        return self._legend_cache[height]

    def _draw_legend(self, out: np.ndarray) -> None:
        box = self._legend_image(out.shape[0])
        h, w = min(box.shape[0], out.shape[0]), min(box.shape[1], out.shape[1])
        region = out[out.shape[0] - h:, out.shape[1] - w:]
        region[:] = cv2.addWeighted(box[:h, :w], 0.75, region, 0.25, 0.0)
