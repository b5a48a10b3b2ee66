"""`edgeseg demo` as users run it: a subprocess, real files, one-line errors, SIGTERM / Ctrl-C."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from test_sources import damage_video, decoded_frames, failed_reads, make_image, write_video

from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.sources import MAX_BAD_FRAMES
from edgeseg.runtime.window import has_display

DEMO = [sys.executable, "-m", "edgeseg.cli.app", "demo"]
#: The one latency schema: each stage's and the capture-to-display latency (as in bench JSON and report.json).
LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps"}
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
        assert set(times) == LATENCY_KEYS


def test_mask_mode_to_png_folder(tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    result = demo(tiny_bundle, "--source", video, "--sink", f"{tmp_path}/masks/", "--mode", "mask",
                  "--no-legend", "--no-text", "--max-frames", 5)
    assert result.returncode == 0, result.stderr
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 5
    palette = {tuple(c[::-1]) for c in read_manifest(tiny_bundle).palette}
    colours = {tuple(c) for c in np.unique(cv2.imread(str(masks[0])).reshape(-1, 3), axis=0)}
    assert colours <= palette


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def _watch_urls(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[list[str], list[str]]:
    """The URLs of the `watch:` lines `proc` prints, and the lines before them."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    while not any(line.startswith("watch: ") for line in seen) or not lines.empty():
        seen.append(lines.get(timeout=timeout).rstrip("\n"))
        time.sleep(0.2)  # the next watch line, if any, comes with this one
    urls = [line.split()[1].rstrip("/") for line in seen if line.startswith("watch: ")]
    return urls, [line for line in seen if not line.startswith("watch: ")]


