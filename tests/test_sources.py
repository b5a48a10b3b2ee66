"""Frame sources: files, image folders, globs, pacing, flips, errors and reconnecting streams."""
from __future__ import annotations

import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.runtime import sources
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.sources import FLIPS, flip_image, open_source

SIZE = (72, 104)  # frames (H, W): not the model's 64x96, so resizing is exercised


def make_image(i: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth, frame-dependent BGR test picture (JPEG/MPEG-friendly)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    b = 127 + 120 * np.sin(x / 9.0 + i * 0.7)
    g = 127 + 120 * np.cos(y / 7.0 - i * 0.5)
    r = (x + y + 20 * i) % 256
    return np.dstack([b, g, r]).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(6):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), make_image(i))
    (folder / "notes.txt").write_text("not an image")
    return folder


def write_video(path: Path, frames: int, fps: float = 25.0) -> Path:
    """An mp4v file of `frames` test pictures."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE[1], SIZE[0]))
    for i in range(frames):
        writer.write(make_image(i))
    writer.release()
    return path


def failed_reads(path: Path) -> list[int]:
    """Lengths of the runs of failed reads OpenCV meets before the container's frame count."""
    cap = cv2.VideoCapture(str(path))
    count, position, runs, run = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0, [], 0
    while position < count:
        ok, _ = cap.read()
        position += 1
        if ok and run:
            runs.append(run)
        run = 0 if ok else run + 1
    return runs + ([run] if run else [])


def damage_video(clean: Path, out: Path, bad_in_a_row: range) -> Path:
    """A copy of `clean` with zeroed bytes where OpenCV then fails one run of reads of a length in
    `bad_in_a_row` (found by trying places and sizes: what a codec build fails on varies)."""
    data = clean.read_bytes()
    for size in (1000, 2000, 4000, 8000, 16000):
        for at in np.linspace(0.3, 0.7, 9):
            start = int(len(data) * at)
            out.write_bytes(data[:start] + bytes(size) + data[start + size:])
            runs = failed_reads(out)
            if len(runs) == 1 and runs[0] in bad_in_a_row:
                return out
    raise AssertionError(f"no damage of {clean} gives one run of {bad_in_a_row} failed reads")


@pytest.fixture(scope="module")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 12)


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, as OpenCV decodes it."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            return frames
        frames.append(image)


def test_video_file_gives_every_frame_with_index_and_time(video_file: Path) -> None:
    expected = decoded_frames(video_file)
    before = time.perf_counter()
    frames = list(open_source(video_file))
    assert len(frames) == len(expected) == 12
    assert [f.index for f in frames] == list(range(12))
    stamps = [f.timestamp for f in frames]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.perf_counter()
    for frame, image in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, image)
    assert open_source(f"file://{video_file}").fps == pytest.approx(25.0)


def test_image_folder_and_glob(image_dir: Path) -> None:
    expected = [cv2.imread(str(p)) for p in sorted(image_dir.glob("*.png"))]
    for uri in (str(image_dir), f"{image_dir}/f0*.png", f"file://{image_dir}/*.png"):
        frames = list(open_source(uri))
        assert len(frames) == len(expected), uri
        for frame, image in zip(frames, expected):
            np.testing.assert_array_equal(frame.image, image)
    single = list(open_source(image_dir / "f03.png"))
    assert len(single) == 1 and np.array_equal(single[0].image, expected[3])


def test_loop_replays_files(video_file: Path, image_dir: Path) -> None:
    for uri in (video_file, image_dir):
        with open_source(uri, loop=True) as source:
            frames = [source.read() for _ in range(20)]
        assert all(f is not None for f in frames)
        assert [f.index for f in frames] == list(range(20))


