"""A window sink: OpenCV HighGUI (Qt in pip's `opencv-python`, GTK in JetPack's OpenCV).

Pip's `opencv-python-headless` has no windows, and it shares the `cv2` folder with `opencv-python`:
installing both leaves whichever came last, so an install picks one (the `desktop` or the `cpu`
extra). `display_problem()` says why no window can be shown here, before one is tried (Qt aborts the
process when the X display cannot be reached).
"""
from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from importlib import metadata

import cv2
import numpy as np

from .errors import EdgesegError
from .sinks import Sink

#: Resizable, no toolbar; the picture is letterboxed here, so that every backend keeps its aspect ratio.
WINDOW_FLAGS = cv2.WINDOW_NORMAL | cv2.WINDOW_FREERATIO | cv2.WINDOW_GUI_NORMAL
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q, Esc


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _x11_reachable(display: str) -> bool:
    """Whether the X server `display` accepts a connection (through Xlib, which Qt and GTK use too)."""
    try:
        x11 = ctypes.CDLL("libX11.so.6")
    except OSError:
        return False
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = x11.XOpenDisplay(display.encode())
    if handle:
        x11.XCloseDisplay(handle)
    return bool(handle)


def display_problem() -> str | None:
    """Why no window can be shown here, in a few words; None when one can."""
    if re.search(r"GUI:\s*NONE", cv2.getBuildInformation()):
        if _installed("opencv-python"):
            return ("opencv-python-headless hides opencv-python's windows (pip uninstall -y opencv-python-headless "
                    "opencv-python && pip install opencv-python)")
        return "this OpenCV has no windows (install edgeseg[desktop], or use JetPack's OpenCV)"
    if sys.platform.startswith("linux"):
        display = os.environ.get("DISPLAY")
        if not display:
            return "no display (DISPLAY is not set)"
        if not _x11_reachable(display):
            return f"cannot connect to the X display {display}"
    return None


def has_display() -> bool:
    """Whether a window can be shown here."""
    return display_problem() is None


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` padded with black to the aspect ratio of `width` x `height` (centred)."""
    h, w = image.shape[:2]
    if width <= 0 or height <= 0 or w * height == h * width:
        return image
    if w * height < h * width:  # the window is wider: bars left and right
        pad = round(h * width / height) - w
        return cv2.copyMakeBorder(image, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT)
    pad = round(w * height / width) - h
    return cv2.copyMakeBorder(image, pad // 2, pad - pad // 2, 0, 0, cv2.BORDER_CONSTANT)


class DisplaySink(Sink):
    """A resizable window showing each frame at its aspect ratio; q, Esc or closing it sets `done`.

    The window belongs to the thread that opened the sink (GUI toolkits want one thread, macOS the
    main one): a frame written there is shown at once; one written from another thread (the sink
    stage of a pipelined run) waits for `pump()`, which that thread calls meanwhile.
    """

    def __init__(self, uri: str, title: str = "edgeseg"):
        problem = display_problem()
        if problem is not None:
            raise EdgesegError(f"{uri}: {problem}; use --sink http://127.0.0.1:8080 to watch in a browser")
        super().__init__(uri)
        self.title = title
        self._owner = threading.current_thread()
        self._cond = threading.Condition()
        self._pending: np.ndarray | None = None
        self._opened = False

    def write(self, image: np.ndarray) -> None:
        if threading.current_thread() is self._owner:
            self._show(image)
            return
        with self._cond:
            self._pending = image
            self._cond.notify_all()

    def pump(self, timeout: float) -> bool:
        """Show the newest frame written from another thread, waiting up to `timeout` s for one, and
        handle the window's events (keys, close, resize)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None, timeout)
            image, self._pending = self._pending, None
        if image is not None:
            self._show(image)
        elif self._opened and not self.done:
            self._handle_events()
        return True

    def _show(self, image: np.ndarray) -> None:
        if self.done:  # closed by its viewer: showing a frame would open it again
            return
        if not self._opened:
            cv2.namedWindow(self.title, WINDOW_FLAGS)
            cv2.resizeWindow(self.title, image.shape[1], image.shape[0])
            self._opened = True
        _, _, width, height = cv2.getWindowImageRect(self.title)
        cv2.imshow(self.title, letterbox(image, width, height))
        self._handle_events()

    def _handle_events(self) -> None:
        key = cv2.waitKey(1) & 0xFF
        try:
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # Qt: the close button took the window down
            visible = False
        if key in QUIT_KEYS or not visible:
            self.done = True

    def close(self) -> None:
        if self._opened:
            self._opened = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)  # lets the toolkit take the window down
            except cv2.error:
                pass  # already gone with its close button
