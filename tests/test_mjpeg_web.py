"""The http:// sink: MJPEG read by a raw HTTP client and by OpenCV, JSON endpoints, and the web page
in headless Chromium driven over the DevTools protocol (a minimal stdlib websocket client below)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.error import HTTPError
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from test_sources import SIZE, write_video

from edgeseg.runtime import Pipeline, Segmenter, open_sink, open_source
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.sinks import MjpegSink
from edgeseg.runtime.stats import Stats

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class Served:
    url: str
    seg: Segmenter
    pipeline: Pipeline


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A live pipeline (a looping file played at 30 FPS) serving on a free port."""
    video = write_video(tmp_path_factory.mktemp("video") / "in.mp4", 20)
    seg = Segmenter(tiny_bundle)
    stats = Stats()
    sink = open_sink("http://127.0.0.1:0", legend=seg.legend, stats=stats.live)
    assert isinstance(sink, MjpegSink)
    pipeline = Pipeline(seg, open_source(video, realtime=True, fps=30, loop=True), sink, stats=stats)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    yield Served(sink.url, seg, pipeline)
    pipeline.stop()
    thread.join(10)
    assert not thread.is_alive()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def read_parts(url: str, count: int) -> list[bytes]:
    """`count` JPEG parts of a multipart/x-mixed-replace stream, parsed by hand."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path)
    response = conn.getresponse()
    assert response.status == 200
    content_type, _, boundary = response.getheader("Content-Type").partition("; boundary=")
    assert content_type == "multipart/x-mixed-replace"
    jpegs = []
    while len(jpegs) < count:
        line = response.readline()
        if not line.strip():
            continue
        assert line.strip() == f"--{boundary}".encode()
        headers = {}
        while (line := response.readline().strip()):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        jpegs.append(response.read(int(headers["content-length"])))
    conn.close()
    return jpegs


def test_stream_read_by_an_http_client(served: Served) -> None:
    jpegs = read_parts(f"{served.url}/stream.mjpg", 4)
    images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    assert all(image.shape == (*SIZE, 3) for image in images)
    assert len({j for j in jpegs}) == 4  # every part is a new frame


def test_stream_read_by_opencv(served: Served) -> None:
    cap = cv2.VideoCapture(f"{served.url}/stream.mjpg")
    assert cap.isOpened()
    images = [cap.read()[1] for _ in range(5)]
    cap.release()
    assert all(image is not None and image.shape == (*SIZE, 3) for image in images)


def test_stats_and_info(served: Served) -> None:
    with urllib.request.urlopen(f"{served.url}/stats.json", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        first = json.load(response)
    time.sleep(0.5)
    second = get_json(f"{served.url}/stats.json")
    assert second["frames_out"] > first["frames_out"] > 0
    assert second["fps"] > 0 and second["latency"]["p50_ms"] > 0 and "dropped" in second
    assert {"capture", "infer", "render", "sink"} <= set(second["stages"])
    legend = get_json(f"{served.url}/info.json")["legend"]
    assert [(item["name"], tuple(item["color"])) for item in legend] == served.seg.legend
    page = urllib.request.urlopen(f"{served.url}/", timeout=10).read().decode()
    assert 'src="stream.mjpg"' in page and "stats.json" in page
    with pytest.raises(HTTPError, match="404"):
        urllib.request.urlopen(f"{served.url}/nope", timeout=10)


def test_port_in_use_is_a_one_line_error(served: Served) -> None:
    port = urlsplit(served.url).port
    message = f"http://127.0.0.1:{port}: cannot listen \\(port {port} is already in use"
    with pytest.raises(EdgesegError, match=message):
        open_sink(f"http://127.0.0.1:{port}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        other = busy.getsockname()[1]
        with pytest.raises(EdgesegError, match="already in use"):
            open_sink(f"http://:{other}")  # no host: 127.0.0.1


class DevTools:
    """Just enough of a websocket client (RFC 6455) to call the Chrome DevTools protocol."""

    def __init__(self, ws_url: str):
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.stream = self.sock.makefile("rb")
        assert b" 101 " in self.stream.readline()
        while self.stream.readline() not in (b"\r\n", b""):
            pass
        self.last_id = 0

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else
                                  bytes([0x80 | 127]) + struct.pack("!Q", n))
        masked = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(header + mask + masked)

    def _receive(self) -> str:
        message = b""
        while True:
            first, second = self.stream.read(2)
            n = second & 0x7F
            if n >= 126:
                n = struct.unpack("!H" if n == 126 else "!Q", self.stream.read(2 if n == 126 else 8))[0]
            payload = self.stream.read(n)
            if first & 0x0F == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            message += payload
            if first & 0x80:
                return message.decode()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self._send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._receive())
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


PAGE_STATE = """(() => {
  const img = document.getElementById("stream");
  if (!img || !document.getElementById("legend")) return null;  // still navigating
  let checksum = null;
  if (img.naturalWidth > 0) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    checksum = 0;
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (const v of pixels) checksum = (checksum * 31 + v) >>> 0;
  }
  const text = (id) => document.getElementById(id).textContent;
  return {
    width: img.naturalWidth, height: img.naturalHeight, checksum,
    framesOut: Number(text("frames-out")) || 0, fps: Number(text("fps")) || 0, latency: text("latency"),
    dropped: text("dropped"),
    stages: [...document.querySelectorAll("#stages td:first-child")].map((td) => td.textContent),
    legend: [...document.querySelectorAll("#legend li")]
      .map((li) => [li.textContent, li.firstChild.style.background]),
    state: text("state"),
  };
})()"""


def wait_for(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not ok(value := get()):
        assert time.monotonic() < deadline, f"timed out; last value: {value}"
        time.sleep(0.2)
    return value


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium with a DevTools connection to its (blank) page."""
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        port = wait_for(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], bool)
        targets = wait_for(lambda: get_json(f"http://127.0.0.1:{port}/json/list"),
                           lambda ts: any(t["type"] == "page" for t in ts))
        devtools = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        yield devtools
        devtools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_web_page_shows_live_stream_stats_and_legend(served: Served, chromium: DevTools) -> None:
    chromium.call("Page.navigate", url=f"{served.url}/")

    def state() -> dict[str, Any] | None:
        return chromium.evaluate(PAGE_STATE)

    first = wait_for(state, lambda s: s is not None and s["width"] > 0 and s["framesOut"] > 0 and s["legend"])
    assert (first["width"], first["height"]) == (SIZE[1], SIZE[0])
    # Later: more frames counted, and a different picture in the <img>.
    second = wait_for(state, lambda s: s["framesOut"] > first["framesOut"] + 10
                      and s["checksum"] != first["checksum"])
    assert second["state"] == "live" and second["fps"] > 0 and second["dropped"].isdigit()
    assert {"infer", "render"} <= set(second["stages"]) and "/" in second["latency"]
    assert [name for name, _ in second["legend"]] == served.seg.classes
    colours = [f"rgb({r}, {g}, {b})" for _, (r, g, b) in served.seg.legend]
    assert [colour for _, colour in second["legend"]] == colours


