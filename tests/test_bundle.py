"""Deploy bundles: `edgeseg info`/`eval` round trip, atomic export and --force, --max-drop, checksums."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.calibration.select import content_hash
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import MANIFEST_NAME, portable_path, read_manifest, sha256_file

EDGESEG = str(Path(sys.executable).with_name("edgeseg"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
_RUNTIME_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d"
                            r"|INFO: Created TensorFlow Lite XNNPACK delegate)")


def cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EDGESEG, *map(str, args)], check=False, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _RUNTIME_NOISE.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_manifest_describes_the_bundle(tiny_bundle: Path, tiny_run: Path, synth_data: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest.default == "int8" and set(manifest.artifacts) == {"fp32", "int8"}
    assert manifest.target == "cpu" and manifest.num_classes == 6 and len(manifest.palette) == 6
    int8 = manifest.artifacts["int8"]
    assert (int8.input.dtype, int8.input.height, int8.input.width) == ("uint8", 64, 96)
    assert int8.input.normalization_folded and (int8.output.kind, int8.output.dtype) == ("labels", "uint8")
    model = manifest.model
    assert model["name"] == "fcn-tiny" and model["params"] > 0 and model["macs"] > 0
    assert manifest.versions["edgeseg"] and "tensorflow" in json.dumps(manifest.versions)
    # Every file but the manifest is checksummed, the calibration record names the images used.
    on_disk = {p.name for p in tiny_bundle.iterdir()} - {MANIFEST_NAME}
    assert set(manifest.files) == on_disk == {"model_fp32.tflite", "model_int8.tflite"}
    assert all(sha256_file(tiny_bundle / f) == digest for f, digest in manifest.files.items())
    cal = manifest.calibration
    assert cal["num_images"] == len(cal["files"]) > 0 and len(cal["sha256"]) == 64
    assert cal["data"] == synth_data.name and all((synth_data / f).is_file() for f in cal["files"])
    # the calibration cache stays in the run (named relative to it), not in what is deployed
    assert cal["cache"].startswith("calibration/") and (tiny_run / cal["cache"]).is_file()
    # portable: no path of this machine (the data and the run lie outside the working folder: names only)
    assert manifest.model["run"] == tiny_run.name
    assert not [s for s in _strings(json.loads((tiny_bundle / MANIFEST_NAME).read_text()))
                if s.startswith("/") or str(tiny_run.parent) in s], "absolute path in the manifest"


def test_portable_path_is_relative_inside_the_working_folder_else_a_name(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work" / "data" / "camvid").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert portable_path(tmp_path / "work" / "data" / "camvid") == "data/camvid"
    assert portable_path("data/camvid") == "data/camvid"
    assert portable_path(tmp_path / "elsewhere" / "camvid") == "camvid"
    assert portable_path("../elsewhere/camvid") == "camvid"


def test_info_prints_artifacts_and_classes(tiny_bundle_logits: Path) -> None:
    proc = cli("info", tiny_bundle_logits)
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(tiny_bundle_logits)
    out = proc.stdout
    assert "artifact int8 (default): model_int8.tflite [litert int8]" in out
    assert "artifact fp32: model_fp32.tflite [litert fp32]" in out
    assert "input NHWC uint8 64x96" in out and "output logits int8" in out
    assert f"classes (6): {', '.join(manifest.classes)}" in out
    assert f"calibration: {manifest.calibration['num_images']} images" in out
    assert f"accuracy on {manifest.evaluation['split']}: float mIoU" in out

    proc = cli("info", tiny_bundle_logits, "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads((tiny_bundle_logits / MANIFEST_NAME).read_text())


@pytest.mark.parametrize("artifact", ["int8", "fp32"])
def test_eval_bundle_matches_the_manifest_evaluation(artifact: str, tiny_bundle_logits: Path,
                                                     synth_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    args = ["--artifact", artifact] if artifact != "int8" else []  # int8: the default artifact
    proc = cli("eval", tiny_bundle_logits, "--data", synth_data, "--json", out, *args)
    assert proc.returncode == 0, proc.stderr
    evaluation = read_manifest(tiny_bundle_logits).evaluation
    assert evaluation["data"] == synth_data.name and evaluation["split"] == "val"
    val = sorted(p.relative_to(synth_data).as_posix() for p in (synth_data / "val").iterdir())
    assert evaluation["files"] == val and evaluation["sha256"] == content_hash(synth_data, val)
    assert json.loads(out.read_text()) == evaluation["scores"][artifact]


def test_export_refuses_to_overwrite_without_force(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeseg.export import ExportOptions, export_cpu

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = snapshot(bundle)
    with pytest.raises(EdgesegError, match=r"already exists \(use --force"):
        export_cpu(tiny_run, bundle, ExportOptions(), log=lambda _: None)
    assert snapshot(bundle) == before and not leftovers(tmp_path)


def test_failed_export_keeps_the_old_bundle_and_force_replaces_it(tiny_run: Path, tiny_bundle: Path,
                                                                  tiny_bundle_logits: Path, synth_data: Path,
                                                                  tmp_path: Path) -> None:
    from edgeseg.export import ExportOptions, export_cpu

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = snapshot(bundle)
    # The same model, data and calibration as tiny_bundle_logits: the same INT8 drop. Half a point
    # below it, --max-drop must fail the export.
    drop = read_manifest(tiny_bundle_logits).evaluation["comparison"]["drop_points"]
    opts = ExportOptions(output="logits", eval_data=synth_data, max_drop=drop - 0.5, force=True)
    with pytest.raises(EdgesegError, match="more than --max-drop .*bundle not written") as exc:
        export_cpu(tiny_run, bundle, opts, log=lambda _: None)
    assert "\n" not in str(exc.value) and f"{drop:.2f}" in str(exc.value)
    assert snapshot(bundle) == before and not leftovers(tmp_path)

    # Within the limit, --force replaces the bundle as a whole.
    opts.max_drop = drop + 0.5
    result = export_cpu(tiny_run, bundle, opts, log=lambda _: None)
    assert result.manifest.evaluation["comparison"]["drop_points"] == drop
    manifest = read_manifest(bundle)
    assert manifest.artifacts["int8"].output.kind == "logits" and manifest.evaluation
    assert set(snapshot(bundle)) == set(manifest.files) | {MANIFEST_NAME}
    assert not leftovers(tmp_path)


def test_tampered_model_fails_the_checksum(tiny_bundle: Path, synth_data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(EdgesegError, match="checksum mismatch"):
        read_manifest(bundle)
    read_manifest(bundle, verify=False)  # the manifest itself is fine
    for proc in (cli("info", bundle), cli("eval", bundle, "--data", synth_data, "--artifact", "fp32")):
        line = one_line_error(proc)
        assert str(model) in line and "checksum mismatch" in line
    (bundle / "model_fp32.tflite").unlink()
    with pytest.raises(EdgesegError, match="model_fp32.tflite: missing from bundle"):
        read_manifest(bundle)
