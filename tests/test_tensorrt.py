"""TensorRT engines and runner: the error paths for real without a GPU; engines on a GPU (`-m gpu`)."""
from __future__ import annotations

import json
import shlex
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeseg.converters.tensorrt import compile_bundle, trtexec_command
from edgeseg.runtime.backends.base import load_runner, runner_for
from edgeseg.runtime.backends.tensorrt import (
    TensorRTRunner,
    check_engine_target,
    require_tensorrt,
    sidecar_path,
    trt_major,
)
from edgeseg.runtime.cuda_buffers import CudaStream
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import (
    MANIFEST_NAME,
    Artifact,
    InputSpec,
    Manifest,
    ModelSpec,
    OutputSpec,
    read_manifest,
    staging_dir,
    write_bundle,
)

SPEC = InputSpec(height=64, width=96, layout="NCHW", dtype="float32")
OUT = OutputSpec(kind="logits", dtype="float32", layout="NCHW")
TARGET = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def tensorrt_installed() -> bool:
    try:
        require_tensorrt()
    except EdgesegError:
        return False
    return True


def cuda_usable() -> bool:
    try:
        CudaStream().close()
    except EdgesegError:
        return False
    return True


def make_bundle(path, files: dict[str, bytes], artifacts: dict[str, Artifact], default: str):
    staging = staging_dir(path)
    for name, data in files.items():
        (staging / name).write_bytes(data)
    classes, palette = [f"c{i}" for i in range(6)], [[i, i, i] for i in range(6)]
    manifest = Manifest(classes, palette, artifacts, default=default)
    return write_bundle(staging, path, manifest)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_version_and_sidecar_names(tmp_path):
    assert (trt_major("8.6.1.6"), trt_major("10.13.0.35"), trt_major("11.3.0")) == (8, 10, 11)
    assert sidecar_path(tmp_path / "tensorrt-int8.engine").name == "tensorrt-int8.engine.json"


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_one_line_error():
    # tensorrt-stubs alone make `import tensorrt` succeed as an empty namespace package
    with pytest.raises(EdgesegError) as exc:
        require_tensorrt()
    assert "TensorRT is not installed" in one_line(exc)


@pytest.mark.skipif(cuda_usable(), reason="a CUDA GPU is usable here")
def test_no_gpu_is_a_one_line_error():
    # Here cuda-python reports cudaErrorInsufficientDriver (no NVIDIA driver) at its first call.
    with pytest.raises(EdgesegError) as exc:
        CudaStream()
    assert one_line(exc).startswith(("CUDA is not usable (", "no CUDA Python bindings"))


def test_runner_activation_fails_cleanly(tmp_path):
    """Without a GPU (or TensorRT, or with a bogus engine) activating is a one-line error."""
    engine = tmp_path / "tensorrt-int8.engine"
    engine.write_bytes(b"not an engine")
    runner = TensorRTRunner(engine, ModelSpec(SPEC, OUT, "int8"))
    with pytest.raises(EdgesegError) as exc:
        runner.activate()
    one_line(exc)
    assert not runner.is_active


def test_engine_for_another_target_is_refused(tmp_path):
    engine = tmp_path / "tensorrt-int8.engine"
    check_engine_target(engine, TARGET, tmp_path)  # no sidecar (e.g. trtexec's engine): TensorRT decides
    sidecar_path(engine).write_text(json.dumps({**TARGET, "precision": "int8"}))
    check_engine_target(engine, TARGET, tmp_path)
    for key, value in (("tensorrt", "10.4.0"), ("gpu", "Xavier"), ("compute_capability", "7.2")):
        with pytest.raises(EdgesegError) as exc:
            check_engine_target(engine, {**TARGET, key: value}, tmp_path / "bundle")
        assert one_line(exc).endswith(f"rebuild with `edgeseg compile {tmp_path / 'bundle'}`")


