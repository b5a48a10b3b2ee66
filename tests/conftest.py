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
def tiny_run(synth_data, tmp_path_factory) -> Path:
    """fcn-tiny trained for 8 epochs at 64x96 on `synth_data` (it predicts several classes, val mIoU ~0.2)."""
    from edgeseg.data.readers import open_dataset
    from edgeseg.rundir import RunConfig
    from edgeseg.train import train

    spec = open_dataset(synth_data, "train")
    cfg = RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=TINY_SIZE,
                    data=str(synth_data), data_format=spec.format, epochs=8, batch_size=8, learning_rate=5e-3)
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(cfg, run_dir)
    return run_dir


def _export(run: Path, out: Path, **kwargs) -> Path:
    from edgeseg.export import ExportOptions, export_cpu

    export_cpu(run, out, ExportOptions(**kwargs), log=lambda _: None)
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
