"""`edgeseg demo` as users run it: a subprocess, real files, one-line errors, SIGTERM / Ctrl-C."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_sources import decoded_frames, write_video

from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.sinks import has_display

DEMO = [sys.executable, "-m", "edgeseg.cli.app", "demo"]
SUMMARY = re.compile(r"^(\d+) frames in [\d.]+ s: [\d.]+ FPS, latency p50 [\d.]+ ms, (\d+) dropped -> (.+)$")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "in.mp4", 16)


def demo(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_file_to_mp4_with_stats_json(tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    result = demo(tiny_bundle, "--source", video, "--sink", out, "--stats-json", stats, "--threads", 1)
    assert result.returncode == 0, result.stderr
    match = SUMMARY.match(result.stdout.strip().splitlines()[-1])
    assert match and match.groups() == ("16", "0", str(out))
    assert len(decoded_frames(out)) == 16
    report = json.loads(stats.read_text())
    assert report["frames_in"] == report["frames_out"] == 16 and report["dropped"] == 0 and report["fps"] > 0
    assert set(report["stages"]) == {"capture", "preprocess", "infer", "postprocess", "render", "sink"}
    for times in (*report["stages"].values(), report["latency"]):
        assert {"p50_ms", "p90_ms", "p99_ms"} <= set(times)


def test_mask_mode_to_png_folder(tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    result = demo(tiny_bundle, "--source", video, "--sink", f"{tmp_path}/masks/", "--mode", "mask",
                  "--no-legend", "--no-text", "--max-frames", 5)
    assert result.returncode == 0, result.stderr
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 5
    palette = {tuple(c[::-1]) for c in read_manifest(tiny_bundle).palette}
    colours = {tuple(c) for c in np.unique(cv2.imread(str(masks[0])).reshape(-1, 3), axis=0)}
    assert colours <= palette


def _listening_port() -> tuple[socket.socket, int]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy, busy.getsockname()[1]


@pytest.mark.parametrize("case", ["missing source", "bad bundle", "broken manifest", "port in use",
                                  "unknown sink", "unknown artifact", "no display"])
def test_user_errors_are_one_line(case: str, tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    if case == "no display" and has_display():
        pytest.skip("a display is available here")
    busy, port = _listening_port()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "edgeseg.json").write_text("{not json")
    bundle, source, sink, extra, message = {
        "missing source": (tiny_bundle, tmp_path / "nope.mp4", "null", [], "nope.mp4: no such file"),
        "bad bundle": (tmp_path, video, "null", [], "not a bundle"),
        "broken manifest": (tmp_path / "broken", video, "null", [], "unreadable manifest"),
        "port in use": (tiny_bundle, video, f"http://127.0.0.1:{port}", [], f"port {port} is already in use"),
        "unknown sink": (tiny_bundle, video, "out.xyz", [], "unknown sink"),
        "unknown artifact": (tiny_bundle, video, "null", ["--artifact", "gpu"], "no artifact 'gpu'"),
        "no display": (tiny_bundle, video, "display://0", [], "no display"),
    }[case]
    with busy:
        result = demo(bundle, "--source", source, "--sink", sink, *extra)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finalises_the_video(signum: int, tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([*DEMO, tiny_bundle, "--source", video, "--loop", "--realtime", "--sink", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".out.mp4.*")):  # the writer has opened
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        assert not out.exists()  # written under a temporary name until finalised
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    match = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert match and int(match[1]) > 0
    assert len(decoded_frames(out)) == int(match[1])
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_shipped_model_on_the_shipped_sample_clip(tmp_path: Path) -> None:
    """What a newcomer runs first, with no camera and no download: the CamVid bundle on the sample clip."""
    stats = tmp_path / "stats.json"
    result = demo("camvid", "--source", "sample", "--sink", "null", "--max-frames", 6, "--threads", 2,
                  "--stats-json", stats)
    assert result.returncode == 0, result.stderr
    match = SUMMARY.match(result.stdout.strip().splitlines()[-1])
    assert match and match.groups() == ("6", "0", "null")
    assert json.loads(stats.read_text())["frames_out"] == 6
    assert "XNNPACK" not in result.stdout + result.stderr  # the interpreter's chatter stays out of sight
    verbose = subprocess.run([*DEMO[:-1], "--verbose", "demo", "camvid", "--source", "sample", "--sink", "null",
                              "--max-frames", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stdout + verbose.stderr


def test_sample_clip_is_a_few_seconds_of_camvid_frames() -> None:
    from edgeseg.runtime.sources import open_source, sample_clip

    clip = sample_clip()
    assert clip.stat().st_size < 1.5 * 2**20
    source = open_source("sample")
    try:
        frames = list(source)
    finally:
        source.close()
    assert len(frames) / source.fps >= 2.5 and frames[0].image.shape == (360, 480, 3)