def test_trtexec_command():
    line = trtexec_command("b/model.int8.onnx", "b/tensorrt int8.engine", "int8", workspace_mb=512)
    args = shlex.split(line)  # paths with spaces are quoted
    assert args[:3] == ["trtexec", "--onnx=b/model.int8.onnx", "--saveEngine=b/tensorrt int8.engine"]
    assert {"--memPoolSize=workspace:512", "--int8", "--fp16",
            "--timingCacheFile=b/tensorrt int8.timing.cache"} <= set(args)
    dla = trtexec_command("m.onnx", "m.engine", "fp16", dla_core=0)
    assert "--fp16" in dla and "--int8" not in dla and "--useDLACore=0 --allowGPUFallback" in dla
    with pytest.raises(ValueError):
        trtexec_command("m.onnx", "m.engine", "int4")


def test_compile_needs_the_right_onnx(tmp_path):
    art = Artifact("model.int8.onnx", "onnxruntime", "int8", SPEC, OUT)
    bundle = make_bundle(tmp_path / "b", {"model.int8.onnx": b"onnx"}, {"onnx-int8": art}, "onnx-int8")
    with pytest.raises(EdgesegError) as exc:
        compile_bundle(bundle, "fp16")
    assert "no fp32 ONNX artifact" in one_line(exc)


@pytest.mark.skipif(tensorrt_installed() and cuda_usable(), reason="TensorRT and a GPU are usable here")
def test_failed_compile_leaves_the_bundle_as_it_was(tmp_path):
    art = Artifact("model.int8.onnx", "onnxruntime", "int8", SPEC, OUT)
    bundle = make_bundle(tmp_path / "b", {"model.int8.onnx": b"onnx"}, {"onnx-int8": art}, "onnx-int8")
    before = (bundle / MANIFEST_NAME).read_bytes()
    with pytest.raises(EdgesegError) as exc:
        compile_bundle(bundle, "int8")
    one_line(exc)
    assert (bundle / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging folder left behind


# --- on a machine with TensorRT and an NVIDIA GPU --------------------------------------------------


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    """A bundle with fp32 and Q/DQ INT8 ONNX of a random fcn-tiny, on a machine with TensorRT + GPU."""
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT and an NVIDIA GPU")
    if not hasattr(trt, "Builder"):
        pytest.skip("needs TensorRT and an NVIDIA GPU (only TensorRT's type stubs are installed)")
    if not cuda_usable():
        pytest.skip("needs TensorRT and an NVIDIA GPU (CUDA is not usable)")
    pytest.importorskip("tf2onnx", reason="exporting the test model needs the train extra")
    from test_onnx_export import random_deploy_model

    from edgeseg.converters.onnx import export_onnx
    from edgeseg.converters.onnx_qdq import quantize_qdq

    work = tmp_path_factory.mktemp("trt")
    frames = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), np.uint8) for i in range(8)]
    fp32 = export_onnx(random_deploy_model(), work / "model.fp32.onnx")
    int8, _ = quantize_qdq(work / "model.fp32.onnx", work / "model.int8.onnx", frames, "minmax")
    files = {name: (work / name).read_bytes() for name in ("model.fp32.onnx", "model.int8.onnx")}
    bundle = make_bundle(work / "bundle", files, {"onnx-fp32": fp32, "onnx-int8": int8}, "onnx-int8")
    return bundle, frames


def agreement(bundle, a: str, b: str, frames) -> float:
    with load_runner(bundle, a) as ra, load_runner(bundle, b) as rb:
        return float(np.mean([(ra.predict(f) == rb.predict(f)).mean() for f in frames]))


