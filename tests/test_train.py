"""Training: a tiny model learns, `--resume` after SIGKILL equals an uninterrupted run, MirroredStrategy."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeseg.rundir import BEST_MODEL, CHECKPOINTS, HISTORY, STATE, RunConfig
from edgeseg.runtime.errors import EdgesegError

EDGESEG = str(Path(sys.executable).with_name("edgeseg"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}

#: An easy synthetic task: axis-aligned boxes whose colour gives the class, on a dark background.
EASY_CLASSES = ["background", "red", "green", "blue"]
EASY_COLOURS = [(40, 40, 40), (230, 30, 30), (30, 200, 30), (40, 60, 230)]


def make_easy_dataset(root: Path, n_train: int = 24, n_val: int = 8, size: tuple[int, int] = (48, 64),
                      seed: int = 0) -> Path:
    """A CamVid-layout dataset a tiny FCN can learn in seconds (unlike `edgeseg data synth`, whose
    object colours are independent of the class)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            image = np.empty((h, w, 3), np.float32)
            image[:] = EASY_COLOURS[0]
            labels = np.zeros((h, w), np.uint8)
            for _ in range(3):
                cls = int(rng.integers(1, len(EASY_CLASSES)))
                y0, x0 = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
                y1, x1 = y0 + int(rng.integers(10, h // 2)), x0 + int(rng.integers(10, w // 2))
                image[y0:y1, x0:x1] = EASY_COLOURS[cls]
                labels[y0:y1, x0:x1] = cls
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"{i:03d}.png"), image[..., ::-1])
            cv2.imwrite(str(root / f"{split}annot" / f"{i:03d}.png"), labels)
    meta = {"classes": EASY_CLASSES, "palette": [list(c) for c in EASY_COLOURS], "ignore_index": 255}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("easy") / "data")


def _config(data: Path, **kwargs) -> RunConfig:
    from edgeseg.data.readers import open_dataset

    spec = open_dataset(data, "train")
    base = {"model": "fcn-tiny", "classes": spec.classes, "palette": spec.palette, "input_size": (48, 64),
            "data": str(data), "data_format": spec.format}
    return RunConfig(**{**base, **kwargs})


def _history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / HISTORY).open()))


def test_tiny_model_learns_within_a_minute(easy_data: Path, tmp_path: Path) -> None:
    from edgeseg.train import train

    cfg = _config(easy_data, epochs=6, batch_size=2, learning_rate=5e-3, class_weighting="none", seed=0)
    rows: list[dict] = []
    result = train(cfg, tmp_path / "run", on_epoch=lambda epoch, row: rows.append(row))
    assert result.seconds < 60
    assert [r["epoch"] for r in rows] == list(range(6)) and result.epochs_run == 6
    losses = [r["loss"] for r in rows]
    mious = [r["val_miou"] for r in rows]
    assert losses[-1] < 0.75 * losses[0], losses
    # A background-only prediction scores ~0.18 here; the model must get well past it.
    assert max(mious) > mious[0] + 0.1 and max(mious) > 0.3, mious
    assert result.best_miou == pytest.approx(max(mious), abs=1e-6)
    assert result.best_epoch == mious.index(max(mious))
    # The run folder: best model, every epoch's checkpoint, history and state agree.
    run = tmp_path / "run"
    assert (run / BEST_MODEL).is_file()
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == [f"epoch_{e:03d}.keras" for e in range(6)]
    assert [float(r["val_miou"]) for r in _history(run)] == pytest.approx(mious)
    state = json.loads((run / STATE).read_text())
    assert state.pop("setup")["strategy"] == "default"
    assert state == {"epoch": 5, "best_epoch": result.best_epoch,
                     "best_miou": pytest.approx(result.best_miou)}
    assert json.loads((run / "val_scores.json").read_text())["miou"] == pytest.approx(result.best_miou)
    assert RunConfig.load(run) == cfg

    # A finished run is not silently overwritten, and a fresh folder has nothing to resume.
    with pytest.raises(EdgesegError, match="--resume"):
        train(cfg, run)
    with pytest.raises(EdgesegError, match="not a training run"):
        train(cfg, tmp_path / "empty", resume=True)


