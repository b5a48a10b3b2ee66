"""Thread-safe run statistics: frame counters, per-stage times and capture-to-display latency.

Times are in milliseconds; each stage's and the latency's are reported as a `timing.Latency`. They cover
the whole run (its last `history` frames); the live view (`live()`, for the web page and the on-frame
text) covers the last `window` frames.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from itertools import islice
from typing import Any

import numpy as np

from .timing import latency_dict

LATENCY = "latency"


def _tail(series: deque[float], n: int) -> list[float]:
    """The last `n` samples, without copying the whole history."""
    return list(islice(reversed(series), n))[::-1]


class Stats:
    """Counters (`frames_in`, `frames_out`, `dropped`, ...) and timing samples of one run."""

    def __init__(self, window: int = 60, history: int = 100_000):
        self._lock = threading.Lock()
        self._window = window
        self._history = history
        self._samples: dict[str, deque[float]] = {}
        self._counters: dict[str, int] = {"frames_in": 0, "frames_out": 0, "dropped": 0}
        self._out_times: deque[float] = deque(maxlen=window)
        self._start = time.perf_counter()
        self._end: float | None = None

    def start(self, at: float | None = None) -> None:
        """Restart the clock, from `at` (a `time.perf_counter()` value) or now."""
        with self._lock:
            self._start = time.perf_counter() if at is None else at
            self._end = None

    def stop(self) -> None:
        with self._lock:
            self._end = time.perf_counter()

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + n

    def set(self, counter: str, value: int) -> None:
        with self._lock:
            self._counters[counter] = value

    def record(self, stage: str, ms: float) -> None:
        """One timing sample for `stage` (or for `LATENCY`, capture to display)."""
        with self._lock:
            series = self._samples.get(stage)
            if series is None:
                series = self._samples[stage] = deque(maxlen=self._history)
            series.append(ms)

    def frame_out(self, latency_ms: float) -> None:
        """A frame reached the sink `latency_ms` after it was captured."""
        now = time.perf_counter()
        with self._lock:
            self._counters["frames_out"] += 1
            self._out_times.append(now)
        self.record(LATENCY, latency_ms)

    @property
    def elapsed(self) -> float:
        return (self._end or time.perf_counter()) - self._start

    def recent_fps(self) -> float:
        """Output rate over the last `window` frames."""
        with self._lock:
            times = list(self._out_times)
        if len(times) < 2 or times[-1] == times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def recent_median(self, stage: str) -> float:
        """Median time (ms) of `stage` (or `LATENCY`) over the last `window` samples; 0 before any."""
        with self._lock:
            recent = _tail(self._samples.get(stage, deque()), self._window)
        return float(np.median(recent)) if recent else 0.0


    def _report(self, last: int | None) -> dict[str, Any]:
        with self._lock:
            counters = dict(self._counters)
            samples = {k: _tail(v, last) if last else list(v) for k, v in self._samples.items()}
        latency = samples.pop(LATENCY, [])
        return {**counters, "elapsed_s": round(self.elapsed, 3),
                "stages": {k: latency_dict(v) for k, v in samples.items()}, "latency": latency_dict(latency)}

    def summary(self) -> dict[str, Any]:
        """The whole run: counters, mean FPS, per-stage and latency percentiles."""
        report = self._report(None)
        report["fps"] = round(report["frames_out"] / max(self.elapsed, 1e-9), 2)
        return report

    def live(self) -> dict[str, Any]:
        """Counters, current FPS and the percentiles of the last `window` frames."""
        report = self._report(self._window)
        report["fps"] = round(self.recent_fps(), 2)
        return report
