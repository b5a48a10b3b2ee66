"""Mistyped and inapplicable options through the real `edgeseg` command: each fails in one line on stderr
with a non-zero exit, before any training or conversion starts (within a few seconds of interpreter start,
less than importing TensorFlow takes) and without creating anything."""
from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import pytest
from test_cli_foundation import EDGESEG, ENV

#: Seconds a refused command may take beyond `edgeseg --version` (importing TensorFlow alone takes longer
#: on the 2-core CI machine; a conversion or a training epoch far longer).
MARGIN_S = 5.0

MISSING = "{tmp}/missing"
CASES = [
    # train
    (["train", "--out", "{tmp}/r", "--model", "fcn-huge"], "'fcn-huge' is not one of 'fcn-tiny'"),
    (["train", "--out", "{tmp}/r", "--strategy", "mirror"], "'--strategy': 'mirror' is not one of"),
    (["train", "--out", "{tmp}/r", "--augment", "heavy"], "'--augment': 'heavy' is not one of 'standard', 'strong'"),
    (["train", "--out", "{tmp}/r", "--class-weights", "inverse"], "'--class-weights'"),
    (["train", "--out", "{tmp}/r", "--data", "{data}", "--format", "png"], "'png' is not one of 'camvid'"),
    (["train", "--out", "{tmp}/r", "--epoch", "3"], "No such option: --epoch"),
    (["train", "--out", "{tmp}/r", "--epochs", "three"], "'--epochs'"),
    (["train", "--out", "{tmp}/r", "--data", MISSING], "missing' does not exist"),
    (["train", "--out", "{tmp}/r", "--input-size", "96"], "'--input-size': size '96' is not HxW"),
    (["train", "--out", "{tmp}/r", "--data", "{data}", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["train", "--out", "{tmp}/r", "--data", "{data}", "--freeze-backbone"],
     "--freeze-backbone does not apply with --model fcn-tiny (only with --model fcn8s)"),
    (["train", "--out", "{tmp}/r", "--model", "fcn8s", "--backbone-weights", MISSING], "missing' does not exist"),
    (["train", "--out", "{tmp}/r", "--data", "{data}", "--no-logit-adjustment", "--logit-alpha", "0.5"],
     "--logit-alpha does not apply with --no-logit-adjustment"),
    (["train", "--out", "{tmp}/r", "--data", "{data}", "--freeze-encoder-epochs", "2"],
     "--freeze-encoder-epochs applies only with --init-from"),
    (["train", "--out", "{run}", "--resume", "--model", "fcn-small"], "model 'fcn-tiny', not 'fcn-small'"),
    # export
    (["export", "{run}", "--out", "{tmp}/b", "--calib-method", "kl"], "'kl' is not one of 'minmax', 'entropy'"),
    (["export", "{run}", "--out", "{tmp}/b", "--target", "tpu"], "'tpu' is not one of 'cpu', 'jetson'"),
    (["export", "{run}", "--out", "{tmp}/b", "--precision", "bf16"], "'--precision': 'bf16' is not one of"),
    (["export", "{run}", "--out", "{tmp}/b", "--output", "probs"], "'probs' is not one of 'logits', 'labels'"),
    (["export", "{run}", "--out", "{tmp}/b", "--target", "jetson", "--precision", "fp16"],
     "precision 'fp16' is not offered for --target jetson"),
    (["export", "{run}", "--out", "{tmp}/b", "--layout", "nhwc"],
     "--layout does not apply with --target cpu (only with --target jetson)"),
    (["export", "{run}", "--out", "{tmp}/b", "--opset", "13"], "--opset does not apply with --target cpu"),
    (["export", "{run}", "--out", "{tmp}/b", "--target", "jetson", "--float-layers", "conv1"],
     "--float-layers does not apply with --target jetson (only with --target cpu)"),
    (["export", "{run}", "--out", "{tmp}/b", "--target", "jetson", "--debug-quant"],
     "--debug-quant does not apply with --target jetson"),
    (["export", "{run}", "--out", "{tmp}/b", "--precision", "fp32", "--calib-data", "{data}"],
     "--calib-data does not apply with --precision fp32 (only with --precision int8)"),
    (["export", "{run}", "--out", "{tmp}/b", "--calib-data", MISSING], "'--calib-data': dir"),
    (["export", "{run}", "--out", "{tmp}/b", "--eval-data", MISSING], "'--eval-data': dir"),
    (["export", "{run}", "--out", "{tmp}/b", "--calib-data", "{tmp}"], "unrecognised dataset layout"),
    (["export", "{run}", "--out", "{tmp}/b", "--target", "jetson", "--calib-method", "auto"],
     "--calib-method auto scores each method on the evaluation images: give --eval-data"),
    (["export", "{run}", "--out", "{tmp}/b", "--max-drop", "1"], "--max-drop compares float and INT8"),
    (["export", "{run}", "--out", "{tmp}/b", "--eval-split", "test"], "--eval-split applies only with --eval-data"),
    (["export", "{data}", "--out", "{tmp}/b"], "not a training run (no config.json)"),
    (["export", "{run}", "--out", "{run}"], "already exists (use --force to overwrite)"),
    # build
    (["build", "--output", "foo"], "'--output': 'foo' is not one of 'logits', 'labels'"),
    (["build", "--target", "tpu"], "'tpu' is not one of 'cpu', 'jetson'"),
    (["build", "--model", "fcn-huge"], "'fcn-huge' is not one of"),
    (["build", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["build", "--run", "{run}", "--epochs", "3"], "--epochs does not apply with --run"),
    (["build", "--run", MISSING], "'--run': dir"),
    # compile
    (["compile", "{tmp}/bundle", "--precision", "bf16"], "'bf16' is not one of 'fp32', 'fp16', 'int8'"),
    (["compile", "{tmp}/bundle", "--calibrator", "kl"], "'kl' is not one of 'entropy', 'minmax'"),
    (["compile", "{tmp}/bundle", "--calib-data", "{data}"], "--calib-data applies only with --calibrator"),
    (["compile", "{tmp}/bundle", "--precision", "fp16", "--calibrator", "entropy"],
     "--calibrator does not apply with --precision fp16 (only with --precision int8)"),
    (["compile", "{tmp}/bundle", "--dla", "-1"], "'--dla'"),
    # eval
    (["eval", "camvid", "--data", "{data}", "--format", "png"], "'png' is not one of"),
    (["eval", "camvid", "--data", MISSING], "'--data': dir"),
    (["eval", "camvid", "--data", "{data}", "--threads", "0"], "'--threads'"),
    (["eval", "{run}", "--data", "{data}", "--artifact", "int8"], "--artifact names a bundle's model file"),
    # bench
    (["bench", "camvid", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["bench", "camvid", "--plot", "{tmp}/p.png"], "--plot shows accuracy against latency: give --data"),
    (["bench", "camvid", "--data", MISSING], "'--data': dir"),
    # demo
    (["demo", "camvid", "--mode", "blend"], "'blend' is not one of 'overlay', 'mask', 'side'"),
    (["demo", "camvid", "--alpha", "2"], "'--alpha'"),
    (["demo", "camvid", "--max-frames", "0"], "'--max-frames'"),
    # pretrain, data
    (["pretrain", "--images", "{data}", "--out", "{tmp}/p", "--loss", "l3"], "'l3' is not one of 'l1', 'l2'"),
    (["pretrain", "--images", "{data}", "--out", "{tmp}/p", "--model", "fcn-huge"], "'fcn-huge' is not one of"),
    (["pretrain", "--images", "{data}/train", "--out", "{pretrain}", "--resume", "--epochs", "3"],
     "state.json: --resume continues the run with its epochs 2, not 3"),
    (["data", "synth", "--out", "{tmp}/s", "--size", "3"], "'--size': size '3' is not HxW"),
    (["data", "groups", "{data}", "--format", "coco"], "'coco' is not one of"),
]


@pytest.fixture(scope="module")
def bound_s() -> float:
    """`edgeseg --version` (interpreter start, the CLI's imports) plus `MARGIN_S`."""
    times = []
    for _ in range(3):
        start = time.monotonic()
        subprocess.run([EDGESEG, "--version"], check=True, env=ENV, capture_output=True, timeout=60)
        times.append(time.monotonic() - start)
    return statistics.median(times) + MARGIN_S


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_there_are_enough_cases_across_the_commands() -> None:
    commands = {args[0] for args, _ in CASES}
    assert len(CASES) >= 20
    assert {"train", "export", "build", "compile", "eval", "bench", "demo"} <= commands


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(args) for args, _ in CASES])
def test_a_bad_option_fails_in_one_line_before_any_work(args: list[str], says: str, config_only_run: dict[str, Path],
                                                        bound_s: float, tmp_path: Path) -> None:
    argv = [a.format(tmp=tmp_path, **config_only_run) for a in args]
    watched = [tmp_path, *config_only_run.values()]
    before = [snapshot(root) for root in watched]
    start = time.monotonic()
    proc = subprocess.run([EDGESEG, *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert says in lines[0], (says, lines[0])
    assert took < bound_s, f"took {took:.1f} s (bound {bound_s:.1f} s): work started before the refusal"
    assert [snapshot(root) for root in watched] == before  # nothing created, changed or removed


def test_every_choice_is_the_one_its_module_acts_on() -> None:
    """The CLI's choices (edgeseg.choices) are the names the training side implements."""
    from edgeseg.choices import MODEL_NAMES, PRETRAIN_LOSSES
    from edgeseg.model import COMPACT_MODELS
    from edgeseg.pretrain import LOSSES

    assert set(MODEL_NAMES) == {*COMPACT_MODELS, "fcn8s"}
    assert tuple(LOSSES) == PRETRAIN_LOSSES
