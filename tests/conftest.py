"""Shared fixtures: a tiny synthetic dataset, a briefly trained run and bundles made from it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_SIZE = (64, 96)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """96 synthetic images (72 train, 24 val) of 96x128, 6 classes."""
    from edgeseg.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("data") / "synth", num=96, size=(96, 128), seed=0)


@pytest.fixture(scope="session")
def config_only_run(tmp_path_factory) -> dict[str, Path]:
    """`data`: 4 synthetic images of 32x48; `run`: a run folder holding only its `config.json` (nothing
    trained; what a command checks before any work); `pretrain`: a pretrain run folder holding only its
    `state.json` after epoch 1 of 2. Written with modules a runtime-only install has."""
    from edgeseg.data.readers import open_dataset
    from edgeseg.data.synth import generate_synthetic
    from edgeseg.rundir import RunConfig, write_state
    from edgeseg.runtime.manifest import DEFAULT_MEAN, DEFAULT_STD

    root = tmp_path_factory.mktemp("config_only")
    data = generate_synthetic(root / "data", num=4, size=(32, 48), seed=0)
    spec = open_dataset(data, "train")
    run = root / "run"
    run.mkdir()
    RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(32, 48), data=str(data),
              data_format=spec.format, epochs=1).save(run)
    pretrain = root / "pretrain"
    write_state(pretrain, {"epoch": 0, "initial_error": 60.0, "seconds": 1.0, "config": {
        "images": str(data / "train"), "model": "fcn-tiny", "input_size": [32, 48], "every": 1, "epochs": 2,
        "batch_size": 8, "learning_rate": 0.002, "loss": "l2", "mask_ratio": 0.5, "noise": 0.0, "masked_loss": False,
        "whiten_colour": False, "seed": 0, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)}})
    return {"data": data, "run": run, "pretrain": pretrain}


def _train(data: Path, run_dir: Path, **settings) -> Path:
    """fcn-tiny trained on `data` into `run_dir` with these RunConfig `settings`."""
    from edgeseg.data.readers import open_dataset
    from edgeseg.rundir import RunConfig
    from edgeseg.train import train

    spec = open_dataset(data, "train")
    cfg = RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, data=str(data),
                    data_format=spec.format, **settings)
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(synth_data, tmp_path_factory) -> Path:
    """fcn-tiny trained for 8 epochs at 64x96 on `synth_data` (it predicts several classes, val mIoU ~0.2)."""
    return _train(synth_data, tmp_path_factory.mktemp("runs") / "tiny", input_size=TINY_SIZE, epochs=8,
                  batch_size=8, learning_rate=5e-3)


def _export(run: Path, out: Path, target: str = "cpu", **kwargs) -> Path:
    from edgeseg.export import ExportOptions, export_bundle

    export_bundle(run, out, ExportOptions(**kwargs), target, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    """INT8 TFLite bundle (default artifact `int8`, plus `fp32`): uint8 64x96 in, uint8 labels out."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "labels", precision="int8", output="labels")


@pytest.fixture(scope="session")
def tiny_bundle_logits(tiny_run, synth_data, tmp_path_factory) -> Path:
    """INT8 TFLite bundle with int8 logits out, evaluated against fp32 on the synthetic val split."""
    return _export(tiny_run, tmp_path_factory.mktemp("bundles") / "logits", precision="int8", output="logits",
                   eval_data=synth_data)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """16 synthetic images (12 train, 4 val) of 48x64: the cheapest dataset that trains and calibrates."""
    from edgeseg.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("small") / "synth", num=16, size=(48, 64), seed=0)


@pytest.fixture(scope="session")
def small_run(small_data, tmp_path_factory) -> Path:
    """fcn-tiny trained for one epoch at 32x48 on `small_data` (a complete run folder, not a useful model)."""
    return _train(small_data, tmp_path_factory.mktemp("small") / "run", input_size=(32, 48), epochs=1,
                  batch_size=8, logit_adjustment=False)


@pytest.fixture(scope="session")
def small_cpu_bundle(small_run, tmp_path_factory) -> Path:
    """`small_run` as a --target cpu bundle (TFLite fp32 only: the quickest complete bundle)."""
    return _export(small_run, tmp_path_factory.mktemp("small") / "bcpu", precision="fp32")


@pytest.fixture(scope="session")
def small_jetson_bundle(small_run, tmp_path_factory) -> Path:
    """`small_run` as a --target jetson bundle: fp32 ONNX and Q/DQ INT8 ONNX (default), 8 calibration images."""
    return _export(small_run, tmp_path_factory.mktemp("small") / "bjet", "jetson", num_calib=8)
