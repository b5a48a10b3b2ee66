"""IP cameras: `edgeseg demo` on a real RTSP server (GStreamer's rtsp-server, H.264, live 15 fps) on 127.0.0.1.

The server runs in `rtsp_server.py` under a Python with GStreamer's GObject bindings, usually Debian's
own (`.ci/run` installs them); without one these tests skip.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_demo_cli import DEMO, demo, free_port

FPS = 15
SIZE = "320x240"  # small, so that encoding and decoding leave the machine's cores to the pipeline
SERVER = Path(__file__).with_name("rtsp_server.py")
PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "assert all(Gst.ElementFactory.find(e) for e in ('videotestsrc', 'x264enc', 'rtph264pay'))")
NEEDS = ("GStreamer's RTSP server with Python GObject bindings (Debian: python3-gi gir1.2-gst-rtsp-server-1.0 "
         "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)")


def _gi_python() -> str | None:
    """A Python that can run `rtsp_server.py`: this one or the system's."""
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        if Path(python).exists() and subprocess.run([python, "-c", PROBE], capture_output=True,
                                                    timeout=60, check=False).returncode == 0:
            return python
    return None


class RtspServer:
    """`rtsp_server.py` on a fixed port, stopped and started again at will."""

    def __init__(self, python: str):
        self.python = python
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([self.python, str(SERVER), str(self.port), "--fps", str(FPS), "--size", SIZE],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        assert line.strip() == "ready", self._proc.communicate(timeout=10)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.communicate(timeout=10)
            self._proc = None


@pytest.fixture(scope="module")
def gi_python() -> str:
    python = _gi_python()
    if python is None:
        pytest.skip(f"needs {NEEDS}")
    return python


@pytest.fixture
def server(gi_python: str) -> Iterator[RtspServer]:
    rtsp = RtspServer(gi_python)
    rtsp.start()
    try:
        yield rtsp
    finally:
        rtsp.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_live_stream_at_source_rate_without_drops(transport: str, server: RtspServer, tiny_bundle: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame of the live stream is shown, from the first (its start-up backlog is skipped, not dropped).

    A machine busy with other work can stall the pipeline for longer than a frame interval now and then,
    so the run gets a second try; a start that drops the backlog, or a pipeline slower than the stream,
    fails both."""
    if transport == "tcp":  # README's line for networks that block UDP
        monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    stats = tmp_path / "stats.json"
    for _ in range(2):
        result = demo(tiny_bundle, "--source", server.url, "--sink", "null", "--max-frames", 3 * FPS,
                      "--stats-json", stats, "--threads", 1)
        assert result.returncode == 0, result.stderr
        report = json.loads(stats.read_text())
        assert report["frames_out"] == 3 * FPS, report
        if report["dropped"] == 0 and FPS * 0.9 <= report["fps"] <= FPS * 1.1:
            break
    assert report["frames_in"] == 3 * FPS and report["dropped"] == 0, report
    assert FPS * 0.9 <= report["fps"] <= FPS * 1.1, report
    assert report["latency"]["p50_ms"] < 2 * 1000 / FPS, report


def _live_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5) as response:
        return json.load(response)


def _wait_for(port: int, ready, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = _live_stats(port)
        except OSError:
            stats = {}
        if stats and ready(stats):
            return stats
        assert time.monotonic() < deadline, f"no {what} within {timeout} s: {stats}"
        time.sleep(0.2)


def test_reconnects_after_the_server_restarts(server: RtspServer, tiny_bundle: Path, tmp_path: Path) -> None:
    port, stats = free_port(), tmp_path / "stats.json"
    proc = subprocess.Popen([*DEMO, tiny_bundle, "--source", server.url, "--sink", f"http://127.0.0.1:{port}",
                             "--stats-json", stats, "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before = _wait_for(port, lambda s: s["frames_out"] >= FPS, "frames")
        server.stop()
        time.sleep(1.0)
        stalled = _live_stats(port)["frames_out"]
        time.sleep(1.0)
        assert _live_stats(port)["frames_out"] == stalled  # nothing flows while the server is down
        server.start()
        after = _wait_for(port, lambda s: s["reconnects"] >= 1 and s["frames_out"] >= stalled + FPS,
                          "frames after the restart")
        assert after["frames_out"] > before["frames_out"]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    report = json.loads(stats.read_text())
    assert report["reconnects"] >= 1 and report["frames_out"] >= stalled + FPS, report