def test_class_weighted_run_takes_the_prior_back_out_once(easy_data: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from edgeseg.logit_adjust import ALPHAS, fold_offsets, logit_offsets
    from edgeseg.rundir import load_keras_model
    from edgeseg.train import TrainingData, train, training_done

    cfg = _config(easy_data, epochs=6, batch_size=2, learning_rate=5e-3, seed=0)  # median-frequency weights
    run = tmp_path / "run"
    result = train(cfg, run)
    state = json.loads((run / STATE).read_text())
    adjustment = state["logit_adjustment"]
    assert result.adjustment == adjustment and adjustment["alpha"] in ALPHAS
    # chosen for the best epoch's model, never worse than it, and what val_scores.json now reports
    assert adjustment["val_miou_trained"] == pytest.approx(state["best_miou"]) == pytest.approx(result.best_miou)
    assert adjustment["val_miou"] >= adjustment["val_miou_trained"]
    assert json.loads((run / "val_scores.json").read_text())["miou"] == pytest.approx(adjustment["val_miou"])
    checkpoint = run / CHECKPOINTS / f"epoch_{state['best_epoch']:03d}.keras"

    def changed_weights() -> list[str]:
        best, trained = load_keras_model(run / BEST_MODEL), load_keras_model(checkpoint)
        return [w.path for w, t in zip(best.weights, trained.weights) if not np.array_equal(w, t)]

    assert changed_weights() == (["classifier/bias"] if adjustment["alpha"] else [])
    assert training_done(run)

    # A finished run resumed changes nothing.
    stamp = (run / BEST_MODEL).stat().st_mtime_ns
    assert train(cfg, run, resume=True).adjustment == adjustment
    assert (run / BEST_MODEL).stat().st_mtime_ns == stamp

    # A best model that leans further towards rare classes (as after stronger weighting), adjustment
    # interrupted before it was recorded: resuming adjusts it, with a strength > 0, and gains.
    model = load_keras_model(checkpoint)
    fold_offsets(model, -logit_offsets(TrainingData.load(cfg, skip_bad=False).weights, 1.0))
    model.save(checkpoint)
    (run / STATE).write_text(json.dumps({k: v for k, v in state.items() if k != "logit_adjustment"}))
    assert not training_done(run)  # so `edgeseg build` resumes it instead of reusing it
    leaning = train(cfg, run, resume=True).adjustment
    assert leaning is not None and leaning["alpha"] > 0 and leaning["val_miou"] > leaning["val_miou_trained"]
    assert json.loads((run / STATE).read_text())["logit_adjustment"] == leaning
    assert changed_weights() == ["classifier/bias"] and training_done(run)

    # A run that opts out keeps its trained logits.
    plain = train(replace(cfg, epochs=1, logit_adjustment=False), tmp_path / "plain")
    assert plain.adjustment is None and "logit_adjustment" not in json.loads((tmp_path / "plain" / STATE).read_text())


def _train_cmd(data: Path, out: Path, epochs: int) -> list[str]:
    return [EDGESEG, "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "4", "--input-size", "32x48", "--lr", "5e-3", "--seed", "7"]


def _final_weights(run: Path, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import keras

    import edgeseg.model  # noqa: F401 - registers the custom layers

    model = keras.saving.load_model(run / CHECKPOINTS / f"epoch_{epoch:03d}.keras")
    return ([np.asarray(w) for w in model.get_weights()],
            [np.asarray(v) for v in model.optimizer.variables])


def test_resume_after_sigkill_equals_uninterrupted_run(easy_data: Path, tmp_path: Path) -> None:
    epochs, kill_after = 3, 0
    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted reference and the run to kill start together (two processes, two cores).
    reference = subprocess.Popen(_train_cmd(easy_data, full, epochs), cwd=tmp_path, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_train_cmd(easy_data, killed, epochs), cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None:
            try:
                state = json.loads((killed / STATE).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                state = {}
            if state.get("epoch", -1) >= kill_after:
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        victim.wait(30)
        _, err = reference.communicate(timeout=180)
    finally:
        for proc in (victim, reference):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished or failed before it could be killed"
    state = json.loads((killed / STATE).read_text())
    assert kill_after <= state["epoch"] < epochs - 1, state
    killed_at = state["epoch"]
    assert reference.returncode == 0, err[-2000:]

    resumed = subprocess.run([EDGESEG, "train", "--data", str(easy_data), "--out", str(killed), "--resume"],
                             check=False, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"for {epochs - killed_at - 1} epochs" in resumed.stdout  # only the remaining epochs ran

    # Same seed, same per-epoch data, op determinism, optimizer state restored from the checkpoint:
    # the resumed run must reproduce the uninterrupted one exactly (history rounded to 6 decimals).
    assert _history(killed) == _history(full)
    assert [int(r["epoch"]) for r in _history(full)] == list(range(epochs))
    assert json.loads((killed / STATE).read_text()) == json.loads((full / STATE).read_text())
    weights_full, opt_full = _final_weights(full, epochs - 1)
    weights_resumed, opt_resumed = _final_weights(killed, epochs - 1)
    assert len(weights_full) == len(weights_resumed) and len(opt_full) == len(opt_resumed)
    for a, b in zip(weights_full + opt_full, weights_resumed + opt_resumed):
        np.testing.assert_array_equal(a, b)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import edgeseg.train as training
    from edgeseg.data.readers import open_dataset
    from edgeseg.rundir import RunConfig

    used = []
    make_strategy = training.make_strategy

    def spy(name):  # record the strategy train() really runs under
        strategy = make_strategy(name)
        used.append({"replicas": strategy.num_replicas_in_sync,
                     "devices": list(strategy.extended.worker_devices)})
        return strategy

    training.make_strategy = spy
    data, out = sys.argv[1], sys.argv[2]
    spec = open_dataset(data, "train")
    cfg = RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(32, 48),
                    data=data, data_format=spec.format, epochs=2, batch_size=4, learning_rate=5e-3)
    result = training.train(cfg, out, strategy="mirrored")
    print(json.dumps({"used": used, "epochs_run": result.epochs_run, "best_miou": result.best_miou}))
""")


def test_mirrored_strategy_on_two_logical_cpus(easy_data: Path, tmp_path: Path) -> None:
    """EDGESEG_CPU_DEVICES=2 splits the CPU before TensorFlow initialises; `mirrored` then has 2 replicas."""
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT, str(easy_data), str(tmp_path / "run")],
                          check=False, env={**ENV, "EDGESEG_CPU_DEVICES": "2"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["used"]) == 1
    used = report["used"][0]
    assert used["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in used["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert report["epochs_run"] == 2 and 0.0 <= report["best_miou"] <= 1.0
    rows = _history(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert (tmp_path / "run" / BEST_MODEL).is_file()
