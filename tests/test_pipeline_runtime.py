"""The real-time pipeline end to end on a real INT8 bundle: files in, files out, labels checked exactly."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_sources import SIZE, decoded_frames, make_image, write_video

from edgeseg.runtime import Pipeline, Segmenter, open_sink, open_source
from edgeseg.runtime.backends.base import load_runner
from edgeseg.runtime.render import Renderer
from edgeseg.runtime.sinks import Sink
from edgeseg.runtime.stats import Stats

STAGES = {"capture", "preprocess", "infer", "postprocess", "render", "sink"}


@pytest.fixture(scope="module")
def seg(tiny_bundle: Path) -> Segmenter:
    return Segmenter(tiny_bundle).activate()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "in.mp4", 16)


def labels_from_mask(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """Invert mask-mode rendering: BGR palette colours back to class indices."""
    assert len({tuple(c) for c in palette}) == len(palette), "palette colours must be distinct"
    labels = np.full(mask.shape[:2], 255, np.uint8)
    for k, (r, g, b) in enumerate(palette):
        labels[(mask == (b, g, r)).all(axis=2)] = k
    assert (labels != 255).all(), "mask has colours outside the palette"
    return labels


def test_segmenter_matches_the_runner(seg: Segmenter, tiny_bundle: Path) -> None:
    runner = load_runner(tiny_bundle).activate()
    for i in range(3):
        image = make_image(i)
        labels = seg.segment(image)
        assert labels.shape == SIZE and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, runner.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    overlay = seg.overlay(image, labels)
    assert overlay.shape == (*SIZE, 3) and not np.array_equal(overlay, image)
    assert [name for name, _ in seg.legend] == seg.classes


@pytest.mark.parametrize("sequential", [False, True], ids=["pipelined", "sequential"])
def test_file_to_png_masks_is_exact(sequential: bool, seg: Segmenter, video: Path, tiny_bundle: Path,
                                    tmp_path: Path) -> None:
    renderer = Renderer(seg.classes, seg.manifest.palette, mode="mask", legend=False)
    out = tmp_path / "masks"
    summary = Pipeline(seg, open_source(video), open_sink(f"{out}/"), renderer=renderer, text=False,
                       sequential=sequential).run()
    frames = decoded_frames(video)
    masks = sorted(out.glob("*.png"))
    assert summary["frames_in"] == summary["frames_out"] == len(masks) == len(frames) == 16
    assert summary["dropped"] == 0 and summary["mode"] == ("sequential" if sequential else "pipelined")
    runner = load_runner(tiny_bundle).activate()
    for frame, mask_file in zip(frames, masks):
        expected = runner.predict(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        labels = labels_from_mask(cv2.imread(str(mask_file)), seg.manifest.palette)
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("mode, width", [("overlay", SIZE[1]), ("side", 2 * SIZE[1])])
def test_file_to_video_file_gets_every_frame(mode: str, width: int, seg: Segmenter, video: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    renderer = Renderer(seg.classes, seg.manifest.palette, mode=mode)
    source = open_source(video)
    summary = Pipeline(seg, source, open_sink(out, fps=source.fps), renderer=renderer).run()
    assert summary["frames_out"] == 16
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    written = decoded_frames(out)
    assert len(written) == 16 and written[0].shape == (SIZE[0], width, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary file left


def test_glob_source_summary(seg: Segmenter, tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), make_image(i))
    summary = Pipeline(seg, open_source(f"{tmp_path}/*.jpg"), open_sink("null")).run()
    assert summary["frames_in"] == summary["frames_out"] == 5 and summary["dropped"] == 0
    assert set(summary["stages"]) == STAGES
    for times in (*summary["stages"].values(), summary["latency"]):
        assert 0 <= times["p50_ms"] <= times["p90_ms"] <= times["p99_ms"]
    assert summary["fps"] > 0 and summary["source"].endswith("*.jpg") and summary["sink"] == "null"


class SlowSink(Sink):
    """A sink slower than the camera: a live pipeline must drop frames, not queue them."""

    def __init__(self, delay: float):
        super().__init__("slow")
        self.delay = delay
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        time.sleep(self.delay)
        self.frames += 1


def test_live_source_drops_stale_frames(seg: Segmenter, video: Path) -> None:
    sink = SlowSink(0.03)
    source = open_source(video, realtime=True, fps=200, loop=True)
    summary = Pipeline(seg, source, sink, max_frames=40).run()
    assert summary["frames_out"] == sink.frames > 0
    assert summary["dropped"] > 0
    assert summary["frames_in"] == summary["frames_out"] + summary["dropped"]
    # Queued frames would wait behind each other; the newest-only channels keep latency near one frame.
    assert summary["latency"]["p50_ms"] < 4 * 1000 * sink.delay


class SlowInferSegmenter(Segmenter):
    """Inference that takes `delay` seconds more: the bottleneck stage, by a wide margin."""

    def __init__(self, bundle: Path, delay: float):
        super().__init__(bundle)
        self.delay = delay

    def infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().infer(batch)


def test_file_frames_are_read_just_in_time_for_inference(tiny_bundle: Path, video: Path) -> None:
    seg = SlowInferSegmenter(tiny_bundle, 0.03)
    summary = Pipeline(seg, open_source(video, loop=True), open_sink("null"), max_frames=40).run()
    assert summary["frames_out"] == 40 and summary["dropped"] == 0
    infer_ms = summary["stages"]["infer"]["p50_ms"]
    # Read ahead, each frame would wait a whole inference in the queue (latency about 2x infer);
    # read just in time it waits a fraction of one, and inference is still kept busy.
    assert summary["latency"]["p50_ms"] < 1.5 * infer_ms
    assert summary["fps"] > 0.8 * 1000 / infer_ms


def test_stop_finishes_and_finalises_the_video(seg: Segmenter, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.avi"
    stats = Stats()
    pipeline = Pipeline(seg, open_source(video, loop=True), open_sink(out), stats=stats)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(pipeline.run()))
    runner.start()
    deadline = time.monotonic() + 20
    while stats.live()["frames_out"] < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not out.exists()  # still being written under a temporary name
    pipeline.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert result["frames_out"] >= 30 and result["frames_in"] == result["frames_out"]
    assert len(decoded_frames(out)) == result["frames_out"]


class FailingSink(Sink):
    def __init__(self) -> None:
        super().__init__("failing")
        self.closed = False

    def write(self, image: np.ndarray) -> None:
        raise RuntimeError("disk full")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("sequential", [False, True], ids=["pipelined", "sequential"])
def test_a_stage_error_stops_everything(sequential: bool, seg: Segmenter, video: Path) -> None:
    threads = threading.active_count()
    sink = FailingSink()
    source = open_source(video, loop=True)
    with pytest.raises(RuntimeError, match="disk full"):
        Pipeline(seg, source, sink, sequential=sequential).run()
    assert sink.closed and source.read() is None
    assert threading.active_count() == threads


def test_render_modes() -> None:
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    image = make_image(0)
    labels = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 3).astype(np.uint8)
    mask = Renderer(["a", "b", "c"], palette, mode="mask", legend=False).render(image, labels)
    np.testing.assert_array_equal(mask, np.array(palette, np.uint8)[:, ::-1][labels])  # RGB palette, BGR out
    plain = Renderer(["a", "b", "c"], palette, alpha=0.0, legend=False).render(image, labels)
    np.testing.assert_array_equal(plain, image)
    side = Renderer(["a", "b", "c"], palette, mode="side", legend=False).render(image, labels)
    np.testing.assert_array_equal(side, np.hstack((image, mask)))
    legend = Renderer(["a", "b", "c"], palette, mode="mask").render(image, labels)
    changed = (legend != mask).any(axis=2)
    assert changed[-10:, -10:].any() and not changed[: SIZE[0] // 2, : SIZE[1] // 2].any()
    text = Renderer(["a", "b", "c"], palette, mode="mask", legend=False).render(image, labels, "9.9 FPS")
    assert (text != mask).any(axis=2)[:24, :60].any()
    with pytest.raises(ValueError, match="mode"):
        Renderer(["a"], [[0, 0, 0]], mode="blend")


def test_runtime_imports_are_cheap_and_never_tensorflow(tiny_bundle: Path) -> None:
    code = (
        "import sys\n"
        "import edgeseg.runtime\n"
        "assert 'cv2' not in sys.modules, 'importing edgeseg.runtime loaded OpenCV'\n"
        "import numpy as np\n"
        "from edgeseg.runtime import Pipeline, Segmenter, open_sink, open_source\n"
        "Segmenter(sys.argv[1]).segment(np.zeros((40, 50, 3), np.uint8))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')\n"
        "       or m in ('edgeseg.model', 'edgeseg.train', 'edgeseg.data')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
