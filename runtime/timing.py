"""Model-only latency: one way to time a runner and one schema to report any latency in.

Every latency edgeseg reports (bench rows, a build's report.json, demo stats) is a `Latency`:
p50_ms, p90_ms, p99_ms, mean_ms and fps (1000 / p50_ms, the rate one call at a time sustains).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .backends.base import Runner

#: Untimed runs first, then timed runs: the defaults of every model-only timing.
WARMUP = 20
RUNS = 200


@dataclass
class Latency:
    """Percentiles and mean of a series of times in milliseconds, and the rate at the median."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    fps: float

    @classmethod
    def of(cls, times_ms: Any) -> Latency:
        """The summary of a non-empty sequence of times in ms."""
        arr = np.asarray(times_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, (50, 90, 99))
        return cls(round(float(p50), 3), round(float(p90), 3), round(float(p99), 3), round(float(arr.mean()), 3),
                   round(1000.0 / max(float(p50), 1e-9), 1))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def latency_dict(times_ms: Any) -> dict[str, float]:
    """`Latency.of(times_ms)` as a dict; empty when there are no times."""
    return Latency.of(times_ms).to_dict() if len(times_ms) else {}


def time_calls(call: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    """Milliseconds of each of `runs` calls of `call`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        times[i] = (time.perf_counter() - start) * 1000.0
    return times


def time_runner(runner: Runner, warmup: int = WARMUP, runs: int = RUNS) -> Latency:
    """Model-only latency of an active `runner`: `runs` inferences of one prepared random frame after `warmup`."""
    spec = runner.spec.input
    frame = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    batch = runner.preprocess(frame)
    return Latency.of(time_calls(lambda: runner.infer(batch), warmup, runs))
