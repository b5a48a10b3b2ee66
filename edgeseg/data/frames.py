"""Unlabeled frames from footage: image folders (searched recursively), globs, video files, folders of videos.

Every k-th frame of each video is kept, and every k-th image of the images (sorted by path).
"""
from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.preprocess import resize_rgb
from edgeseg.runtime.sources import IMAGE_SUFFIXES, ImageSequenceSource, Source, open_source

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def media_files(source: str | Path) -> tuple[list[Path], list[Path]]:
    """The images and the videos that `source` names: a folder (recursively), a glob or one file."""
    text = str(source)
    path = Path(text)
    if glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        paths = [path]
    else:
        raise EdgesegError(f"{text}: no such file or folder")
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES or (path.is_file() and p not in images)]
    if not images and not videos:
        raise EdgesegError(f"{text}: no images or videos")
    return images, videos


def _sources(source: str, images: list[Path], videos: list[Path]) -> Iterator[Source]:
    if images:
        yield ImageSequenceSource(source, images)
    for video in videos:
        yield open_source(video)


def iter_frames(source: str | Path, every: int = 1) -> Iterator[np.ndarray]:
    """RGB uint8 frames of `source`: every `every`-th image and every `every`-th frame of each video."""
    if every < 1:
        raise EdgesegError(f"{source}: frame step must be at least 1, got {every}")
    for src in _sources(str(source), *media_files(source)):
        for frame in src:  # a source closes itself when iteration ends
            if frame.index % every == 0:
                yield cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)


def sample_frames(source: str | Path, every: int, size: tuple[int, int]) -> np.ndarray:
    """The frames of `iter_frames`, resized to `size` (H, W) like the runtime: N x H x W x 3 uint8."""
    frames = [resize_rgb(rgb, *size) for rgb in iter_frames(source, every)]
    if not frames:
        raise EdgesegError(f"{source}: no frames could be read")
    return np.stack(frames)
