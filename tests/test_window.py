"""`edgeseg demo --sink display://0` on a real X server (Xvfb): what the window shows, resizing, q and close.

Needs Xvfb (Debian: xvfb), OpenCV with windows (the `desktop` extra) and python-xlib (the `dev` extra) to
find, resize and close the window and to type into it; skips with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageGrab
from test_demo_cli import DEMO, SUMMARY
from test_sources import SIZE, write_video

from edgeseg.runtime.manifest import read_manifest

Xlib = pytest.importorskip("Xlib", reason="needs python-xlib (the dev extra)")
from Xlib import XK, X  # noqa: E402
from Xlib import display as xdisplay  # noqa: E402
from Xlib.ext import xtest  # noqa: E402
from Xlib.protocol import event  # noqa: E402

TITLE = "edgeseg"


@pytest.fixture(scope="module")
def screen() -> Iterator[str]:
    """A fresh Xvfb display (1280x900, black background); its name, e.g. ":3"."""
    if shutil.which("Xvfb") is None:
        pytest.skip("needs Xvfb (Debian: xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x900x24", "-nolisten", "tcp",
                             "-br"], pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        assert select.select([read], [], [], 30)[0], "Xvfb did not start"
        name = f":{os.read(read, 16).decode().strip()}"
        os.close(read)
        yield name
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def desktop(screen: str) -> Iterator[str]:
    """DISPLAY set to `screen`, where this OpenCV can open windows."""
    from edgeseg.runtime.window import display_problem

    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = screen
    try:
        problem = display_problem()
        if problem is not None:
            pytest.skip(f"no window: {problem}")
        yield screen
    finally:
        if previous is None:
            os.environ.pop("DISPLAY")
        else:
            os.environ["DISPLAY"] = previous


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "in.mp4", 16)


class Window:
    """The demo's window, seen from another X client."""

    def __init__(self, screen: str, timeout: float = 60):
        self.screen = screen
        self.x = xdisplay.Display(screen)
        root = self.x.screen().root
        deadline = time.monotonic() + timeout
        while (window := self._find(root)) is None:
            assert time.monotonic() < deadline, f"no window {TITLE!r} within {timeout} s"
            time.sleep(0.2)
        self.window = window

    def _find(self, parent):
        for child in parent.query_tree().children:
            if child.get_wm_name() == TITLE and child.get_attributes().map_state == X.IsViewable:
                return child
            if (found := self._find(child)) is not None:
                return found
        return None

    def grab(self) -> np.ndarray:
        """What the window shows now, RGB."""
        geometry = self.window.get_geometry()
        origin = self.x.screen().root.translate_coords(self.window, 0, 0)
        box = (origin.x, origin.y, origin.x + geometry.width, origin.y + geometry.height)
        return np.asarray(ImageGrab.grab(bbox=box, xdisplay=self.screen).convert("RGB"))

    def wait_for(self, check, what: str, timeout: float = 30) -> np.ndarray:
        """The first picture for which `check(picture)` holds."""
        deadline = time.monotonic() + timeout
        while not check(picture := self.grab()):
            assert time.monotonic() < deadline, f"the window never showed {what}"
            time.sleep(0.2)
        return picture

    def resize(self, width: int, height: int) -> None:
        self.window.configure(width=width, height=height)
        self.x.sync()

    def press(self, key: str) -> None:
        """Type `key` into the window, as a keyboard does (XTEST)."""
        geometry = self.window.get_geometry()
        origin = self.x.screen().root.translate_coords(self.window, 0, 0)
        xtest.fake_input(self.x, X.MotionNotify, x=origin.x + geometry.width // 2, y=origin.y + geometry.height // 2)
        self.window.set_input_focus(X.RevertToParent, X.CurrentTime)
        code = self.x.keysym_to_keycode(XK.string_to_keysym(key))
        xtest.fake_input(self.x, X.KeyPress, code)
        xtest.fake_input(self.x, X.KeyRelease, code)
        self.x.sync()

    def close(self) -> None:
        """Click the close button: the window manager's WM_DELETE_WINDOW message."""
        protocols, delete = self.x.intern_atom("WM_PROTOCOLS"), self.x.intern_atom("WM_DELETE_WINDOW")
        message = event.ClientMessage(window=self.window, client_type=protocols,
                                      data=(32, [delete, X.CurrentTime, 0, 0, 0]))
        self.window.send_event(message, event_mask=X.NoEventMask)
        self.x.sync()


def run_demo(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([*DEMO, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """The frames `proc` wrote, once it exits by itself (with status 0)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "QObject" not in stderr, stderr
    match = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert match, stdout
    return int(match[1])


def test_window_shows_the_class_colours_and_quits_on_q(desktop: str, tiny_bundle: Path, video: Path) -> None:
    palette = {tuple(c) for c in read_manifest(tiny_bundle).palette}
    proc = run_demo(tiny_bundle, "--source", video, "--loop", "--realtime", "--sink", "display://0",
                    "--mode", "mask", "--no-legend", "--no-text")
    try:
        window = Window(desktop)

        def shows_classes(picture: np.ndarray) -> bool:
            colours, counts = np.unique(picture.reshape(-1, 3), axis=0, return_counts=True)
            share = {tuple(int(v) for v in c): n / picture.shape[0] / picture.shape[1] for c, n in zip(colours, counts)}
            in_palette = sum(n for c, n in share.items() if c in palette)
            return in_palette > 0.9 and sum(n > 0.02 for c, n in share.items() if c in palette) >= 2

        window.wait_for(shows_classes, "the label colours")
        window.press("q")
        finished(proc)
    finally:
        proc.kill()


def test_window_keeps_the_aspect_ratio_and_closes_with_its_button(desktop: str, tiny_bundle: Path, video: Path,
                                                                  tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    proc = run_demo(tiny_bundle, "--source", video, "--loop", "--realtime", "--sink", "display://0",
                    "--stats-json", stats)
    try:
        window = Window(desktop)
        window.wait_for(lambda p: p.any(axis=2).mean() > 0.95, "the picture")
        window.resize(600, 200)  # wider than the picture: black bars left and right

        def letterboxed(picture: np.ndarray) -> bool:
            if picture.shape[:2] != (200, 600):
                return False
            columns = np.flatnonzero(picture.any(axis=(0, 2)))
            return columns.size > 0 and abs((columns[-1] + 1 - columns[0]) - 200 * SIZE[1] / SIZE[0]) <= 4 \
                and abs(columns[0] - (600 - columns.size) / 2) <= 4

        window.wait_for(letterboxed, "the picture at its aspect ratio after a resize")
        window.close()
        frames = finished(proc)
    finally:
        proc.kill()
    assert json.loads(stats.read_text())["frames_out"] == frames > 0


def test_window_until_max_frames(desktop: str, tiny_bundle: Path, video: Path) -> None:
    proc = run_demo(tiny_bundle, "--source", video, "--loop", "--realtime", "--sink", "display://0",
                    "--max-frames", 30)
    try:
        Window(desktop)
        assert finished(proc) == 30
    finally:
        proc.kill()
