"""Frame sources by URI, in the manner of jetson-inference's videoSource.

`open_source(uri)` understands:

- `0`, `/dev/video0`, `v4l2:///dev/video0`: a V4L2 camera (requested `width`, `height`, `fps`);
- `csi://0`: a Jetson CSI camera through GStreamer (`nvarguscamerasrc`), flipped in hardware;
- `rtsp://...`, `http(s)://...` (MJPEG or anything OpenCV/FFmpeg opens), `rtmp://`, `udp://`, `tcp://`;
- a video file, an image file, a folder of images or a glob (`file://` prefix optional);
- `sample`: a few seconds of CamVid street scenes shipped in the package (see `sample_clip`).

Cameras and streams are live: a capture thread keeps only the newest frame (older ones are dropped
and counted), and a stream that fails or stalls is reopened with backoff. What a stream buffered before
it went live (FFmpeg reads ~2 s of an RTSP stream while opening it, again on each reconnect) is skipped
and counted apart (`backlog`), not as dropped. Files play as fast as they
are read, or at their own frame rate with `realtime=True` (then like a live source). Every frame
carries its index (gaps mean dropped frames) and its capture time (`time.perf_counter()`). An image
or video frame that cannot be decoded is skipped and counted (`bad_frames`); `MAX_BAD_FRAMES` in a row
stop the source with an error naming the file. A video file's frame is undecodable when a read fails before
the container's frame count is reached (a read at the end of the file fails too, but there).
"""
from __future__ import annotations

import abc
import glob
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import cv2
import numpy as np

from .errors import EdgesegError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

#: jetson-inference / nvvidconv flip names -> nvvidconv flip-method.
FLIPS = {
    "none": 0, "counterclockwise": 1, "rotate-180": 2, "clockwise": 3,
    "horizontal": 4, "upper-right-diagonal": 5, "vertical": 6, "upper-left-diagonal": 7,
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
STREAM_SCHEMES = {"rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"}
#: FFmpeg open / read timeouts for network streams; a read that times out counts as a stall.
STREAM_TIMEOUT_MS = 5000
BACKOFF_S = (0.25, 4.0)
#: Undecodable images or video frames in a row after which a file source gives up.
MAX_BAD_FRAMES = 10
#: A live stream's backlog ends once its last `BACKLOG_READS` reads waited one frame interval less than
#: their number (a stream read live waits about one interval per frame), or after `BACKLOG_MAX_S`.
#: Meanwhile a frame is held back for `BACKLOG_HOLD` frame intervals, for a newer one to replace it.
BACKLOG_READS = 3
BACKLOG_HOLD = 0.5
BACKLOG_MAX_S = 3.0

Opener = Callable[[], Optional[cv2.VideoCapture]]


@dataclass
class Frame:
    """One captured frame: BGR uint8 HxWx3, its index in the source and its capture time."""

    image: np.ndarray
    index: int
    timestamp: float


def flip_image(image: np.ndarray, method: int) -> np.ndarray:
    """Apply an nvvidconv flip-method (see `FLIPS`) in software."""
    if method == 0:
        return image
    if method in (1, 2, 3):
        rotations = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}
        return cv2.rotate(image, rotations[method])
    if method in (4, 6):
        return cv2.flip(image, 1 if method == 4 else 0)
    transposed = cv2.transpose(image)
    return transposed if method == 7 else cv2.rotate(transposed, cv2.ROTATE_180)


