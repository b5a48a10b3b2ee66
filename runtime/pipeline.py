"""The real-time pipeline: capture -> preprocess -> infer -> postprocess -> render -> sink.

Pipelined (default), the stages run in three threads (`THREADS`) joined by small bounded channels,
so capture, inference and rendering/writing of different frames overlap (OpenCV and the
interpreters release the GIL). For a live source every channel keeps only the newest frame: a
stage slower than the camera drops stale frames (counted) instead of falling behind. A file or
folder is read just in time: the next frame is captured so that it is preprocessed when inference
becomes free, not earlier, so it does not age in a queue (throughput stays that of inference,
latency close to the sum of the stages). With `sequential=True` the same stages run one after
another in the calling thread.

`run()` returns when the source ends, `max_frames` frames have been written to the sink (frames a
live run drops on the way do not count: more are read), the sink is closed by its viewer, or `stop()`
is called (also on SIGINT / SIGTERM): frames in flight are finished and the sink is closed, so an
output file is always finalised.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

from .render import Renderer
from .segmenter import Segmenter
from .sinks import Sink
from .sources import Frame, Source
from .stats import LATENCY, Stats

Stage = Callable[[Frame, Any], Any]
#: The threads of a pipelined run and the stages each runs; the first one also captures.
THREADS = (("preprocess",), ("infer",), ("postprocess", "render", "sink"))
#: Read-ahead margin of just-in-time capture: a frame reaches inference this much before it is free.
PACING_MARGIN_MS = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Channel:
    """A bounded FIFO between two stage threads.

    `put` waits while the channel is full, or with `drop_oldest` discards the oldest item (and calls
    `on_drop`). `get` returns None once the channel is closed and empty, or aborted.
    """

    def __init__(self, maxsize: int, drop_oldest: bool = False, on_drop: Callable[[], None] = lambda: None):
        self._items: deque[Any] = deque()
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False
        #: `time.perf_counter()` when the consumer last took an item (0 before the first).
        self.taken_at = 0.0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._drop_oldest:
                while len(self._items) >= self._maxsize:
                    self._items.popleft()
                    self._on_drop()
            else:
                self._cond.wait_for(lambda: len(self._items) < self._maxsize or self._aborted)
            if not self._aborted:
                self._items.append(item)
                self._cond.notify_all()

    def wait_for_room(self) -> None:
        """Wait until `put` would not block (so a frame is read only when it can move on at once)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self._maxsize or self._aborted)

    def get(self) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed or self._aborted)
            if self._aborted or not self._items:
                return None
            item = self._items.popleft()
            self.taken_at = time.perf_counter()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items: `get` drains what is left, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Drop everything and release every waiting thread."""
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._cond.notify_all()


class Pipeline:
    """Segments frames from `source` with `segmenter` and writes them, rendered, to `sink`."""

    def __init__(self, segmenter: Segmenter, source: Source, sink: Sink, *, renderer: Renderer | None = None,
                 stats: Stats | None = None, text: bool = True, max_frames: int | None = None,
                 sequential: bool = False, queue_size: int = 1):
        self.segmenter = segmenter
        self.source = source
        self.sink = sink
        self.renderer = renderer or Renderer(segmenter.classes, segmenter.manifest.palette)
        self.stats = stats or Stats()
        self.text = text
        self.max_frames = max_frames
        self.sequential = sequential
        self.queue_size = queue_size
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._channels: list[Channel] = []
        self._signals = 0
        self._last_index = -1
        self._flow = threading.Condition()  # guards the three counts below
        self._read = 0  # frames read
        self._settled = 0  # frames read and since written or dropped
        self._lost = 0  # frames read and dropped on the way

    def stages(self) -> list[tuple[str, Stage]]:
        """The stages after capture, in order; each maps (frame, previous result) to its result."""
        seg, renderer = self.segmenter, self.renderer
        return [
            ("preprocess", lambda frame, _: seg.preprocess(frame.image)),
            ("infer", lambda frame, batch: seg.infer(batch)),
            ("postprocess", lambda frame, raw: seg.postprocess(raw, *frame.image.shape[:2])),
            ("render", lambda frame, labels: renderer.render(frame.image, labels, self._status_text())),
            ("sink", lambda frame, image: self.sink.write(image)),
        ]

    def stop(self) -> None:
        """Ask the run to finish: no more frames are read; those in flight are completed."""
        self._stop.set()
        self.source.close()
        with self._flow:
            self._flow.notify_all()

    def run(self, handle_signals: bool = True) -> dict[str, Any]:
        """Run until the end (see the module docs) and return `stats.summary()` plus run details.

        With `handle_signals` (and in the main thread), SIGINT and SIGTERM call `stop()`; a second
        one drops the frames in flight (sequential: raises KeyboardInterrupt). Source and sink are
        closed in any case.
        """
        try:
            self.segmenter.activate()
            self.stats.start()
            with self._signals_stop() if handle_signals else nullcontext():
                if self.sequential:
                    self._run_sequential()
                else:
                    self._run_pipelined()
        finally:
            self.stats.stop()
            try:
                self.sink.close()
            finally:
                self.source.close()
        if self._error is not None:
            raise self._error
        return self.report()

    def report(self) -> dict[str, Any]:
        """`stats.summary()` and what ran (also after a failed run)."""
        self._count_source_events()
        return {**self.stats.summary(), "mode": "sequential" if self.sequential else "pipelined",
                "source": self.source.uri, "sink": self.sink.uri, "model": self.segmenter.runner.name}

    # -- the stages -------------------------------------------------------------------------------

    def _capture(self) -> Frame | None:
        """The next frame (None when done), counting frames the source dropped before it."""
        self._check_signals()
        if self._stop.is_set() or not self._room_for_more():
            return None
        start = time.perf_counter()
        frame = self.source.read()
        if frame is None:
            return None
        self.stats.record("capture", (time.perf_counter() - start) * 1000.0)
        skipped = max(0, frame.index - self._last_index - 1)
        self._last_index = frame.index
        with self._flow:
            self._read += 1
        if self._read == 1:  # the run's FPS counts from its first frame, not from waiting for a stream
            self.stats.start(at=frame.timestamp)
        self.stats.add("frames_in", 1 + skipped)
        if skipped:
            self.stats.add("dropped", skipped)
        self._count_source_events()
        return frame

    def _count_source_events(self) -> None:
        """Copy the source's own counts (reconnects, backlog, bad frames) into the stats."""
        for counter in ("reconnects", "backlog", "bad_frames"):
            self.stats.set(counter, getattr(self.source, counter))

    def _room_for_more(self) -> bool:
        """Whether to read another frame: with `max_frames`, while the frames read and not dropped are
        fewer; once they are as many, wait until they are written (then no) or one is dropped (then yes)."""
        if self.max_frames is None:
            return True
        with self._flow:
            self._flow.wait_for(lambda: self._read - self._lost < self.max_frames or self._settled == self._read
                                or self._stop.is_set())
            return self._read - self._lost < self.max_frames and not self._stop.is_set()

    def _settle(self, lost: bool) -> None:
        """A frame was written to the sink, or dropped on the way (`lost`)."""
        with self._flow:
            self._settled += 1
            self._lost += lost
            self._flow.notify_all()

    def _drop_in_flight(self) -> None:
        self.stats.add("dropped")
        self._settle(lost=True)

    def _timed(self, name: str, stage: Stage, frame: Frame, data: Any) -> Any:
        start = time.perf_counter()
        result = stage(frame, data)
        self.stats.record(name, (time.perf_counter() - start) * 1000.0)
        return result

    def _finish(self, frame: Frame) -> None:
        """`frame` was written to the sink."""
        self.stats.frame_out((time.perf_counter() - frame.timestamp) * 1000.0)
        self._settle(lost=False)
        if self.sink.done:
            self.stop()

    def _status_text(self) -> str | None:
        if not self.text:
            return None
        return f"{self.stats.recent_fps():.1f} FPS  {self.stats.recent_median(LATENCY):.0f} ms"

    # -- the two ways of running them -------------------------------------------------------------

    def _run_sequential(self) -> None:
        self._loop(self.stages(), None, None)

    def _run_pipelined(self) -> None:
        stages = dict(self.stages())
        groups = [[(name, stages[name]) for name in names] for names in THREADS]
        live = self.source.live
        self._channels = [Channel(1 if live else self.queue_size, drop_oldest=live, on_drop=self._drop_in_flight)
                          for _ in groups[1:]]
        inputs: list[Channel | None] = [None, *self._channels]
        outputs: list[Channel | None] = [*self._channels, None]
        threads = [threading.Thread(target=self._guarded, args=(group, inp, out), daemon=True,
                                    name="+".join(name for name, _ in group))
                   for group, inp, out in zip(groups, inputs, outputs)]
        for thread in threads:
            thread.start()
        while alive := [thread for thread in threads if thread.is_alive()]:
            if not self.sink.pump(0.1):
                alive[0].join(0.1)
            if self.sink.done and not self._stop.is_set():  # closed while no frame came
                self.stop()
            self._check_signals()

    def _loop(self, group: list[tuple[str, Stage]], inp: Channel | None, out: Channel | None) -> None:
        """Run `group` on every frame from `inp` (from the source if None) and pass it on to `out`
        (the sink has been written to if None)."""
        while (item := inp.get() if inp is not None else self._captured(out)) is not None:
            frame, data = item
            for name, stage in group:
                data = self._timed(name, stage, frame, data)
            if out is None:
                self._finish(frame)
            else:
                out.put((frame, data))

    def _captured(self, out: Channel | None) -> tuple[Frame, None] | None:
        """The next frame; from a file, read just in time for the next thread (see `_pace`)."""
        if out is not None and not self.source.live:
            out.wait_for_room()
            self._pace(out)
        frame = self._capture()
        return None if frame is None else (frame, None)

    def _pace(self, out: Channel) -> None:
        """Wait until reading and preprocessing a frame now ends as the next thread becomes free: it took
        its last frame at `out.taken_at` and needs its recent median time for it."""
        busy = sum(self.stats.recent_median(name) for name in THREADS[1])
        lead = sum(self.stats.recent_median(name) for name in ("capture", *THREADS[0]))
        delay = out.taken_at + (busy - lead - PACING_MARGIN_MS) / 1000.0 - time.perf_counter()
        if delay > 0:
            self._stop.wait(delay)

    def _guarded(self, group: list[tuple[str, Stage]], inp: Channel | None, out: Channel | None) -> None:
        """One pipeline thread: on an error keep it for `run()` and abort the other threads."""
        try:
            self._loop(group, inp, out)
        except BaseException as exc:  # noqa: BLE001 (re-raised by run())
            if self._error is None:
                self._error = exc
            self._abort()
        finally:
            if out is not None:
                out.close()

    def _abort(self) -> None:
        """Stop now, dropping the frames in flight."""
        self.stop()
        for channel in self._channels:
            channel.abort()

    @contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """Count SIGINT / SIGTERM while inside (main thread only); see `_check_signals`.

        The handler only counts: it interrupts the main thread anywhere, even inside a lock that
        `stop()` would take. A second signal in sequential mode raises KeyboardInterrupt, as the
        main thread may be waiting for a frame that never comes.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: object) -> None:
            self._signals += 1
            if self.sequential and self._signals > 1:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _check_signals(self) -> None:
        """After one signal `stop()`; after two `_abort()` (drop the frames in flight)."""
        if self._signals > 1:
            self._abort()
        elif self._signals and not self._stop.is_set():
            self.stop()
