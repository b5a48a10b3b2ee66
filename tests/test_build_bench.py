"""`edgeseg build` end to end on tiny synthetic data, stage reuse, the jetson bundle, and `edgeseg bench`."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
#: The one latency schema: bench JSON rows and report.json alike (and demo stats).
LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps"}


def _edgeseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli.app", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


_TERMINAL_CODE = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b[()][A-Z0-9]|\r|\n|[^\x1b\r\n]+")


def screen_lines(output: str) -> list[str]:
    """What a terminal shows after `output` (scrolled-off lines included): text, carriage returns, newlines,
    cursor up/down/column and line erasing, as progress bars use them; colours ignored."""
    lines, row, col = [""], 0, 0
    for match in _TERMINAL_CODE.finditer(output):
        token, args, code = match.group(0), match.group(1) or "", match.group(2)
        count = int(args) if args.isdigit() else 1
        if token == "\n" or code == "B":
            row, col = row + (1 if token == "\n" else count), 0 if token == "\n" else col
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif code == "A":
            row = max(0, row - count)
        elif code == "K":
            lines[row] = lines[row][:col] if args in ("", "0") else ""
        elif code == "G":
            col = count - 1
        elif not token.startswith("\x1b"):
            lines[row] = lines[row].ljust(col)[:col] + token + lines[row][col + len(token):]
            col += len(token)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def in_terminal(*args: str, cwd: Path, columns: int = 120) -> tuple[int, list[str]]:
    """Run edgeseg on a pseudo-terminal, as a user sees it: the exit status and the screen's lines."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli.app", *args], cwd=cwd, env=ENV, stdin=slave,
                            stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(60), screen_lines(b"".join(chunks).decode("utf-8", "replace"))


#: What TensorFlow, the converters and the interpreters print (absl/C++ log lines, Keras' export dump).
TF_CHATTER = re.compile(r"absl::InitializeLog|^[IWEF]\d{4} |XNNPACK|fully_quantize|Saved artifact|TensorSpec|"
                        r"Captures:|oneDNN|tensorflow|UserWarning")


def test_screen_lines_follow_cursor_movements() -> None:
    assert screen_lines("a\nbar 1\rbar 2\n\x1b[1A\x1b[2Kdone\nb\n") == ["a", "done", "b"]
    assert screen_lines("x\x1b[32mgreen\x1b[0m\r\x1b[2K") == []


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory) -> tuple[Path, list[str]]:
    """`edgeseg build --target cpu` with no data, on a terminal: it generates the synthetic set, trains,
    exports, reports."""
    work = tmp_path_factory.mktemp("build")
    status, lines = in_terminal("build", "--target", "cpu", "--epochs", "2", "--input-size", "64x96",
                                "--num-calib", "8", cwd=work)
    assert status == 0, "\n".join(lines)
    return work / "build" / "cpu", lines


def test_build_output_fits_one_screen_with_tensorflow_kept_in_the_log(cpu_build) -> None:
    root, lines = cpu_build
    assert len(lines) <= 40, "\n".join(lines)
    assert not [line for line in lines if TF_CHATTER.search(line)], "\n".join(lines)
    log = (root / "build.log").read_text()
    assert "fully_quantize" in log and "XNNPACK" in log and "train: training fcn-tiny" in log
    assert re.search(r"^  epoch 2/2: loss [\d.]+, val mIoU [\d.]+$", log, re.M)  # the detail stays in the log
    assert any(line.startswith("  edgeseg demo camvid --source sample --sink http://127.0.0.1:8080")
               for line in lines)


def test_build_cpu_end_to_end(cpu_build) -> None:
    root, lines = cpu_build
    bundle = root / "bundle"
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    assert set(manifest["artifacts"]) == {"fp32", "int8"} and manifest["target"] == "cpu"
    assert (root / "data" / "dataset.yaml").is_file() and (root / "run" / "model.keras").is_file()
    report = json.loads((bundle / "report.json").read_text())
    assert report["model"]["params"] > 0 and report["model"]["macs"] > 0
    for name in ("fp32", "int8"):
        art = report["artifacts"][name]
        assert 0 <= art["miou"] <= 1 and art["bytes"] > 0
        assert set(art["latency"]) == LATENCY_KEYS and 0 < art["latency"]["p50_ms"] <= art["latency"]["p99_ms"]
        assert set(art["per_class_iou"]) == set(manifest["classes"])
    assert report["comparison"]["drop_points"] == manifest["evaluation"]["comparison"]["drop_points"]
    assert "| int8 | litert | int8 |" in (bundle / "report.md").read_text()
    # the logit-adjustment strength training chose travels with the bundle and shows in the report
    alpha = json.loads((root / "run" / "state.json").read_text())["logit_adjustment"]["alpha"]
    assert manifest["model"]["logit_adjustment"] == report["model"]["logit_adjustment"] == alpha
    assert (f"strength {alpha}." in (bundle / "report.md").read_text()) == (alpha > 0)
    built = next(line for line in lines if line.startswith("built "))
    float_miou = report["comparison"]["float"]["miou"] * 100
    assert built.startswith(f"built {Path('build/cpu/bundle')}: float mIoU {float_miou:.2f}")


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
        assert set(row) == {"name", "format", "precision", "file", "bytes", "miou", "heldout_miou", "per_class_iou",
                            "latency", "threads", "skipped"}
        assert row["skipped"] is None and 0 <= row["miou"] <= 1
        assert set(row["latency"]) == LATENCY_KEYS and row["latency"]["p50_ms"] > 0 and row["latency"]["fps"] > 0
        assert row["name"] in out.stdout
    assert {r["format"] for r in rows} == {"TFLite", "Keras"}
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