class Source(abc.ABC):
    """Frames from one URI. Iterate it, or `read()` until None; `close()` (or `with`) releases it."""

    live = False
    #: A recording (video file, images): its undecodable frames are damage, not a stream's hiccups.
    recorded = False
    #: Frames captured but never returned by `read()` (live sources only).
    dropped = 0
    #: Frames a live source had buffered before it went live (on start or reconnect), skipped.
    backlog = 0
    #: Times a lost stream was reopened.
    reconnects = 0
    #: Frames that could not be decoded, skipped.
    bad_frames = 0

    def __init__(self, uri: str, fps: float | None = None, flip: int = 0):
        self.uri = uri
        self.fps = fps
        self._flip = flip
        self._index = 0
        self._closing = threading.Event()
        self._bad_in_a_row = 0

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream or once closed."""

    def _release(self) -> None:
        """Free the underlying device or file."""

    def close(self) -> None:
        """Stop reading; a blocked or later `read()` returns None. Thread-safe and idempotent."""
        self._closing.set()
        self._release()

    def _frame(self, image: np.ndarray) -> Frame:
        frame = Frame(flip_image(image, self._flip), self._index, time.perf_counter())
        self._index += 1
        self._bad_in_a_row = 0
        return frame

    def _skip_bad_frame(self, what: str) -> None:
        """Count an undecodable frame (`what` names it and the fault); raise at `MAX_BAD_FRAMES` in a row."""
        self.bad_frames += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= MAX_BAD_FRAMES:
            raise EdgesegError(f"{what}: {self._bad_in_a_row} undecodable frames in a row, giving up")
        log.warning("%s; skipped", what)

    def __iter__(self) -> Iterator[Frame]:
        try:
            while (frame := self.read()) is not None:
                yield frame
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _opened(cap: cv2.VideoCapture) -> cv2.VideoCapture | None:
    if cap.isOpened():
        return cap
    cap.release()
    return None


def _capture_opener(*args: object) -> Opener:
    """Opens `cv2.VideoCapture(*args)` afresh on each call (None when it does not open)."""
    return lambda: _opened(cv2.VideoCapture(*args))


class CaptureSource(Source):
    """A cv2.VideoCapture read on demand: rewound with `loop`, reopened with backoff with `reconnect`."""

    def __init__(self, uri: str, opener: Opener, *, fps: float | None = None, flip: int = 0,
                 loop: bool = False, reconnect: bool = False, what: str = "source"):
        cap = opener()
        if cap is None:
            raise EdgesegError(f"{uri}: cannot open {what}")
        own_fps = cap.get(cv2.CAP_PROP_FPS)
        super().__init__(uri, own_fps if 0 < own_fps < 1000 else fps, flip)
        self._opener = opener
        self._cap: cv2.VideoCapture | None = cap
        self._lock = threading.Lock()
        self._loop = loop
        self._reconnect = reconnect
        self._read_since_open = 0
        self._failed_since_open = 0
        self._delay = BACKOFF_S[0]
        self.recorded = not reconnect
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.recorded else 0
        #: Frames the file's container lists (0 where unknown): a read that fails before them is damage.
        self._frame_count = max(count, 0)

    def read(self) -> Frame | None:
        while not self._closing.is_set():
            with self._lock:
                ok, image = self._cap.read() if self._cap is not None else (False, None)
            if ok:
                self._read_since_open += 1
                self._delay = BACKOFF_S[0]
                return self._frame(image)
            position = self._read_since_open + self._failed_since_open
            if self._cap is not None and position < self._frame_count:
                self._failed_since_open += 1
                self._skip_bad_frame(f"{self.uri}: frame {position + 1} of {self._frame_count} cannot be decoded")
                continue
            retry = self._reconnect or (self._loop and self._read_since_open > 0)
            if self._closing.is_set() or not retry or not self._reopen():
                return None
            self._read_since_open = self._failed_since_open = 0
        return None

    def _reopen(self) -> bool:
        """A new capture: at once for a file (rewind), with growing delays for a stream."""
        self._release()
        if not self._reconnect:
            return self._install(self._opener())
        log.warning("%s: no frame; reconnecting", self.uri)
        while not self._closing.wait(self._delay):
            self._delay = min(self._delay * 2, BACKOFF_S[1])
            if self._install(self._opener()):
                self.reconnects += 1
                log.warning("%s: reconnected", self.uri)
                return True
        return False

    def _install(self, cap: cv2.VideoCapture | None) -> bool:
        if cap is None:
            return False
        with self._lock:
            if self._closing.is_set():
                cap.release()
                return False
            self._cap = cap
        return True

    def _release(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


class ImageSequenceSource(Source):
    """Image files in order (a folder, a glob or one image)."""

    recorded = True

    def __init__(self, uri: str, paths: list[Path], *, fps: float | None = None, flip: int = 0,
                 loop: bool = False):
        super().__init__(uri, fps, flip)
        self._paths = paths
        self._loop = loop
        self._next = 0

    def read(self) -> Frame | None:
        while not self._closing.is_set():
            if self._next == len(self._paths):
                if not self._loop:
                    return None
                self._next = 0
            path = self._paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return self._frame(image)
            self._skip_bad_frame(f"{path}: cannot decode image")
        return None


class Backlog:
    """Tells the frames a live stream had buffered (they come without waiting) from live ones."""

    def __init__(self, fps: float | None):
        self._interval = 1.0 / (fps or 30.0)
        #: How long a frame of the backlog waits for a newer one before `read()` takes it anyway.
        self.hold = BACKLOG_HOLD * self._interval
        self._since: float | None = None
        self._waits: deque[float] = deque(maxlen=BACKLOG_READS)

    def restart(self, now: float) -> None:
        """The stream was (re)opened at `now`: the frames it buffered meanwhile come next."""
        self._since = now
        self._waits.clear()

    def still(self, waited: float, now: float) -> bool:
        """Whether a frame read after waiting `waited` s, at `now`, is still part of the backlog."""
        if self._since is None:
            return False
        self._waits.append(waited)
        caught_up = len(self._waits) == BACKLOG_READS and sum(self._waits) >= (BACKLOG_READS - 1) * self._interval
        if caught_up or now - self._since >= BACKLOG_MAX_S:
            self._since = None
        return self._since is not None


class LatestFrameSource(Source):
    """Runs another source in a capture thread and keeps only its newest frame.

    `read()` waits for a frame newer than the last one returned; frames the reader was too slow
    for are dropped (`dropped`). Frames that arrive without waiting after the start or a reconnect
    are the stream's backlog: each is held back briefly for a newer one, those replaced are skipped
    (`backlog`, not dropped) and the frame indices close up over them. With `pace` (frames per second)
    the inner source, e.g. a file, is played at that rate as if it were a camera.
    """

    live = True

    def __init__(self, inner: Source, pace: float | None = None):
        super().__init__(inner.uri, inner.fps)
        self.dropped = 0
        self.backlog = 0
        self._inner = inner
        self._pace = pace
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._held_until = 0.0  # `_latest` is part of a backlog, held back until then
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture {inner.uri}", daemon=True)

    @property  # type: ignore[override]
    def reconnects(self) -> int:
        return self._inner.reconnects

    @property  # type: ignore[override]
    def bad_frames(self) -> int:
        return self._inner.bad_frames

    @property  # type: ignore[override]
    def recorded(self) -> bool:
        return self._inner.recorded

    def _run(self) -> None:
        start = time.perf_counter()
        backlog = None if self._pace else Backlog(self.fps)
        connection = None
        try:
            while not self._closing.is_set():
                began = time.perf_counter()
                frame = self._inner.read()
                if frame is None:
                    break
                now = time.perf_counter()
                stale = False
                if backlog is None:
                    if self._closing.wait(max(0.0, start + frame.index / self._pace - now)):
                        break
                    frame.timestamp = time.perf_counter()
                elif self._inner.reconnects != connection:  # (re)connected: its read included opening
                    connection, stale = self._inner.reconnects, True
                    backlog.restart(now)
                else:
                    stale = backlog.still(now - began, now)
                self._publish(frame, hold=backlog.hold if stale else 0.0)
        except BaseException as exc:  # noqa: BLE001 (re-raised by read())
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._inner.close()

    def _publish(self, frame: Frame, hold: float) -> None:
        """Make `frame` the newest, held back from `read()` for `hold` s (part of a backlog); the frame
        it replaces unread is dropped, or skipped as backlog if it was held."""
        with self._cond:
            if self._latest is not None:
                if self._held_until:
                    self.backlog += 1
                else:
                    self.dropped += 1
            frame.index -= self.backlog
            self._latest = frame
            self._held_until = time.perf_counter() + hold if hold else 0.0
            self._cond.notify_all()

    def read(self) -> Frame | None:
        with self._cond:
            if self._thread.ident is None and not self._ended:  # capture starts with the first read
                self._thread.start()
            while not self._ended:
                if self._latest is None:
                    self._cond.wait()
                elif (hold := self._held_until - time.perf_counter()) > 0:
                    self._cond.wait(hold)
                else:
                    break
            frame, self._latest = self._latest, None
            error, self._error = self._error, None
        if error is not None:
            raise error
        return None if self._closing.is_set() else frame

    def _release(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self._inner.close()
        if self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join()


def _camera_opener(device: int | str, width: int | None, height: int | None, fps: float | None) -> Opener:
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY

    def open_camera() -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(device, api)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps), (cv2.CAP_PROP_BUFFERSIZE, 1)):
            if value:
                cap.set(prop, value)
        return _opened(cap)

    return open_camera


def csi_pipeline(sensor: int, width: int, height: int, fps: float, flip: int) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, ending in a BGR appsink that drops old frames."""
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"framerate=(fraction){round(fps)}/1, format=(string)NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=1 max-buffers=1"
    )


