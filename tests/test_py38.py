"""The device side stays Python 3.8 (JetPack 5): the static check passes, catches 3.9-only code, and covers
every module the device commands import; training commands on 3.8 stop in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.cli.app import require_training_python
from edgeseg.runtime.errors import EdgesegError

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "py38_check.py"

needs_vermin = pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import vermin"]).returncode != 0,
                                  reason="vermin is not installed (pip install -e '.[dev]')")


def run_check(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True, timeout=120)


@needs_vermin
def test_device_side_passes_the_check() -> None:
    proc = run_check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "files OK" in proc.stdout


FUTURE = "from __future__ import annotations\n"
PROBES = {  # probe source, whether its annotations are evaluated (a CLI module), what the check says
    "stdlib": (FUTURE + "import functools\n\n@functools.cache\ndef f() -> int:\n    return 1\n", False,
               "functools.cache"),
    "syntax": ("with (open('a') as a, open('b') as b):\n    pass\n", False, "parentheses"),
    "no-future": ("def f(x: list[int]) -> None:\n    pass\n", False, "from __future__ import annotations"),
    "alias": (FUTURE + "Table = dict[str, int]\n", False, "dict[str, int]: subscripted builtin"),
    "abc-alias": (FUTURE + "from collections.abc import Callable\n\nLog = Callable[[str], None]\n", False,
                  "Callable[[str], None]"),
    "union": (FUTURE + "import os\n\nMaybe = os.PathLike | None\n", False, "union needs 3.10"),
    "typer-generic": (FUTURE + "import typer\n\ndef cmd(paths: list[str] = typer.Argument(...)) -> None:\n"
                      "    pass\n", True, "list[str]: subscripted builtin"),
    "typer-union": (FUTURE + "from pathlib import Path\n\ndef cmd(out: Path | None = None) -> None:\n    pass\n",
                    True, "Path | None: `X | Y` union"),
}


@needs_vermin
@pytest.mark.parametrize("name", PROBES)
def test_check_catches_a_39_only_construct(name: str, tmp_path: Path) -> None:
    source, evaluated, says = PROBES[name]
    probe = tmp_path / f"probe_{name.replace('-', '_')}.py"
    probe.write_text(source)
    proc = run_check("--evaluated", probe) if evaluated else run_check(probe)
    assert proc.returncode == 1, proc.stdout
    assert says in proc.stdout, proc.stdout


@needs_vermin
def test_check_accepts_38_code(tmp_path: Path) -> None:
    """Postponed annotations may use 3.10 syntax; evaluated ones use typing's forms."""
    library, cli = tmp_path / "library.py", tmp_path / "cli.py"
    library.write_text(FUTURE + "def f(x: list[int] | None, y: dict[str, tuple[int, ...]]) -> int | None:\n"
                       "    return None\n\nflags = 1 | 2\n")
    cli.write_text(FUTURE + "from typing import List, Optional\n\ndef cmd(paths: List[str], n: Optional[int]) -> None:"
                   "\n    pass\n")
    proc = run_check(library, "--evaluated", cli)
    assert proc.returncode == 0, proc.stdout + proc.stderr


DEVICE_COMMANDS = """
import json, sys
for name in ("tensorflow", "keras", "tf2onnx", "onnxruntime"):
    sys.modules[name] = None  # a device has none of them: importing one fails
from edgeseg.cli.app import app
from edgeseg.runtime.errors import EdgesegError
bundle, frames, data, bench_json = sys.argv[1:5]
outcomes = []
for args in (["info", "camvid"], ["check", bundle], ["compile", bundle],
             ["bench", "camvid", "--runs", "2", "--warmup", "1", "--threads", "1", "--json", bench_json],
             ["eval", "camvid", "--data", data, "--threads", "1"],
             ["demo", "camvid", "--source", frames, "--sink", "null", "--threads", "1"]):
    try:
        app(args, standalone_mode=False)
        outcomes.append([args[0], "ok"])
    except EdgesegError as exc:
        outcomes.append([args[0], str(exc)])
files = sorted({getattr(m, "__file__", None) or "" for n, m in list(sys.modules.items()) if n.startswith("edgeseg")})
print(json.dumps({"outcomes": outcomes, "files": files}))
"""


def test_device_commands_import_only_checked_modules(tmp_path: Path) -> None:
    """The device commands run with TensorFlow, Keras and onnxruntime absent, and every edgeseg module they
    import is one the 3.8 check covers."""
    import cv2
    import numpy as np

    from edgeseg.data.synth import generate_synthetic
    from edgeseg.runtime.manifest import resolve_bundle

    sys.path.insert(0, str(CHECK.parent))
    try:
        import py38_check
    finally:
        sys.path.remove(str(CHECK.parent))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    data = generate_synthetic(tmp_path / "synth", num=4, size=(48, 64), seed=0)
    args = [resolve_bundle("camvid"), frames, data, tmp_path / "bench.json"]
    proc = subprocess.run([sys.executable, "-c", DEVICE_COMMANDS, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    outcomes = dict(report["outcomes"])
    assert outcomes["info"] == outcomes["bench"] == outcomes["demo"] == "ok", outcomes
    assert "no int8 ONNX artifact" in outcomes["compile"], outcomes  # reached the TensorRT module
    assert "do not match the model" in outcomes["eval"], outcomes  # read the data, 6 classes vs 11
    assert json.loads((tmp_path / "bench.json").read_text())
    covered = [ROOT / p for p in py38_check.DEVICE + py38_check.EVALUATED]
    files = [Path(f).resolve() for f in report["files"] if f]
    assert any(f.parent.name == "cli" for f in files) and any(f.parent.name == "runtime" for f in files)
    unchecked = [str(f) for f in files if not any(f == c or c in f.parents for c in covered)]
    assert not unchecked, unchecked


def test_training_commands_on_38_stop_in_one_line() -> None:
    with pytest.raises(EdgesegError, match=r"^edgeseg train needs Python >= 3.9 .*this is Python 3.8") as info:
        require_training_python("train", (3, 8))
    assert "\n" not in str(info.value)
    require_training_python("train", (3, 9))
    for command in ("demo", "compile", "check", "info", "eval", "bench"):
        require_training_python(command, (3, 8))


def test_missing_tensorflow_is_a_one_line_error(tmp_path: Path) -> None:
    """A device install (no TensorFlow) asked to train says what to install, without a traceback."""
    script = ("import sys\nsys.modules['tensorflow'] = sys.modules['keras'] = None\n"
              "sys.argv = ['edgeseg', 'train', '--out', sys.argv[1], '--epochs', '1']\n"
              "from edgeseg.cli.app import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", script, tmp_path / "run"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: edgeseg train needs the training extra: pip install 'edgeseg[train]'"], proc.stderr
    assert not (tmp_path / "run").exists()
