"""Frame sinks by URI, in the manner of jetson-inference's videoOutput.

`open_sink(uri)` understands:

- `display://0`, `window`: a window (see `window`: needs a display and OpenCV with GUI support);
- `auto`: a window where one can be shown, else `http://127.0.0.1:8080` (any free port if that one is taken);
- `out.mp4`, `out.avi`, `out.mkv`, `out.mov` (`file://` prefix optional): a video file, written to a
  hidden temporary name and renamed on `close()`, so an interrupted run leaves no half-written file;
- `dir/`, `folder://dir`, or an existing folder: numbered PNG images (lossless), each written to a hidden
  temporary name and renamed; a folder that already holds files is refused unless `force`;
- `http://HOST:PORT`: an MJPEG stream plus a live web page (see `mjpeg`); HOST defaults to 127.0.0.1;
- `null`: discards frames (for measuring).
"""
from __future__ import annotations

import abc
import logging
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

import cv2
import numpy as np

from .errors import EdgesegError
from .mjpeg import MjpegServer
from .sources import split_uri

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

#: Video container suffix -> cv2.VideoWriter FourCC.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 30.0
DEFAULT_PORT = 8080
#: What an image-folder sink writes: its frames and their temporary files.
_FOLDER_FILE = re.compile(r"\d{6}\.png|\.partial\.[0-9a-f]+\.png")


class Sink(abc.ABC):
    """Takes rendered BGR frames. `done` turns True when the viewer asks to stop (window closed)."""

    done = False

    def __init__(self, uri: str):
        self.uri = uri

    @abc.abstractmethod
    def write(self, image: np.ndarray) -> None:
        """Output one BGR uint8 frame."""

    def pump(self, timeout: float) -> bool:
        """Called again and again by the thread that runs a pipelined run, while it runs: do there what
        must be done there (a window's drawing and events) for up to `timeout` s. False: nothing to do."""
        return False

    def close(self) -> None:
        """Finish the output (finalise files, stop servers). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullSink(Sink):
    """Discards frames."""

    def write(self, image: np.ndarray) -> None:
        pass


class VideoFileSink(Sink):
    """A video file; the writer opens on the first frame, whose size every later frame is given."""

    def __init__(self, uri: str, path: Path, fps: float):
        super().__init__(uri)
        self.path = path
        self.fps = fps
        self._fourcc = VIDEO_CODECS[path.suffix.lower()]
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.open("xb").close()  # fails now, not at the first frame, if the folder is not writable
        except OSError as exc:
            raise EdgesegError(f"{uri}: cannot write ({exc.strerror})") from None

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*self._fourcc)
            writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not writer.isOpened():
                raise EdgesegError(f"{self.uri}: cannot open a {self._fourcc} video writer")
            self._writer = writer
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)
        elif self._tmp.exists():
            self._tmp.unlink()
            log.warning("%s: no frames, nothing written", self.uri)


class ImageFolderSink(Sink):
    """Numbered PNG files (000000.png, 000001.png, ...) in a folder, each written to a hidden temporary
    name and renamed, so that a killed run leaves only whole images. A folder that holds files already
    is refused, unless `force`: then the frames (and temporary files) of an earlier run are removed."""

    def __init__(self, uri: str, folder: Path, force: bool = False):
        super().__init__(uri)
        self.folder = folder
        self.frames = 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            existing = list(folder.iterdir())
            if existing and not force:
                raise EdgesegError(f"{uri}: folder is not empty ({len(existing)} files); --force replaces its frames")
            for old in existing:
                if _FOLDER_FILE.fullmatch(old.name):
                    old.unlink()
        except OSError as exc:
            raise EdgesegError(f"{uri}: cannot write to folder ({exc.strerror})") from None
        self._tmp = folder / f".partial.{secrets.token_hex(4)}.png"  # keeps .png: imwrite picks the codec by it

    def write(self, image: np.ndarray) -> None:
        path = self.folder / f"{self.frames:06d}.png"
        if not cv2.imwrite(str(self._tmp), image):
            raise EdgesegError(f"{path}: cannot write image")
        os.replace(self._tmp, path)
        self.frames += 1


class MjpegSink(Sink):
    """An MJPEG stream and web page served by `MjpegServer`; frames are encoded only while watched."""

    def __init__(self, uri: str, host: str, port: int, *, legend: Sequence[tuple[str, Sequence[int]]] = (),
                 stats: Callable[[], dict[str, Any]] | None = None, quality: int = 80):
        super().__init__(uri)
        self.server = MjpegServer(host, port, legend=legend, stats=stats)
        self._params = [cv2.IMWRITE_JPEG_QUALITY, quality]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def urls(self) -> list[str]:
        return self.server.urls

    def write(self, image: np.ndarray) -> None:
        if self.server.viewers:
            ok, jpeg = cv2.imencode(".jpg", image, self._params)
            if ok:
                self.server.publish(jpeg.tobytes())

    def close(self) -> None:
        self.server.close()


def open_sink(uri: str | Path, *, fps: float | None = None,
              legend: Sequence[tuple[str, Sequence[int]]] = (),
              stats: Callable[[], dict[str, Any]] | None = None, force: bool = False) -> Sink:
    """Open a sink by URI (see the module docs).

    `fps` is the frame rate a video file is written at (default 30); `legend` ((name, RGB) pairs) and
    `stats` (a callable returning live stats) feed the web page of an `http://` sink; `force` lets an
    image folder that holds files be written to.
    """
    uri = str(uri)
    scheme, rest = split_uri(uri)
    if uri in ("null", "null://"):
        return NullSink(uri)
    if scheme == "display" or uri in ("window", "display", "auto"):
        from .window import DisplaySink, has_display

        if uri != "auto" or has_display():
            return DisplaySink(uri)
        try:
            return MjpegSink(uri, "127.0.0.1", DEFAULT_PORT, legend=legend, stats=stats)
        except EdgesegError:  # the port is taken: any free one
            return MjpegSink(uri, "127.0.0.1", 0, legend=legend, stats=stats)
    if scheme == "http":
        parts = urlsplit(uri)
        try:
            port = parts.port if parts.port is not None else DEFAULT_PORT
        except ValueError:
            raise EdgesegError(f"{uri}: invalid port") from None
        return MjpegSink(uri, parts.hostname or "127.0.0.1", port, legend=legend, stats=stats)
    if scheme not in ("", "file", "folder"):
        raise EdgesegError(f"{uri}: unknown sink scheme {scheme!r}")
    path = Path(rest if scheme else uri)
    if scheme == "folder" or uri.endswith(("/", os.sep)) or path.is_dir():
        return ImageFolderSink(uri, path, force)
    if path.suffix.lower() in VIDEO_CODECS:
        return VideoFileSink(uri, path, fps or DEFAULT_FPS)
    raise EdgesegError(f"{uri}: unknown sink (use a video file {', '.join(VIDEO_CODECS)}, a folder/, "
                       "http://HOST:PORT, display://0, auto or null)")