def split_uri(uri: str) -> tuple[str, str]:
    """`scheme://rest` -> (lower-case scheme, rest); a URI without `://` -> ("", uri)."""
    scheme, sep, rest = uri.partition("://")
    return (scheme.lower(), rest) if sep else ("", uri)


def _has_gstreamer() -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def _image_paths(uri: str, path: str) -> list[Path] | None:
    """The images a folder, glob or image file names; None when `path` is a video file."""
    if glob.has_magic(path):
        paths = sorted(Path(p) for p in glob.glob(path) if Path(p).is_file())
        if not paths:
            raise EdgesegError(f"{uri}: no files match")
        return paths
    p = Path(path)
    if p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise EdgesegError(f"{uri}: no images in folder")
        return paths
    if not p.is_file():
        raise EdgesegError(f"{uri}: no such file or folder")
    return [p] if p.suffix.lower() in IMAGE_SUFFIXES else None


def sample_clip() -> Path:
    """The clip shipped in the package (CamVid val frames, 480x360 at 15 FPS; made by
    benchmarks/make_sample_clip.py): something to run the shipped CamVid model on without a camera."""
    import edgeseg

    path = Path(edgeseg.__file__).parent / "samples" / "camvid.mp4"
    if not path.is_file():
        raise EdgesegError(f"{path}: the sample clip is missing from this install")
    return path


