"""`edgeseg build` end to end on tiny synthetic data, stage reuse, the jetson bundle, and `edgeseg bench`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _edgeseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli.app", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`edgeseg build --target cpu` with no data: it generates the synthetic set, trains, exports, reports."""
    work = tmp_path_factory.mktemp("build")
    out = _edgeseg("build", "--target", "cpu", "--epochs", "2", "--input-size", "64x96", "--num-calib", "8",
                   cwd=work)
    assert out.returncode == 0, out.stderr
    return work / "build" / "cpu", out


def test_build_cpu_end_to_end(cpu_build) -> None:
    root, out = cpu_build
    bundle = root / "bundle"
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    assert set(manifest["artifacts"]) == {"fp32", "int8"} and manifest["target"] == "cpu"
    assert (root / "data" / "dataset.yaml").is_file() and (root / "run" / "model.keras").is_file()
    report = json.loads((bundle / "report.json").read_text())
    assert report["model"]["params"] > 0 and report["model"]["macs"] > 0
    for name in ("fp32", "int8"):
        art = report["artifacts"][name]
        assert 0 <= art["miou"] <= 1 and art["bytes"] > 0 and art["latency_ms"]["p50"] > 0
        assert set(art["per_class_iou"]) == set(manifest["classes"])
    assert report["comparison"]["drop_points"] == manifest["evaluation"]["comparison"]["drop_points"]
    assert "| int8 | litert | int8 |" in (bundle / "report.md").read_text()
    # the logit-adjustment strength training chose travels with the bundle and shows in the report
    alpha = json.loads((root / "run" / "state.json").read_text())["logit_adjustment"]["alpha"]
    assert manifest["model"]["logit_adjustment"] == report["model"]["logit_adjustment"] == alpha
    assert (f"strength {alpha}." in (bundle / "report.md").read_text()) == (alpha > 0)
    assert out.stdout.strip().splitlines()[-1].startswith(f"built {Path('build/cpu/bundle')}")


def test_build_rerun_reuses_every_stage(cpu_build) -> None:
    root, _ = cpu_build
    stamps = {p: p.stat().st_mtime_ns for p in (root / "run" / "model.keras", root / "bundle" / "edgeseg.json")}
    out = _edgeseg("build", "--target", "cpu", "--epochs", "2", "--input-size", "64x96", cwd=root.parent.parent)
    assert out.returncode == 0, out.stderr
    assert "train: reusing" in out.stdout and "export: reusing" in out.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_build_jetson_reuses_the_run_and_passes_check(cpu_build, tmp_path: Path) -> None:
    root, _ = cpu_build
    out = _edgeseg("build", "--target", "jetson", "--run", str(root / "run"), "--data", str(root / "data"),
                   "--out", str(tmp_path / "jetson"), "--num-calib", "8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "edgeseg compile" in out.stdout and "trtexec --onnx=" in out.stdout  # no TensorRT here
    bundle = tmp_path / "jetson" / "bundle"
    check = _edgeseg("check", str(bundle), cwd=tmp_path)
    assert check.returncode == 0 and "TensorRT-conformant" in check.stdout
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    assert manifest["artifacts"]["int8"]["file"].endswith(".onnx") and manifest["calibration"]["method"]


def test_bench_two_bundles_table_json_and_plot(cpu_build, tiny_bundle: Path, tmp_path: Path) -> None:
    root, _ = cpu_build
    out = _edgeseg("bench", str(root / "bundle"), str(tiny_bundle), str(root / "run"), "--data",
                   str(root / "data"), "--runs", "10", "--warmup", "2", "--json", str(tmp_path / "b.json"),
                   "--plot", str(tmp_path / "b.png"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())
    assert len(rows) == 5  # two artifacts per bundle and the Keras model
    for row in rows:
        assert set(row) == {"name", "format", "precision", "file", "bytes", "miou", "per_class_iou", "latency_ms",
                            "fps", "threads", "skipped"}
        assert row["skipped"] is None and 0 <= row["miou"] <= 1 and row["fps"] > 0
        assert set(row["latency_ms"]) == {"p50", "p90", "p99"} and row["latency_ms"]["p50"] > 0
        assert row["name"] in out.stdout
    assert {r["format"] for r in rows} == {"TFLite", "Keras"}
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
