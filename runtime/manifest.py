"""The deploy bundle manifest (`edgeseg.json`): read, validate and write.

A bundle is a folder holding one or more model artifacts plus this manifest. Every consumer
reads the manifest; nothing guesses input size, layout, normalisation or classes.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import schema as s
from .errors import EdgesegError

MANIFEST_NAME = "edgeseg.json"
FORMAT_VERSION = 1
IGNORE_INDEX = 255
#: Default normalisation, in pixel units: x_norm = (x - mean) / std, giving [-1, 1].
DEFAULT_MEAN = (127.5, 127.5, 127.5)
DEFAULT_STD = (127.5, 127.5, 127.5)
#: About when this process started: a staging folder older than this, with no PID in its name, is a left-over.
_STARTED = time.time()


@dataclass
class InputSpec:
    """What a model artifact takes: RGB frames resized to height x width."""

    height: int
    width: int
    layout: str = "NHWC"  # or "NCHW"
    dtype: str = "uint8"  # "uint8" (raw pixels) or "float32"
    batch: int = 1
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    #: True when normalisation is inside the model (it takes raw 0..255 pixels, as uint8 or float32).
    normalization_folded: bool = True


@dataclass
class OutputSpec:
    """What a model artifact returns: class logits (argmax outside) or a label map."""

    kind: str = "logits"  # "logits" or "labels"
    dtype: str = "float32"  # "float32", "float16", "int8" or "uint8"
    layout: str = "NHWC"  # logits layout; labels are always N x H x W


@dataclass
class ModelSpec:
    """What a runner needs besides the model file: what the model takes and returns, and its precision."""

    input: InputSpec
    output: OutputSpec
    precision: str = "fp32"


@dataclass
class Artifact:
    """One model file in a bundle and how to run it."""

    file: str
    backend: str  # "litert", "onnxruntime" or "tensorrt"
    precision: str  # "fp32", "fp16" or "int8"
    input: InputSpec
    output: OutputSpec
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.input, self.output, self.precision)


@dataclass
class Manifest:
    """Everything a consumer needs to run a bundle."""

    classes: list[str]
    palette: list[list[int]]
    artifacts: dict[str, Artifact]
    default: str
    target: str = "cpu"
    ignore_index: int = IGNORE_INDEX
    model: dict[str, Any] = field(default_factory=dict)  # name, params, macs, run, logit_adjustment (alpha)
    calibration: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def artifact(self, name: str | None = None) -> Artifact:
        key = name or self.default
        if key not in self.artifacts:
            raise EdgesegError(f"bundle has no artifact {key!r}; it has: {', '.join(self.artifacts)}")
        return self.artifacts[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> Manifest:
        """A manifest from its JSON form, checked against `MANIFEST_SCHEMA` (one-line error naming the field)."""
        if isinstance(data, dict) and data.get("format_version") != FORMAT_VERSION:
            raise EdgesegError(f"{source}: unsupported manifest format_version {s.show(data.get('format_version'))} "
                               f"(this edgeseg reads {FORMAT_VERSION})")
        s.validate(data, MANIFEST_SCHEMA, source, "manifest")
        if data["default"] not in data["artifacts"]:
            raise EdgesegError(f"{source}: invalid manifest: default {data['default']!r} is not one of the "
                               f"artifacts ({', '.join(data['artifacts'])})")
        if len(data["palette"]) != len(data["classes"]):
            raise EdgesegError(f"{source}: invalid manifest: palette has {len(data['palette'])} colours for "
                               f"{len(data['classes'])} classes")
        artifacts = {
            name: Artifact(
                file=a["file"], backend=a["backend"], precision=a["precision"],
                input=InputSpec(**{**a["input"], **{k: tuple(a["input"][k]) for k in ("mean", "std")
                                                    if k in a["input"]}}),
                output=OutputSpec(**a.get("output", {})),
                extra=a.get("extra", {}),
            )
            for name, a in data["artifacts"].items()
        }
        return cls(artifacts=artifacts, **{k: v for k, v in data.items() if k != "artifacts"})


_INPUT = s.record({
    "height": s.integer(1), "width": s.integer(1), "layout": s.text("NHWC", "NCHW"),
    "dtype": s.text("uint8", "float32"), "batch": s.integer(1),
    "mean": s.list_of(s.number(), length=3), "std": s.list_of(s.number(above=0), length=3),
    "normalization_folded": s.boolean,
}, required=("height", "width"))
_OUTPUT = s.record({
    "kind": s.text("logits", "labels"), "dtype": s.text("float32", "float16", "int8", "uint8", "int32", "int64"),
    "layout": s.text("NHWC", "NCHW"),
})
_ARTIFACT = s.record({
    "file": s.relative_file, "backend": s.text(), "precision": s.text("fp32", "fp16", "int8"),
    "input": _INPUT, "output": _OUTPUT, "extra": s.dict_of(s.anything),
}, required=("file", "backend", "precision", "input"))
_SCORES = s.record({"miou": s.number(0, 1)}, open_ended=True)
#: What `edgeseg.json` may hold: types, ranges, and file names confined to the bundle.
MANIFEST_SCHEMA = s.record({
    "format_version": s.integer(FORMAT_VERSION, FORMAT_VERSION),
    "classes": s.list_of(s.text(), min_length=1),
    "palette": s.list_of(s.RGB),
    "artifacts": s.dict_of(_ARTIFACT, min_length=1),
    "default": s.text(),
    "target": s.text(),
    "ignore_index": s.integer(0, 255),
    "model": s.record({"name": s.text(), "params": s.integer(0), "macs": s.integer(0),
                       "logit_adjustment": s.number(0)}, open_ended=True),
    "calibration": s.record({"num_images": s.integer(0)}, open_ended=True),
    "evaluation": s.record({"comparison": s.record({"float": _SCORES, "int8": _SCORES,
                                                   "drop_points": s.number()}, open_ended=True)},
                           open_ended=True),
    "versions": s.dict_of(s.text()),
    "files": s.dict_of(s.matching(r"[0-9a-f]{64}", "a sha256 hex digest"), key=s.relative_file),
}, required=("format_version", "classes", "palette", "artifacts", "default"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_bundles() -> dict[str, Path]:
    """Bundles shipped inside the package (`edgeseg/pretrained/<name>/`), by name."""
    import edgeseg

    root = Path(edgeseg.__file__).parent / "pretrained"
    return {p.name: p for p in sorted(root.iterdir()) if (p / MANIFEST_NAME).is_file()} if root.is_dir() else {}


def resolve_bundle(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundle folder from a path, or from the name of a shipped bundle (e.g. `camvid`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_bundles()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    known = f" (shipped bundles: {', '.join(shipped)})" if shipped else ""
    raise EdgesegError(f"{path}: no such bundle{known}")


def read_manifest(bundle: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """Read and validate `bundle/edgeseg.json`; with `verify`, check every file's sha256."""
    root = Path(bundle)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise EdgesegError(f"{root}: not a bundle folder")
    if not path.is_file():
        raise EdgesegError(f"{root}: not a bundle (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise EdgesegError(f"{path}: invalid manifest (not a JSON object)")
    manifest = Manifest.from_dict(data, source=str(path))
    names = list(dict.fromkeys([*manifest.files, *(a.file for a in manifest.artifacts.values())]))
    inside = root.resolve()
    for name in names:
        if inside not in (root / name).resolve().parents:  # e.g. a symlink to elsewhere
            raise EdgesegError(f"{path}: invalid manifest: {name!r} resolves outside the bundle")
    if verify:
        for name in names:
            file = root / name
            if not file.is_file():
                raise EdgesegError(f"{file}: missing from bundle")
            digest = manifest.files.get(name)
            if digest is not None and sha256_file(file) != digest:
                raise EdgesegError(f"{file}: checksum mismatch (file changed after the bundle was written)")
    return manifest


def portable_path(path: str | os.PathLike[str]) -> str:
    """How a manifest names a folder of the machine that wrote it: relative to the working folder when it
    lies inside it, else by its name alone (a manifest never holds an absolute path)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.name


def write_bundle(staging: Path, dest: Path, manifest: Manifest, force: bool = False) -> Path:
    """Finish a bundle staged in `staging` (a temp folder beside `dest`) and move it into place.

    Checksums every file, writes the manifest, then renames: `dest` is either the old bundle or
    the complete new one, never a half-written one. An existing `dest` needs `force`.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise EdgesegError(f"{dest}: already exists (use --force to overwrite)")
    manifest.files = {
        p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
        os.replace(dest, old / dest.name)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
    return dest


def staging_dir(dest: Path) -> Path:
    """A fresh temporary folder beside `dest` (same filesystem, so the final rename is atomic)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    path = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is read by whoever deploys it
    return path


def remove_stale_staging(dest: Path) -> list[Path]:
    """Remove the `.NAME.tmp-PID-*` / `.NAME.old-PID-*` folders beside `dest` that a killed export left:
    their process is gone (or, without a PID in the name, they are older than this process)."""
    removed = []
    for kind in ("tmp", "old"):
        for path in Path(dest).parent.glob(f".{glob.escape(Path(dest).name)}.{kind}-*"):
            pid = path.name[len(f".{Path(dest).name}.{kind}-"):].split("-")[0]
            stale = not _alive(int(pid)) if pid.isdigit() else path.stat().st_mtime < _STARTED
            if path.is_dir() and stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
