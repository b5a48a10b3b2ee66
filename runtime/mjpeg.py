"""A small HTTP server for watching a pipeline from a browser or another program.

- `/`            the web page (`web/index.html`): live stream, class legend, live stats;
- `/stream.mjpg` an MJPEG stream (multipart/x-mixed-replace) of the newest frames;
- `/stats.json`  the live statistics; `/info.json` the legend.

Each viewer gets the newest frame when it is ready for one, so a slow viewer skips frames instead
of delaying the pipeline or the other viewers.
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from .errors import EdgesegError

log = logging.getLogger(__name__)

BOUNDARY = "frame"
WEB_DIR = Path(__file__).parent / "web"
WILDCARD_HOSTS = ("0.0.0.0", "")
#: A documentation-only address (TEST-NET-1): "connecting" a UDP socket to it picks the outgoing
#: interface without sending anything.
_PROBE_ADDRESS = ("192.0.2.1", 9)


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses other machines may reach it at (not loopback), best first."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_PROBE_ADDRESS)
            found.append(probe.getsockname()[0])
        except OSError:
            pass  # no route out
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    return [a for a in dict.fromkeys(found) if not a.startswith("127.") and a not in WILDCARD_HOSTS]


class MjpegServer:
    """Serves published JPEG frames, the web page and stats on `host:port` (port 0: any free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *,
                 legend: Sequence[tuple[str, Sequence[int]]] = (),
                 stats: Callable[[], dict[str, Any]] | None = None):
        try:
            self._httpd = _HTTPServer((host, port), _Handler)
        except OSError as exc:
            reason = f"port {port} is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise EdgesegError(f"http://{host}:{port}: cannot listen ({reason})") from None
        self._httpd.app = self
        self.page = (WEB_DIR / "index.html").read_bytes()
        self.info = json.dumps({"legend": [{"name": n, "color": list(c)} for n, c in legend]}).encode()
        self._stats = stats or dict
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._closed = False
        self.viewers = 0
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mjpeg-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def urls(self) -> list[str]:
        """URLs a browser can open: `url`, or for a server on all interfaces (0.0.0.0) this machine's."""
        host, port = self._httpd.server_address[:2]
        if host not in WILDCARD_HOSTS:
            return [self.url]
        return [f"http://{address}:{port}" for address in ("127.0.0.1", *host_addresses())]

    def publish(self, jpeg: bytes) -> None:
        """Make `jpeg` the newest frame and wake the viewers."""
        with self._cond:
            self._jpeg = jpeg
            self._seq += 1
            self._cond.notify_all()

    def next_frame(self, after: int, timeout: float = 1.0) -> tuple[bytes | None, int]:
        """The newest frame once it is newer than `after` (None on timeout or close), and its number."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._seq > after, timeout)
            if self._closed or self._seq <= after:
                return None, after
            return self._jpeg, self._seq

    @contextmanager
    def viewer(self) -> Iterator[None]:
        """Counts a stream viewer in `viewers` while it is connected."""
        with self._cond:
            self.viewers += 1
        try:
            yield
        finally:
            with self._cond:
                self.viewers -= 1

    @property
    def closed(self) -> bool:
        return self._closed

    def stats_json(self) -> bytes:
        return json.dumps({**self._stats(), "viewers": self.viewers}).encode()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # closing does not wait for viewers that stopped reading
    app: MjpegServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 10  # a viewer that stops reading for this long is dropped

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(app.page, "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(app.stats_json(), "application/json")
            elif path == "/info.json":
                self._send(app.info, "application/json")
            elif path == "/stream.mjpg":
                self._stream(app)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the viewer went away

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, app: MjpegServer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with app.viewer():
            seq = 0
            while not app.closed:
                jpeg, seq = app.next_frame(seq)
                if jpeg is not None:
                    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