def open_source(uri: str | Path, *, width: int | None = None, height: int | None = None,
                fps: float | None = None, flip: str = "none", loop: bool = False,
                realtime: bool = False) -> Source:
    """Open a camera, stream, video file or images by URI (see the module docs).

    `width`, `height` and `fps` are requested from cameras; `fps` also paces image folders with
    `realtime`. `flip` is one of `FLIPS`. `loop` replays files; `realtime` plays them at their frame
    rate, dropping frames the reader is too slow for.
    """
    uri = str(sample_clip()) if str(uri) == "sample" else str(uri)
    if flip not in FLIPS:
        raise EdgesegError(f"unknown flip {flip!r}; use one of: {', '.join(FLIPS)}")
    method = FLIPS[flip]
    scheme, rest = split_uri(uri)
    if uri.isdigit() or uri.startswith("/dev/video") or scheme == "v4l2":
        device: int | str = int(uri) if uri.isdigit() else (rest if scheme else uri)
        opener = _camera_opener(device, width, height, fps)
        camera = CaptureSource(uri, opener, fps=fps, flip=method, reconnect=True, what="camera")
        return LatestFrameSource(camera)
    if scheme == "csi":
        if not _has_gstreamer():
            raise EdgesegError(f"{uri}: this OpenCV has no GStreamer support (use JetPack's OpenCV)")
        pipe = csi_pipeline(int(rest or 0), width or 1280, height or 720, fps or 30, method)
        opener = _capture_opener(pipe, cv2.CAP_GSTREAMER)
        return LatestFrameSource(CaptureSource(uri, opener, fps=fps or 30, reconnect=True, what="CSI camera"))
    if scheme in STREAM_SCHEMES:
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS]
        opener = _capture_opener(uri, cv2.CAP_FFMPEG, timeouts)
        stream = CaptureSource(uri, opener, fps=fps, flip=method, reconnect=True, what="stream")
        return LatestFrameSource(stream)
    if scheme not in ("", "file"):
        raise EdgesegError(f"{uri}: unknown source scheme {scheme!r}")
    path = rest if scheme else uri
    images = _image_paths(uri, path)
    source: Source
    if images is None:
        source = CaptureSource(uri, _capture_opener(path), flip=method, loop=loop, what="video file")
    else:
        source = ImageSequenceSource(uri, images, fps=fps, flip=method, loop=loop)
    if realtime:
        return LatestFrameSource(source, pace=fps or source.fps or 30.0)
    return source