def test_auto_sink_without_a_display_serves_the_web_page(tiny_bundle: Path, video: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    with socket.socket() as default_port:  # 8080 taken (if it is not already): any free port instead
        with contextlib.suppress(OSError):
            default_port.bind(("127.0.0.1", 8080))
            default_port.listen()
        proc = subprocess.Popen([*DEMO, tiny_bundle, "--source", video, "--loop", "--realtime"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            (url,), before = _watch_urls(proc)
            assert url.startswith("http://127.0.0.1:") and not url.endswith(":8080")
            assert "no display (DISPLAY is not set)" in before[-1] and "--sink http://0.0.0.0:8080" in before[-1]
            with urllib.request.urlopen(f"{url}/", timeout=10) as page:
                assert b"<html" in page.read().lower()
            deadline = time.monotonic() + 30
            while json.load(urllib.request.urlopen(f"{url}/stats.json", timeout=10))["frames_out"] < 5:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr


def test_all_interfaces_sink_prints_addresses_to_browse(tiny_bundle: Path, video: Path) -> None:
    proc = subprocess.Popen([*DEMO, tiny_bundle, "--source", video, "--sink", "http://0.0.0.0:0", "--loop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls, _ = _watch_urls(proc)
        hosts = [urlsplit(url).hostname for url in urls]
        assert hosts[0] == "127.0.0.1" and "0.0.0.0" not in hosts
        assert len({urlsplit(url).port for url in urls}) == 1
        for url in urls:  # each is an address of this machine that the viewer answers on
            with urllib.request.urlopen(f"{url}/info.json", timeout=10) as info:
                assert "legend" in json.load(info)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def _frames_folder(path: Path, good: int, bad: dict[int, bytes]) -> Path:
    """`good` test pictures as PNGs 000.png, ..., with the files of `bad` (index -> bytes) in between."""
    path.mkdir()
    for i in range(good + len(bad)):
        if i in bad:
            (path / f"{i:03d}.png").write_bytes(bad[i])
        else:
            cv2.imwrite(str(path / f"{i:03d}.png"), make_image(i))
    return path


@pytest.mark.parametrize("accept", [False, True], ids=["damage-is-an-error", "skip-bad-frames"])
def test_bad_images_are_skipped_and_counted(tiny_bundle: Path, tmp_path: Path, accept: bool) -> None:
    png = cv2.imencode(".png", make_image(0))[1].tobytes()
    frames = _frames_folder(tmp_path / "in", 8, {4: png[: len(png) // 2], 7: b"not an image"})
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    result = demo(tiny_bundle, "--source", frames, "--sink", f"{out}/", "--stats-json", stats,
                  *(["--skip-bad-frames"] if accept else []))
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    report = json.loads(stats.read_text())
    assert report["frames_out"] == 8 and report["bad_frames"] == 2
    assert f"{frames / '004.png'}: cannot decode image; skipped" in result.stderr
    assert "Traceback" not in result.stderr
    if accept:
        assert result.returncode == 0 and "error" not in report, result.stderr
    else:
        assert result.returncode == 2
        expected = f"{frames}: 2 undecodable frame(s) skipped (8 frames written)"
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {expected}"), result.stderr
        assert report["error"].startswith(expected)


@pytest.mark.parametrize("accept", [False, True], ids=["damage-is-an-error", "skip-bad-frames"])
def test_a_damaged_video_is_not_a_success_unless_accepted(tiny_bundle: Path, tmp_path: Path,
                                                          accept: bool) -> None:
    clean = write_video(tmp_path / "clean.mp4", 60)
    damaged = damage_video(clean, tmp_path / "damaged.mp4", range(1, MAX_BAD_FRAMES))
    [bad] = failed_reads(damaged)
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    result = demo(tiny_bundle, "--source", damaged, "--sink", out, "--stats-json", stats,
                  *(["--skip-bad-frames"] if accept else []))
    assert "Traceback" not in result.stderr
    assert len(decoded_frames(out)) == 60 - bad
    report = json.loads(stats.read_text())
    assert report["frames_out"] == 60 - bad and report["bad_frames"] == bad
    assert result.returncode == (0 if accept else 2), result.stderr
    if not accept:
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {damaged}: {bad} undecodable frame(s) skipped ({60 - bad} frames written); "
            "pass --skip-bad-frames to accept a damaged input")


def test_stats_json_is_written_when_the_run_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    frames = _frames_folder(tmp_path / "in", 3, {i: b"not an image" for i in range(3, 3 + MAX_BAD_FRAMES)})
    stats = tmp_path / "stats.json"
    result = demo(tiny_bundle, "--source", frames, "--sink", "null", "--stats-json", stats)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "undecodable frames in a row" in lines[-1], result.stderr
    report = json.loads(stats.read_text())
    assert report["bad_frames"] == MAX_BAD_FRAMES and "undecodable frames in a row" in report["error"]
    assert report["frames_in"] == 3


def test_png_folder_sink_refuses_a_folder_with_files_unless_forced(tiny_bundle: Path, video: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("000000.png", "000099.png", ".partial.0badf00d.png", "notes.txt"):
        (out / name).write_bytes(b"old")
    result = demo(tiny_bundle, "--source", video, "--sink", f"{out}/", "--max-frames", 3)
    assert result.returncode != 0 and "folder is not empty (4 files); --force" in result.stderr
    assert len(list(out.iterdir())) == 4
    result = demo(tiny_bundle, "--source", video, "--sink", f"{out}/", "--max-frames", 3, "--force")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "notes.txt"]
    assert all(cv2.imread(str(out / f"{i:06d}.png")) is not None for i in range(3))


def test_killed_run_leaves_only_whole_pngs(tiny_bundle: Path, video: Path, tmp_path: Path) -> None:
    for kill in range(3):
        out = tmp_path / f"out{kill}"
        proc = subprocess.Popen([*DEMO, tiny_bundle, "--source", video, "--loop", "--sink", f"{out}/"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not out.is_dir() or len(list(out.iterdir())) < 10 + 7 * kill:  # killed at varying points
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        frames = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert frames == [f"{i:06d}.png" for i in range(len(frames))]
        assert all(cv2.imread(str(out / name)) is not None for name in frames), "a half-written PNG"


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