def test_realtime_paces_and_drops_for_a_slow_reader(image_dir: Path) -> None:
    start = time.perf_counter()
    frames = list(open_source(image_dir, realtime=True, fps=40))
    assert len(frames) == 6
    assert time.perf_counter() - start >= 5 / 40 * 0.9

    source = open_source(image_dir, realtime=True, fps=100, loop=True)
    assert source.live
    indices = []
    for _ in range(8):
        frame = source.read()
        indices.append(frame.index)
        time.sleep(0.03)  # a model slower than the frame rate
    source.close()
    assert indices == sorted(indices) and indices[-1] > 8
    assert source.dropped > 0 and source.dropped >= indices[-1] - len(indices)
    assert source.read() is None


@pytest.mark.parametrize("flip", sorted(FLIPS))
def test_flips(flip: str, image_dir: Path) -> None:
    image = cv2.imread(str(image_dir / "f00.png"))
    frame = next(iter(open_source(image_dir / "f00.png", flip=flip)))
    expected = {
        "none": image, "rotate-180": cv2.rotate(image, cv2.ROTATE_180),
        "clockwise": cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
        "counterclockwise": cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
        "horizontal": image[:, ::-1], "vertical": image[::-1],
        "upper-left-diagonal": image.transpose(1, 0, 2),
        "upper-right-diagonal": image[::-1, ::-1].transpose(1, 0, 2),
    }[flip]
    np.testing.assert_array_equal(frame.image, expected)
    np.testing.assert_array_equal(flip_image(image, FLIPS[flip]), expected)


def test_csi_pipeline_string() -> None:
    pipe = sources.csi_pipeline(1, 1280, 720, 30, FLIPS["rotate-180"])
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1280, height=(int)720" in pipe and "framerate=(fraction)30/1" in pipe
    assert "nvvidconv flip-method=2 ! video/x-raw, format=(string)BGRx ! videoconvert" in pipe
    assert pipe.endswith("appsink drop=1 max-buffers=1")


def _closed_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


@pytest.mark.parametrize("uri, message", [
    ("missing.mp4", "no such file or folder"),
    ("{empty}", "no images in folder"),
    ("{empty}/*.png", "no files match"),
    ("{notvideo}", "cannot open video file"),
    ("gopher://host/x", "unknown source scheme"),
    ("http://127.0.0.1:{port}/stream.mjpg", "cannot open stream"),
])
def test_unopenable_sources_are_one_line_errors(uri: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notvideo.mp4").write_text("not a video")
    uri = uri.format(empty=tmp_path / "empty", notvideo=tmp_path / "notvideo.mp4", port=_closed_port())
    with pytest.raises(EdgesegError, match=message) as info:
        open_source(uri)
    assert uri in str(info.value) and "\n" not in str(info.value)


class FlakyMjpegServer:
    """Serves an MJPEG stream that fails after `per_connection` frames: drops the connection, or stalls."""

    def __init__(self, per_connection: int, stall: bool):
        self.connections = 0
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(per_connection):
                    jpeg = cv2.imencode(".jpg", make_image(i))[1].tobytes()
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    self.wfile.write(head + jpeg + b"\r\n")
                    time.sleep(0.01)
                if stall:
                    outer.done.wait(30)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "STREAM_TIMEOUT_MS", 1000)
    monkeypatch.setattr(sources, "BACKOFF_S", (0.05, 0.2))


@pytest.mark.parametrize("stall", [False, True], ids=["dropped", "stalled"])
def test_failing_stream_is_reopened(stall: bool, fast_backoff: None) -> None:
    server = FlakyMjpegServer(per_connection=5, stall=stall)
    try:
        with open_source(server.url) as source:
            assert source.live
            frames = []
            deadline = time.monotonic() + 20
            while len(frames) < 12 and time.monotonic() < deadline:
                frame = source.read()
                assert frame is not None
                frames.append(frame)
            assert len(frames) == 12
            assert frames[0].image.shape == (*SIZE, 3)
            assert source.reconnects >= 2 and server.connections >= 3
    finally:
        server.close()


