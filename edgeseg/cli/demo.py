"""`edgeseg demo`: segment a camera, stream or file live and show, stream or record the result."""
# ruff: noqa: UP045 (typer evaluates these annotations at run time; `X | None` needs Python 3.10)
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from ..choices import DemoMode
from ..runtime.errors import EdgesegError


def _quiet_video_backends() -> None:
    """Silence FFmpeg's and OpenCV's own console messages: failures are reported as one line."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg first opens something
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _write_stats(path: str, report: dict) -> None:
    from ..rundir import atomic_write_text

    try:
        atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write ({exc.strerror})") from None


def demo(
    bundle: str = typer.Argument("camvid", help="Bundle folder or shipped bundle name (default: camvid)."),
    source: str = typer.Option(
        "0", "--source", "-s",
        help="Input URI: camera 0 or /dev/video0, csi://0, rtsp://..., http://... (MJPEG), a video file, "
             "an image folder or glob, or sample (a CamVid clip shipped in the package)."),
    sink: str = typer.Option(
        "auto", "--sink", "-o",
        help="Output URI: auto (a window where one can be shown, else the web page on 127.0.0.1:8080), "
             "display://0, out.mp4 / out.avi, dir/ (PNG images), http://HOST:PORT (MJPEG + web page; host "
             "127.0.0.1 unless given; 0.0.0.0 for other machines) or null."),
    mode: DemoMode = typer.Option(
        "overlay", help="overlay: labels blended on the frame; mask: labels only; side: frame and labels."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Weight of the label colours in overlay mode."),
    legend: bool = typer.Option(True, "--legend/--no-legend", help="Draw the class legend."),
    text: bool = typer.Option(True, "--text/--no-text", help="Draw FPS and latency on the frames."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference."),
    loop: bool = typer.Option(False, "--loop", help="Replay a video file or image folder forever."),
    realtime: bool = typer.Option(
        False, "--realtime",
        help="Play files at their frame rate (dropping frames if too slow), not as fast as possible."),
    width: Optional[int] = typer.Option(None, min=1, help="Capture width to request from a camera."),
    height: Optional[int] = typer.Option(None, min=1, help="Capture height to request from a camera."),
    fps: Optional[float] = typer.Option(
        None, min=1.0,
        help="Frame rate to request from a camera (and to play files at with --realtime)."),
    flip: str = typer.Option(
        "none", help="Flip or rotate frames (nvvidconv names: rotate-180, clockwise, horizontal, ...)."),
    max_frames: Optional[int] = typer.Option(
        None, min=1, help="Stop after writing this many frames to the sink (frames dropped on the way do not count)."),
    stats_json: Optional[str] = typer.Option(
        None, help="Write frame counts, FPS and p50/p90/p99 per stage and of latency to this JSON file "
                   "(also when the run fails, with its error)."),
    skip_bad_frames: bool = typer.Option(
        False, "--skip-bad-frames",
        help="Accept a damaged video file or image folder: its undecodable frames are skipped either way; "
             "without this flag the run then ends with an error."),
    force: bool = typer.Option(False, "--force", help="Write into an image folder that holds files (its frames are "
                                                      "replaced)."),
    artifact: Optional[str] = typer.Option(None, help="Bundle artifact to run (default: the manifest's)."),
) -> None:
    """Segment a live camera, stream or file in real time; show, stream or record the result.

    Stops at the end of the input, after --max-frames, or on Ctrl-C / SIGTERM (the output is finalised).
    """
    _quiet_video_backends()
    from ..rundir import check_writable
    from ..runtime.pipeline import Pipeline
    from ..runtime.render import Renderer
    from ..runtime.segmenter import Segmenter
    from ..runtime.sinks import DEFAULT_PORT, MjpegSink, open_sink
    from ..runtime.sources import open_source
    from ..runtime.stats import Stats
    from ..runtime.window import display_problem

    if stats_json is not None:
        check_writable(stats_json)
    seg = Segmenter(bundle, artifact=artifact, threads=threads)
    src = open_source(source, width=width, height=height, fps=fps, flip=flip, loop=loop, realtime=realtime)
    stats = Stats()
    try:
        out = open_sink(sink, fps=src.fps, legend=seg.legend, stats=stats.live, force=force)
    except EdgesegError:
        src.close()
        raise
    if isinstance(out, MjpegSink):
        if sink == "auto":
            typer.echo(f"no window here ({display_problem()}): serving the web page instead; to watch from "
                       f"another machine: --sink http://0.0.0.0:{DEFAULT_PORT}")
        for url in out.urls:
            typer.echo(f"watch: {url}/  (stream: {url}/stream.mjpg)")
    seg.warmup()  # before the first frame is read: what a stream buffers meanwhile is skipped as its backlog
    renderer = Renderer(seg.classes, seg.manifest.palette, mode=mode, alpha=alpha, legend=legend)
    pipeline = Pipeline(seg, src, out, renderer=renderer, stats=stats, text=text, max_frames=max_frames)
    try:
        summary = pipeline.run()
        if src.recorded and src.bad_frames and not skip_bad_frames:
            raise EdgesegError(f"{source}: {src.bad_frames} undecodable frame(s) skipped ({summary['frames_out']} "
                               "frames written); pass --skip-bad-frames to accept a damaged input")
    except BaseException as exc:
        if stats_json is not None:
            _write_stats(stats_json, {**pipeline.report(), "error": str(exc) or type(exc).__name__})
        raise
    if stats_json is not None:
        _write_stats(stats_json, summary)
    latency = summary["latency"].get("p50_ms", float("nan"))
    typer.echo(f"{summary['frames_out']} frames in {summary['elapsed_s']:.1f} s: {summary['fps']:.1f} FPS, "
               f"latency p50 {latency:.1f} ms, {summary['dropped']} dropped -> {sink}")
