"""Faults and bad input through the real CLI: a corpus of damaged manifests, run folders, model files,
option values and output paths. Each must fail with a non-zero exit, one `error:` line on stderr, no
traceback, and leave every file where it was (nothing half-written). Plus kill -9 of an export.

The corpus runs `edgeseg.cli.app.main` in-process (the process imports TensorFlow once); the kill test
runs the installed command.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
from test_cli_foundation import EDGESEG, ENV

from edgeseg.runtime.manifest import MANIFEST_NAME


@dataclass
class Workspace:
    """The session's shared fixtures and a scratch folder (the current directory) for damaged copies."""

    data: Path
    run: Path
    cpu: Path
    jetson: Path
    tmp: Path

    def copy(self, src: Path, name: str | None = None) -> Path:
        dest = self.tmp / (name or src.name)
        shutil.copytree(src, dest)
        return dest


@pytest.fixture
def ws(small_data, small_run, small_cpu_bundle, small_jetson_bundle, tmp_path, monkeypatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    return Workspace(small_data, small_run, small_cpu_bundle, small_jetson_bundle, tmp_path)


@dataclass
class Result:
    code: int
    out: str
    err: str


def edgeseg(capsys, *args: Any) -> Result:
    """`edgeseg ARGS` in this process, through the same entry point as the installed command."""
    from edgeseg.cli.app import main

    argv = sys.argv
    sys.argv = ["edgeseg", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return Result(code, out, err)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# --- how the corpus damages things ---------------------------------------------------------------

def edit_json(path: Path, change: Callable[[Any], object]) -> None:
    """Change a JSON file's content in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def put(field: str | tuple[str, ...], value: Any) -> Callable[[dict], None]:
    """Set (or with `value` DROP, delete) a field given dotted (`artifacts.fp32.input.height`) or as keys."""
    def change(data: dict) -> None:
        *parents, last = field.split(".") if isinstance(field, str) else field
        for key in parents:
            data = data[key]
        if value is DROP:
            del data[last]
        else:
            data[last] = value
    return change


DROP = object()


def rehash(bundle: Path, name: str) -> None:
    """Record `name`'s current sha256 in the manifest (damage that passes the checksum)."""
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    edit_json(bundle / MANIFEST_NAME, put(("files", name), digest))


def damaged_file(which: str, name: str, damage: Callable[[bytes], bytes]) -> Callable[[Workspace], Path]:
    """A copy of the cpu or jetson bundle whose `name` is damaged, checksum updated."""
    def make(ws: Workspace) -> Path:
        bundle = ws.copy(getattr(ws, which), "b")
        (bundle / name).write_bytes(damage((bundle / name).read_bytes()))
        rehash(bundle, name)
        return bundle
    return make


def without_a_node(ws: Workspace) -> Path:
    bundle = ws.copy(ws.jetson, "b")
    model = onnx.load(str(bundle / "model_int8_qdq.onnx"))
    del model.graph.node[len(model.graph.node) // 2]
    onnx.save(model, str(bundle / "model_int8_qdq.onnx"))
    rehash(bundle, "model_int8_qdq.onnx")
    return bundle


def tensorrt_only(ws: Workspace) -> Path:
    """A bundle whose only artifact is a TensorRT engine (not runnable on this machine)."""
    bundle = ws.copy(ws.jetson, "b")
    (bundle / "model.engine").write_bytes(b"engine bytes")

    def change(data: dict) -> None:
        data["artifacts"] = {"trt": {**data["artifacts"]["fp32"], "file": "model.engine", "backend": "tensorrt"}}
        data["default"] = "trt"
    edit_json(bundle / MANIFEST_NAME, change)
    rehash(bundle, "model.engine")
    return bundle


# --- the corpus: (id, make(ws) -> arguments, fragments the error line must contain) ----------------

Make = Callable[[Workspace], tuple[list[Any], tuple[str, ...]]]


def manifest(change: Callable[[Any], Any], *says: str, command: str = "info", which: str = "cpu") -> Make:
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        bundle = ws.copy(getattr(ws, which), "b")
        edit_json(bundle / MANIFEST_NAME, change)
        args = {"info": ["info", bundle], "demo": ["demo", bundle, "--source", ws.data / "val", "--sink", "null"],
                "bench": ["bench", bundle, "--runs", "2", "--warmup", "0"],
                "eval": ["eval", bundle, "--data", ws.data]}[command]
        return args, (str(bundle), *says)
    return make


def raw_manifest(content: bytes, *says: str) -> Make:
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        bundle = ws.copy(ws.cpu, "b")
        (bundle / MANIFEST_NAME).write_bytes(content)
        return ["info", bundle], (f"{bundle / MANIFEST_NAME}", *says)
    return make


def outside_link(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
    bundle = ws.copy(ws.cpu, "b")
    (ws.tmp / "elsewhere.tflite").write_bytes((bundle / "model_fp32.tflite").read_bytes())
    (bundle / "model_fp32.tflite").unlink()
    (bundle / "model_fp32.tflite").symlink_to(ws.tmp / "elsewhere.tflite")
    return ["eval", bundle, "--data", ws.data], ("resolves outside the bundle",)


def run_folder(file: str, change: Callable[[Any], Any] | bytes | None, *says: str, command: str = "info") -> Make:
    """A copy of the run with `file` edited (a function), overwritten (bytes) or deleted (None)."""
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        run = ws.copy(ws.run, "r")
        if change is None:
            (run / file).unlink()
        elif isinstance(change, bytes):
            (run / file).write_bytes(change)
        else:
            edit_json(run / file, change)
        args = {"info": ["info", run], "resume": ["train", "--out", run, "--resume"],
                "export": ["export", run, "--out", ws.tmp / "bx"],
                "eval": ["eval", run, "--data", ws.data]}[command]
        return args, says
    return make


def resume_with(*options: str, says: str) -> Make:
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        run = ws.copy(ws.run, "r")
        return ["train", "--out", run, "--resume", *options], (f"{run / 'config.json'}", says)
    return make


def command(*args: Any, says: tuple[str, ...] = ()) -> Make:
    """`args` with `{data}`, `{run}`, `{cpu}`, `{jetson}` and `{tmp}` filled in from the workspace."""
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        fill = {"data": ws.data, "run": ws.run, "cpu": ws.cpu, "jetson": ws.jetson, "tmp": ws.tmp}
        return [str(a).format(**fill) for a in args], tuple(s.format(**fill) for s in says)
    return make


def on_bundle(make_bundle: Callable[[Workspace], Path], *args: str, says: tuple[str, ...] = ()) -> Make:
    def make(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
        bundle = make_bundle(ws)
        return [args[0], bundle, *[a.format(data=ws.data) for a in args[1:]]], says
    return make


def bad_dataset(ws: Workspace) -> tuple[list[Any], tuple[str, ...]]:
    data = ws.copy(ws.data, "d")
    victim = min((data / "trainannot").iterdir())
    victim.unlink()
    return ["train", "--data", data, "--out", ws.tmp / "r", "--epochs", "1"], (f"train/{victim.name}",)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def noise(data: bytes) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(len(data)))


A = "artifacts.fp32"
CORPUS: list[tuple[str, Make]] = [
    # manifests
    ("classes-not-a-list", manifest(put("classes", 5), "classes must be a list")),
    ("classes-empty", manifest(put("classes", []), "classes must have at least 1")),
    ("class-name-number", manifest(put("classes", [1, 2, 3, 4, 5, 6]), "classes[0]")),
    ("palette-out-of-range", manifest(put("palette", [[300, 0, 0]] * 6), "palette[0][0]")),
    ("palette-short", manifest(lambda d: d["palette"].pop(), "palette has 5 colours for 6 classes")),
    ("height-text", manifest(put(f"{A}.input.height", "sixty"), f"{A}.input.height", "'sixty'")),
    ("height-text-demo", manifest(put(f"{A}.input.height", "sixty"), f"{A}.input.height", command="demo")),
    ("height-zero", manifest(put(f"{A}.input.height", 0), f"{A}.input.height")),
    ("width-negative", manifest(put(f"{A}.input.width", -4), f"{A}.input.width")),
    ("height-missing", manifest(put(f"{A}.input.height", DROP), f"{A}.input.height is missing")),
    ("layout-unknown", manifest(put(f"{A}.input.layout", "NCWH"), f"{A}.input.layout")),
    ("input-dtype", manifest(put(f"{A}.input.dtype", "int16"), f"{A}.input.dtype")),
    ("mean-length", manifest(put(f"{A}.input.mean", [1, 2]), f"{A}.input.mean must have 3")),
    ("std-zero", manifest(put(f"{A}.input.std", [1, 0, 1]), f"{A}.input.std[1]")),
    ("std-nan", manifest(put(f"{A}.input.std", [1, float("nan"), 1]), f"{A}.input.std[1]")),
    ("batch-float", manifest(put(f"{A}.input.batch", 1.5), f"{A}.input.batch")),
    ("folded-text", manifest(put(f"{A}.input.normalization_folded", "yes"), "normalization_folded")),
    ("output-kind", manifest(put(f"{A}.output.kind", "probabilities"), f"{A}.output.kind")),
    ("precision", manifest(put(f"{A}.precision", "int4"), f"{A}.precision")),
    ("backend-missing", manifest(put(f"{A}.backend", DROP), f"{A}.backend is missing")),
    ("backend-unknown", manifest(put(f"{A}.backend", "coreml"), "unknown backend 'coreml'", command="bench")),
    ("file-parent", manifest(put(f"{A}.file", "../other/x.tflite"), f"{A}.file must name a file inside")),
    ("file-absolute", manifest(put(f"{A}.file", "/etc/passwd"), f"{A}.file")),
    ("file-nested-escape", manifest(put(f"{A}.file", "sub/../../x.tflite"), f"{A}.file")),
    ("file-number", manifest(put(f"{A}.file", 7), f"{A}.file")),
    ("file-symlink-out", outside_link),
    ("default-missing", manifest(put("default", "fp16"), "default 'fp16' is not one of the artifacts")),
    ("no-artifacts", manifest(put("artifacts", {}), "artifacts must have at least 1")),
    ("artifacts-list", manifest(put("artifacts", []), "artifacts must be an object")),
    ("format-version", manifest(put("format_version", 2), "unsupported manifest format_version 2")),
    ("format-version-missing", manifest(put("format_version", DROP), "format_version")),
    ("unknown-field", manifest(put("colour", "red"), "colour is not a known field")),
    ("ignore-index", manifest(put("ignore_index", 300), "ignore_index")),
    ("sha-not-hex", manifest(put(("files", "model_fp32.tflite"), "abc"), "files.model_fp32.tflite")),
    ("files-escape", manifest(put("files", {"../x": "0" * 64}), "files.../x must name a file inside")),
    ("params-text", manifest(put("model.params", "many"), "model.params")),
    ("comparison-miou", manifest(put("evaluation", {"comparison": {"float": {"miou": "high"}}}),
                                 "evaluation.comparison.float.miou")),
    ("artifact-file-gone", manifest(put(f"{A}.file", "nothere.tflite"), "nothere.tflite: missing from bundle")),
    ("manifest-truncated", raw_manifest(b'{"classes": ["a"', "unreadable manifest")),
    ("manifest-list", raw_manifest(b"[1, 2]", "not a JSON object")),
    ("manifest-binary", raw_manifest(bytes(range(256)), "unreadable manifest")),
    ("manifest-empty", raw_manifest(b"", "unreadable manifest")),
    # run folders
    ("config-not-json", run_folder("config.json", b"{nope", "config.json: unreadable run config")),
    ("config-epochs-zero", run_folder("config.json", put("epochs", 0), "config.json", "epochs must be")),
    ("config-input-size", run_folder("config.json", put("input_size", [64]), "input_size must have 2",
                                     command="export")),
    ("config-classes", run_folder("config.json", put("classes", "road"), "classes must be a list",
                                  command="eval")),
    ("config-model-missing", run_folder("config.json", put("model", DROP), "model is missing")),
    ("config-unknown-field", run_folder("config.json", put("optimiser", "sgd"), "optimiser is not a known")),
    ("config-lr-negative", run_folder("config.json", put("learning_rate", -1), "learning_rate",
                                      command="resume")),
    ("config-palette", run_folder("config.json", lambda d: d["palette"].pop(), "config.json: invalid run config: "
                                  "palette has 5 colours")),
    ("config-gone", run_folder("config.json", None, "not a training run", command="resume")),
    ("state-not-json", run_folder("state.json", b"\x00\x01", "state.json: unreadable run state",
                                  command="resume")),
    ("state-epoch-text", run_folder("state.json", put("epoch", "two"), "state.json", "epoch must be",
                                    command="resume")),
    ("state-best-missing", run_folder("state.json", put("best_epoch", DROP), "best_epoch is missing",
                                      command="resume")),
    ("state-alpha", run_folder("state.json", put("logit_adjustment", {"alpha": "x"}), "logit_adjustment.alpha",
                               command="export")),
    ("checkpoint-truncated", run_folder("checkpoints/epoch_000.keras", b"PK\x03\x04 truncated",
                                        "epoch_000.keras: cannot load Keras model", command="resume")),
    ("checkpoint-gone", run_folder("checkpoints/epoch_000.keras", None, "epoch_000.keras: missing",
                                   command="resume")),
    ("model-truncated", run_folder("model.keras", b"PK\x03\x04", "model.keras: cannot load", command="export")),
    ("model-gone", run_folder("model.keras", None, "model.keras: missing", command="export")),
    ("resume-other-model", resume_with("--model", "fcn-small", says="model 'fcn-tiny', not 'fcn-small'")),
    ("resume-other-size", resume_with("--input-size", "64x96", says="input_size")),
    ("resume-other-epochs", resume_with("--epochs", "5", says="epochs 1, not 5")),
    ("resume-nothing", command("train", "--out", "{tmp}/none", "--resume", says=("not a training run",))),
    # model files
    ("check-cpu-bundle", command("check", "{cpu}", says=("no ONNX artifact",))),
    ("check-truncated-onnx", on_bundle(damaged_file("jetson", "model_int8_qdq.onnx", half), "check",
                                      says=("model_int8_qdq.onnx: not a valid ONNX model",))),
    ("check-noise-onnx", on_bundle(damaged_file("jetson", "model_fp32.onnx", noise), "check",
                                  says=("model_fp32.onnx",))),
    ("check-deleted-node", on_bundle(without_a_node, "check", says=("TensorRT conformance violation",))),
    ("bench-deleted-node", on_bundle(without_a_node, "bench", "--runs", "2", "--warmup", "0",
                                     says=("model_int8_qdq.onnx: cannot load ONNX model",))),
    ("bench-truncated-tflite", on_bundle(damaged_file("cpu", "model_fp32.tflite", half), "bench", "--runs", "2",
                                         says=("model_fp32.tflite: cannot load TFLite model",))),
    ("eval-noise-tflite", on_bundle(damaged_file("cpu", "model_fp32.tflite", noise), "eval", "--data", "{data}",
                                    says=("model_fp32.tflite",))),
    ("demo-truncated-tflite", on_bundle(damaged_file("cpu", "model_fp32.tflite", half), "demo", "--source",
                                        "{data}/val", "--sink", "null", says=("model_fp32.tflite",))),
    ("bench-only-tensorrt", on_bundle(tensorrt_only, "bench", "--runs", "2", says=("benchmarked 0 artifacts",))),
    ("info-neither", command("info", "{data}", says=("neither a bundle",))),
    # option values
    ("train-epochs-zero", command("train", "--data", "{data}", "--out", "{tmp}/r", "--epochs", "0",
                                  says=("epochs must be an integer >= 1, got 0",))),
    ("train-epochs-negative", command("train", "--data", "{data}", "--out", "{tmp}/r", "--epochs", "-1",
                                      says=("epochs",))),
    ("train-batch-zero", command("train", "--data", "{data}", "--out", "{tmp}/r", "--batch-size", "0",
                                 says=("batch_size",))),
    ("train-lr-zero", command("train", "--data", "{data}", "--out", "{tmp}/r", "--lr", "0",
                              says=("learning_rate",))),
    ("train-labels-fraction", command("train", "--data", "{data}", "--out", "{tmp}/r", "--labels-fraction", "2",
                                      says=("labels_fraction",))),
    ("train-input-size", command("train", "--data", "{data}", "--out", "{tmp}/r", "--input-size", "0x10",
                                 says=("'0x10'",))),
    ("train-bad-dataset", bad_dataset),
    ("train-no-dataset", command("train", "--data", "{tmp}/nodata", "--out", "{tmp}/r", says=("nodata",))),
    ("bench-threads-zero", command("bench", "{cpu}", "--threads", "0", says=("--threads",))),
    ("bench-runs-zero", command("bench", "{cpu}", "--runs", "0", says=("--runs",))),
    ("bench-plot-no-data", command("bench", "{cpu}", "--plot", "{tmp}/p.png", says=("--data",))),
    ("export-target", command("export", "{run}", "--out", "{tmp}/bx", "--target", "tpu", says=("'tpu'",))),
    ("export-exists", command("export", "{run}", "--out", "{tmp}", says=("already exists",))),
    # output paths, refused before any work
    ("eval-json-proc", command("eval", "{cpu}", "--data", "{data}", "--json", "/proc/e.json", says=("/proc/e.json",))),
    ("bench-json-proc", command("bench", "{cpu}", "--json", "/proc/b.json", says=("/proc/b.json",))),
    ("bench-plot-proc", command("bench", "{cpu}", "--data", "{data}", "--plot", "/proc/b.png",
                                says=("/proc/b.png",))),
    ("demo-stats-proc", command("demo", "{cpu}", "--source", "{data}/val", "--sink", "null", "--stats-json",
                                "/proc/st.json", says=("/proc/st.json",))),
    ("eval-json-folder", command("eval", "{cpu}", "--data", "{data}", "--json", "{tmp}",
                                 says=("is a folder",))),
    ("bench-json-under-file", command("bench", "{cpu}", "--json", "{data}/dataset.yaml/b.json",
                                      says=("dataset.yaml is not a folder",))),
]


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60 and len({name for name, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("make", [make for _, make in CORPUS], ids=[name for name, _ in CORPUS])
def test_bad_input_is_one_line_and_changes_nothing(make: Make, ws: Workspace, capsys) -> None:
    args, says = make(ws)
    before = snapshot(ws.tmp)
    result = edgeseg(capsys, *args)
    assert result.code != 0, result.out
    assert "Traceback" not in result.err + result.out
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in says:
        assert fragment in lines[0], (fragment, lines[0])
    after = snapshot(ws.tmp)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}  # nothing written or created
    assert set(before) == set(after)  # nor removed


def test_check_passes_a_good_jetson_bundle(small_jetson_bundle: Path, capsys) -> None:
    result = edgeseg(capsys, "check", small_jetson_bundle)
    assert result.code == 0, result.err
    assert "TensorRT-conformant" in result.out


def test_bench_skips_an_artifact_this_machine_cannot_run(ws: Workspace, capsys) -> None:
    """A TensorRT engine beside ONNX artifacts is skipped; the others are measured and the exit is 0."""
    bundle = ws.copy(ws.jetson, "b")
    (bundle / "model.engine").write_bytes(b"engine bytes")
    edit_json(bundle / MANIFEST_NAME, lambda d: d["artifacts"].update(
        trt={**d["artifacts"]["fp32"], "file": "model.engine", "backend": "tensorrt"}))
    rehash(bundle, "model.engine")
    result = edgeseg(capsys, "bench", bundle, "--runs", "2", "--warmup", "0", "--json", ws.tmp / "b.json")
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in json.loads((ws.tmp / "b.json").read_text())}
    assert rows["b:trt"]["skipped"] and rows["b:fp32"]["skipped"] is None and rows["b:int8"]["latency"]["fps"] > 0
    assert "benchmarked 2 artifacts (1 skipped)" in result.out


def test_resume_before_the_first_checkpoint_starts_over(ws: Workspace, capsys) -> None:
    """Killed in epoch 1: only config.json (and logs) exist; --resume trains the run from its config."""
    run = ws.tmp / "r"
    run.mkdir()
    shutil.copy(ws.run / "config.json", run / "config.json")
    result = edgeseg(capsys, "train", "--out", run, "--resume", "--epochs", "1")
    assert result.code == 0, result.err
    assert json.loads((run / "state.json").read_text())["epoch"] == 0
    assert (run / "model.keras").is_file() and (run / "checkpoints" / "epoch_000.keras").is_file()


def test_kill_9_during_export_leaves_no_bundle_and_the_next_export_cleans_up(ws: Workspace, capsys) -> None:
    out = ws.tmp / "bundle"
    proc = subprocess.Popen([EDGESEG, "export", ws.run, "--out", out, "--precision", "fp32"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(ws.tmp.glob(".bundle.tmp-*")):  # killed while the bundle is being staged
            assert proc.poll() is None and time.monotonic() < deadline, "export ended before staging"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    assert list(ws.tmp.glob(".bundle.tmp-*"))  # what a kill leaves behind
    result = edgeseg(capsys, "export", ws.run, "--out", out, "--precision", "fp32")
    assert result.code == 0, result.err
    assert (out / MANIFEST_NAME).is_file() and not list(ws.tmp.glob(".bundle.*"))


def test_only_staging_folders_of_dead_exports_are_removed(tmp_path: Path) -> None:
    from edgeseg.runtime.manifest import staging_dir

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    live, dead = tmp_path / f".b.tmp-{os.getpid()}-x1", tmp_path / f".b.tmp-{finished.stdout.strip()}-x2"
    old, recent, other = tmp_path / ".b.tmp-abc", tmp_path / ".b.old-xyz", tmp_path / ".c.tmp-1-x"
    for folder in (live, dead, old, recent, other):
        folder.mkdir()
    os.utime(old, (0, 0))  # no PID in the name (an older edgeseg): judged by age
    staging = staging_dir(tmp_path / "b")
    assert staging.is_dir() and live.is_dir() and recent.is_dir() and other.is_dir()
    assert not dead.exists() and not old.exists()