def test_closing_wakes_a_blocked_reader(fast_backoff: None) -> None:
    server = FlakyMjpegServer(per_connection=2, stall=True)
    source = open_source(server.url)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(iter(source.read, None)))
    reader.start()
    time.sleep(0.3)  # the stream has stalled: the reader waits
    start = time.monotonic()
    source.close()
    reader.join(5)
    server.close()
    assert not reader.is_alive() and time.monotonic() - start < 2.5
    assert 1 <= len(got) <= 2


def test_iterating_to_the_end_closes(video_file: Path) -> None:
    source = open_source(video_file)
    assert len(list(source)) == 12
    assert source.read() is None


class BufferedStream(sources.Source):
    """A live stream that had `buffered` frames waiting when it was opened, then gives one per 1/fps s."""

    def __init__(self, buffered: int, live: int, fps: float):
        super().__init__("buffered://", fps)
        self._buffered, self._total = buffered, buffered + live

    def read(self) -> sources.Frame | None:
        if self._index == self._total or (self._index >= self._buffered and self._closing.wait(1 / self.fps)):
            return None
        return self._frame(make_image(self._index))


def test_a_streams_backlog_is_skipped_not_dropped() -> None:
    source = sources.LatestFrameSource(BufferedStream(buffered=20, live=10, fps=25))
    frames = list(source)
    assert source.backlog >= 18  # (a busy machine may delay the reader past a live frame: a real drop)
    assert len(frames) + source.backlog + source.dropped == 30
    assert frames[0].index == 0 and frames[-1].index == len(frames) + source.dropped - 1  # gaps: drops only
    np.testing.assert_array_equal(frames[-1].image, make_image(29))


def test_undecodable_images_are_skipped_and_counted(image_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    shutil.copytree(image_dir, folder)
    png = (folder / "f02.png").read_bytes()
    (folder / "f02a.png").write_bytes(png[: len(png) // 2])  # truncated
    (folder / "f04a.png").write_text("not an image")
    source = open_source(folder)
    frames = list(source)
    expected = [cv2.imread(str(p)) for p in sorted(image_dir.glob("*.png"))]
    assert len(frames) == len(expected) == 6 and source.bad_frames == 2
    assert [f.index for f in frames] == list(range(6))
    for frame, image in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, image)


def test_undecodable_video_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    clean = write_video(tmp_path / "clean.mp4", 60)
    damaged = damage_video(clean, tmp_path / "damaged.mp4", range(1, sources.MAX_BAD_FRAMES))
    [bad] = failed_reads(damaged)
    source = open_source(damaged)
    frames = list(source)
    assert source.recorded and source.bad_frames == bad and len(frames) == 60 - bad
    assert [f.index for f in frames] == list(range(60 - bad))
    clean_source = open_source(clean)
    assert len(list(clean_source)) == 60 and clean_source.bad_frames == 0


def test_a_long_run_of_undecodable_video_frames_stops_the_source(tmp_path: Path) -> None:
    clean = write_video(tmp_path / "clean.mp4", 60)
    damaged = damage_video(clean, tmp_path / "damaged.mp4", range(sources.MAX_BAD_FRAMES, 60))
    with pytest.raises(EdgesegError, match=f"{sources.MAX_BAD_FRAMES} undecodable frames in a row") as info:
        list(open_source(damaged))
    assert re.match(rf"{re.escape(str(damaged))}: frame \d+ of 60 cannot be decoded", str(info.value))


def test_too_many_bad_images_in_a_row_stop_the_source(image_dir: Path, tmp_path: Path) -> None:
    shutil.copy(image_dir / "f00.png", tmp_path / "00.png")
    for i in range(1, sources.MAX_BAD_FRAMES + 3):
        (tmp_path / f"{i:02d}.png").write_text("not an image")
    source = open_source(tmp_path)
    assert source.read() is not None
    with pytest.raises(EdgesegError, match=f"{sources.MAX_BAD_FRAMES} undecodable frames in a row") as info:
        source.read()
    assert str(info.value).startswith(f"{tmp_path / f'{sources.MAX_BAD_FRAMES:02d}.png'}: cannot decode image")
    assert source.bad_frames == sources.MAX_BAD_FRAMES