GEOMETRY = """(() => {
  const img = document.getElementById("stream");
  if (!img || img.naturalWidth === 0) return null;
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
  const swatch = document.querySelector("#legend .swatch");
  if (!swatch) return null;
  return {
    natural: [img.naturalWidth, img.naturalHeight], img: box(img), view: box(img.parentElement),
    header: box(document.querySelector("header")), aside: box(document.querySelector("aside")),
    page: getComputedStyle(document.body).backgroundColor, border: getComputedStyle(swatch).borderTopColor,
    text: getComputedStyle(swatch.parentElement).color,
  };
})()"""


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """WCAG contrast ratio of two sRGB colours."""
    def luminance(c: tuple[int, ...]) -> float:
        lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in (x / 255 for x in c)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("window", [(1280, 900), (1280, 480), (560, 900)])
def test_web_page_shows_the_frame_at_its_aspect_ratio_filling_the_space(window: tuple[int, int], served: Served,
                                                                        chromium: DevTools) -> None:
    """Measured on a screenshot: the frame keeps its aspect ratio and grows to the space beside (or, on a
    narrow window, above) the stats, up to the window's height; the legend stands out on the dark page."""
    width, height = window
    chromium.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
    chromium.call("Page.navigate", url=f"{served.url}/")
    wait_for(lambda: chromium.evaluate(GEOMETRY), lambda g: g is not None)
    time.sleep(1.0)  # the page fits the picture to its first frame within its next poll (every 0.5 s)
    geo = chromium.evaluate(GEOMETRY)
    shot = cv2.imdecode(np.frombuffer(base64.b64decode(
        chromium.call("Page.captureScreenshot", format="png")["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[:2] == (height, width)
    # the frame on screen: what differs from the page's background in the video's column, below the header
    page = np.array(_rgb(geo["page"])[::-1], np.int16)
    left, top, view_w, view_h = geo["view"]
    region = shot[int(top):int(top + view_h), int(left):int(left + view_w)].astype(np.int16)
    rows, cols = np.nonzero(np.abs(region - page).max(axis=2) > 8)
    shown_w, shown_h = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    natural_w, natural_h = geo["natural"]
    assert abs((shown_w / shown_h) / (natural_w / natural_h) - 1) < 0.02, (shown_w, shown_h, geo)
    assert abs(shown_w - geo["img"][2]) <= 2 and abs(shown_h - geo["img"][3]) <= 2, (shown_w, shown_h, geo)
    # scaled up to the space it has: as wide as the column, or as high as the window allows
    assert shown_w > 3 * natural_w
    assert shown_w >= view_w - 2 or shown_h >= view_h - 2, (shown_w, shown_h, geo)
    assert geo["img"][1] + geo["img"][3] <= height  # no scrolling to see all of it
    background = _rgb(geo["page"])
    assert _contrast(_rgb(geo["border"]), background) >= 3 and _contrast(_rgb(geo["text"]), background) >= 7