@pytest.mark.gpu
@pytest.mark.parametrize("precision, reference, minimum", [
    # The random net's logits have low margins (see test_qdq), so rounding flips some pixels; a
    # layout or normalisation mistake would leave ~1/6 agreeing.
    ("int8", "onnx-int8", 0.9),  # TensorRT's int8 kernels vs onnxruntime's simulated quantization
    ("fp16", "onnx-fp32", 0.95),
    ("fp32", "onnx-fp32", 0.95),  # TF32 is on by default
])
def test_engine_labels_match_onnxruntime(gpu_bundle, precision, reference, minimum):
    bundle, frames = gpu_bundle
    artifact = compile_bundle(bundle, precision, workspace_mb=256, log=lambda _: None)
    name = f"tensorrt-{precision}"
    manifest = read_manifest(bundle)  # checksums verified, engine + sidecar + timing cache listed
    assert manifest.default == name and manifest.artifacts[name] == artifact
    assert {f"{name}.engine", f"{name}.engine.json", f"{name}.timing.cache"} <= set(manifest.files)
    sidecar = json.loads((bundle / f"{name}.engine.json").read_text())
    assert sidecar["precision"] == precision and sidecar["tensorrt"] == require_tensorrt()
    assert agreement(bundle, name, reference, frames) >= minimum


@pytest.mark.gpu
def test_engine_moved_to_another_target_is_refused(gpu_bundle, tmp_path):
    bundle, _ = gpu_bundle
    copy = shutil.copytree(bundle, tmp_path / "copy")
    compile_bundle(copy, "int8", log=lambda _: None)
    sidecar = copy / "tensorrt-int8.engine.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "tensorrt": "0.0.0"}))
    manifest = read_manifest(copy, verify=False)  # the sidecar no longer matches its checksum
    with pytest.raises(EdgesegError, match="rebuild with `edgeseg compile"):
        runner_for(copy, manifest.artifacts["tensorrt-int8"]).activate()


@pytest.mark.gpu
def test_engine_runs_in_another_thread_than_it_was_activated_in(gpu_bundle):
    """The pipeline activates its runner in the main thread and infers in a stage thread."""
    bundle, frames = gpu_bundle
    compile_bundle(bundle, "fp16", workspace_mb=256, log=lambda _: None)
    result: dict[str, np.ndarray] = {}
    with load_runner(bundle, "tensorrt-fp16") as runner:
        expected = runner.predict(frames[0])
        worker = threading.Thread(target=lambda: result.update(labels=runner.predict(frames[0])))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(result["labels"], expected)


def test_compile_with_calibrator_reads_the_recorded_calibration_set(tmp_path: Path, tiny_run: Path,
                                                                     synth_data: Path) -> None:
    """`edgeseg compile --calibrator` loads the bundle's calibration images (recorded by name and hash, found
    where the bundle names them or under --calib-data, else chosen afresh from --calib-data), then needs TensorRT."""
    import os
    import subprocess
    import sys

    from edgeseg.export import ExportOptions, export_bundle

    bundle = tmp_path / "jetson"
    export_bundle(tiny_run, bundle, ExportOptions(num_calib=8), "jetson", log=lambda _: None)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "edgeseg.cli.app", "compile", str(bundle), "--calibrator", "entropy"]
    recorded = json.loads((bundle / "edgeseg.json").read_text())["calibration"]
    assert recorded["data"] == synth_data.name  # outside the working folder: its name only

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    unplaced = run()  # the bundle names "synth"; there is none in the working folder
    assert unplaced.returncode != 0 and "give --calib-data" in unplaced.stderr.strip().splitlines()[-1]
    other = shutil.copytree(synth_data, tmp_path / "other")  # lacks the recorded images: a fresh choice
    for name in recorded["files"]:
        (other / name).unlink()
    changed = shutil.copytree(synth_data, tmp_path / "changed")
    (changed / recorded["files"][0]).write_bytes((changed / recorded["files"][1]).read_bytes())
    tampered = run("--calib-data", str(changed))
    assert tampered.returncode != 0 and "sha256 mismatch" in tampered.stderr.strip().splitlines()[-1]
    for out in (run("--calib-data", str(synth_data)), run(cwd=synth_data.parent), run("--calib-data", str(other))):
        # calibration frames load; what is missing is TensorRT itself
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1] == (
            "error: TensorRT is not installed (JetPack ships it; elsewhere: pip install tensorrt)")
    missing = subprocess.run([*cmd, "--calib-data", str(tmp_path / "nowhere")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "nowhere" in missing.stderr.strip().splitlines()[-1]
