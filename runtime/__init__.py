"""edgeseg runtime: inference backends, stream sources, sinks and the real-time pipeline.

Nothing here imports TensorFlow or the training code; TensorRT and pycuda are imported lazily.
The public names below load their modules (and OpenCV) on first use, so importing this is cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .segmenter import Segmenter
    from .sinks import open_sink
    from .sources import open_source

_EXPORTS = {
    "Segmenter": "segmenter",
    "open_source": "sources",
    "open_sink": "sinks",
    "Pipeline": "pipeline",
}
__all__ = ["Pipeline", "Segmenter", "open_sink", "open_source"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
