"""End-to-end pipeline benchmark: a video file as fast as possible into `null` and `out.mp4` sinks,
pipelined (stage threads) vs sequential (one thread), with per-stage and latency percentiles.

    python benchmarks/bench_pipeline.py --bundle BUNDLE [--video V] [--frames N] [--out-json FILE]

Without --video, a 480x360 video is made from the images of --images (sorted by name; default: the
CamVid val split). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2

from edgeseg.runtime import Pipeline, Segmenter, open_sink, open_source
from edgeseg.runtime.errors import EdgesegError

DEFAULT_IMAGES = "/work/shared/datasets/camvid/val/*.png"
STAGES = ("capture", "preprocess", "infer", "postprocess", "render", "sink")
FRAME_SIZE = (480, 360)  # width, height


def make_video(pattern: str, path: Path, fps: float = 30.0, limit: int | None = None) -> Path:
    """An mp4v video of the images matching `pattern` (sorted; the first `limit`), resized to 480x360."""
    files = sorted(glob.glob(pattern))[:limit]
    if not files:
        raise EdgesegError(f"{pattern}: no images")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, FRAME_SIZE)
    for file in files:
        image = cv2.imread(file, cv2.IMREAD_COLOR)
        writer.write(cv2.resize(image, FRAME_SIZE, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


def run_once(seg: Segmenter, video: Path, sink_uri: str, frames: int, sequential: bool) -> dict[str, Any]:
    source = open_source(video, loop=True)
    sink = open_sink(sink_uri, fps=source.fps)
    return Pipeline(seg, source, sink, max_frames=frames, sequential=sequential).run(handle_signals=False)


def _ms(times: dict[str, float], key: str) -> str:
    return f"{times[key]:.2f}" if key in times else "-"


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per run, then the pipelined / sequential throughput ratio per sink."""
    head = ["sink", "mode", "frames", "FPS", "latency p50 ms"] + [f"{s} p50/p99 ms" for s in STAGES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        stages = [r["stages"].get(s, {}) for s in STAGES]
        cells = [r["sink_kind"], r["mode"], str(r["frames_out"]), f"{r['fps']:.1f}",
                 _ms(r["latency"], "p50_ms")]
        cells += [f"{_ms(times, 'p50_ms')} / {_ms(times, 'p99_ms')}" for times in stages]
        lines.append("| " + " | ".join(cells) + " |")
    fps = {(r["sink_kind"], r["mode"]): r["fps"] for r in results}
    lines.append("")
    for kind in dict.fromkeys(r["sink_kind"] for r in results):
        pipelined, sequential = fps[kind, "pipelined"], fps[kind, "sequential"]
        lines.append(f"- {kind}: pipelined {pipelined:.1f} FPS vs sequential {sequential:.1f} FPS "
                     f"(x{pipelined / sequential:.2f})")
    for r in results:
        limit = 2 * 1000.0 / r["fps"]
        lines.append(f"- {r['sink_kind']} {r['mode']}: capture-to-display p50 {r['latency']['p50_ms']:.2f} ms vs "
                     f"two frame intervals {limit:.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="deploy bundle folder")
    parser.add_argument("--video", type=Path, help="input video (default: made from --images)")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="glob of frames when no --video is given")
    parser.add_argument("--frames", type=int, default=300, help="frames per run (the video loops)")
    parser.add_argument("--threads", type=int, help="inference threads")
    parser.add_argument("--artifact", help="bundle artifact (default: the manifest's)")
    parser.add_argument("--out-json", type=Path, help="write every run's summary here")
    args = parser.parse_args(argv)
    try:
        seg = Segmenter(args.bundle, artifact=args.artifact, threads=args.threads).activate()
        with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as tmp:
            video = args.video or make_video(args.images, Path(tmp) / "input.mp4")
            first = next(iter(open_source(video)))
            for _ in range(10):  # warm up the interpreter
                seg.segment(first.image)
            results = []
            for kind, uri in (("null", "null"), ("mp4", str(Path(tmp) / "out.mp4"))):
                for sequential in (False, True):
                    result = run_once(seg, video, uri, args.frames, sequential)
                    results.append({**result, "sink_kind": kind})
    except EdgesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    height, width = first.image.shape[:2]
    spec = seg.runner.spec.input
    print(f"{seg.runner.name} on {platform.machine()} ({platform.processor() or platform.system()}), "
          f"{width}x{height} frames, model input {spec.width}x{spec.height}, {args.frames} frames per run\n")
    print(markdown(results))
    if args.out_json:
        meta = {"bundle": str(args.bundle), "model": seg.runner.name, "frame_size": [width, height],
                "frames": args.frames, "threads": args.threads}
        args.out_json.write_text(json.dumps({**meta, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
