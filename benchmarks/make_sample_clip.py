"""Make the sample clip shipped in the package (`edgeseg demo --source sample`): the first CamVid val
frames (sequence 0016E5, every other frame of a 30 FPS drive, so 15 FPS) as a small mp4v video.

    python benchmarks/make_sample_clip.py [--images GLOB] [--frames 48] [--out edgeseg/samples/camvid.mp4]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench_pipeline import DEFAULT_IMAGES, make_video

OUT = Path(__file__).resolve().parent.parent / "edgeseg" / "samples" / "camvid.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="Frames to use (sorted by name).")
    parser.add_argument("--frames", type=int, default=48, help="How many frames (3.2 s at 15 FPS).")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_video(args.images, args.out, fps=15.0, limit=args.frames)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {args.frames} frames at 15 FPS)")


if __name__ == "__main__":
    main()
