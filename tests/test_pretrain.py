"""Autoencoder pretraining: reconstruction improves, encoder transfer by layer name, freezing and resume,
mismatched encoders refused, frames sampled from videos and folders, a seeded fraction of the labels,
inpainting targets (masked-block loss, whitened colours), the same seed giving the same weights bit for bit,
also when pretraining was interrupted and resumed."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from keras import layers
from test_cli_foundation import EDGESEG, ENV, assert_one_line_error
from test_sources import SIZE, write_video

from edgeseg.data.frames import media_files, sample_frames
from edgeseg.data.readers import open_dataset
from edgeseg.data.synth import generate_synthetic
from edgeseg.encoder import ENCODER_INFO, ENCODER_WEIGHTS, encoder_layer_names, init_encoder, layer_shapes
from edgeseg.model import MODEL_NAMES, build_encoder, build_model
from edgeseg.pretrain import (
    RECONSTRUCTIONS,
    PretrainConfig,
    PretrainResult,
    build_autoencoder,
    colour_whitening,
    make_pretrain_dataset,
    pretrain,
)
from edgeseg.rundir import CHECKPOINTS, HISTORY, PRETRAIN_STATE_SCHEMA, RunConfig, read_state
from edgeseg.runtime.errors import EdgesegError
from edgeseg.train import labeled_subset, train

SYNTH_CLASSES = 6


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """48 synthetic images (36 train, 12 val) of 96x128, 6 classes."""
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synth", num=48, size=(96, 128), seed=0)


@pytest.fixture(scope="module")
def pretrained(synth_data: Path, tmp_path_factory) -> tuple[Path, PretrainResult]:
    """fcn-tiny's encoder pretrained on the 36 synthetic train images (96x128) for a few seconds."""
    cfg = PretrainConfig(images=str(synth_data / "train"), model="fcn-tiny", input_size=(96, 128), epochs=16,
                         batch_size=4, learning_rate=5e-3, mask_ratio=0.25)
    run = tmp_path_factory.mktemp("pretrain") / "tiny"
    return run, pretrain(cfg, run, sample_frames(cfg.images, 1, cfg.input_size))


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / HISTORY).open()))


def _pretrained_weights(run: Path) -> dict[str, list[np.ndarray]]:
    encoder = build_encoder("fcn-tiny")
    encoder.load_weights(run / ENCODER_WEIGHTS)
    return {layer.name: layer.get_weights() for layer in encoder.layers if layer.weights}


def test_reconstruction_error_falls_and_the_run_folder_is_complete(pretrained) -> None:
    run, result = pretrained
    assert result.frames == 36 and result.epochs == 16
    # The untrained decoder outputs the mean colour; training beats that clearly.
    assert result.final_error < 0.92 * result.initial_error, result
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(16))
    assert float(rows[-1]["loss"]) < 0.9 * float(rows[0]["loss"])
    info = json.loads((run / ENCODER_INFO).read_text())
    assert info["model"] == "fcn-tiny" and info["input_size"] == [96, 128] and info["frames"] == 36
    assert [layer["name"] for layer in info["layers"]] == list(encoder_layer_names("fcn-tiny"))
    grid = cv2.imread(str(run / RECONSTRUCTIONS))
    assert grid is not None and grid.shape[0] > grid.shape[1]  # 8 rows of (original, input, reconstruction)


def test_autoencoder_is_the_fcn_encoder_and_a_transposed_conv_decoder() -> None:
    for name in MODEL_NAMES:
        fcn = layer_shapes(build_model(name, SYNTH_CLASSES))
        encoder = layer_shapes(build_encoder(name))
        assert encoder and all(fcn[n] == shapes for n, shapes in encoder.items()), name
    autoencoder, encoder = build_autoencoder("fcn-small", (50, 70)), build_encoder("fcn-small", (50, 70))
    assert autoencoder.output_shape == (None, 50, 70, 3)
    assert not [layer for layer in autoencoder.layers if isinstance(layer, layers.Dense)]
    decoder = [layer for layer in autoencoder.layers if layer.name not in {x.name for x in encoder.layers}]
    convs = [type(layer) for layer in decoder if layer.weights and not isinstance(layer, layers.BatchNormalization)]
    assert convs == [layers.Conv2DTranspose] * 5


def test_pretrained_encoder_loads_into_the_fcn_and_changes_its_output(pretrained) -> None:
    run, _ = pretrained
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 96, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    fresh = build_model("fcn-tiny", SYNTH_CLASSES)
    keras.utils.set_random_seed(0)
    model = build_model("fcn-tiny", SYNTH_CLASSES)
    np.testing.assert_array_equal(model(x), fresh(x))  # the same seed builds the same network
    init_encoder(model, run, "fcn-tiny")
    for name, weights in _pretrained_weights(run).items():
        for loaded, saved in zip(model.get_layer(name).get_weights(), weights):
            np.testing.assert_array_equal(loaded, saved)
    np.testing.assert_array_equal(model.get_layer("classifier").get_weights()[0],
                                  fresh.get_layer("classifier").get_weights()[0])  # the decoder is left alone
    assert np.abs(np.asarray(model(x)) - np.asarray(fresh(x))).mean() > 1e-3


def test_broken_or_mismatched_pretrain_runs_are_refused(pretrained, tmp_path: Path) -> None:
    run, _ = pretrained
    model = build_model("fcn-tiny", SYNTH_CLASSES)
    with pytest.raises(EdgesegError, match="not a pretrain run"):
        init_encoder(model, tmp_path, "fcn-tiny")
    with pytest.raises(EdgesegError, match="pretrained for fcn-tiny, but the model is fcn-small"):
        init_encoder(build_model("fcn-small", SYNTH_CLASSES), run, "fcn-small")
    copy = shutil.copytree(run, tmp_path / "copy")
    info = json.loads((copy / ENCODER_INFO).read_text())
    info["layers"][0]["shapes"][0][-1] += 1
    (copy / ENCODER_INFO).write_text(json.dumps(info))
    with pytest.raises(EdgesegError, match=r"layer stem_conv has weight shapes \[\[3, 3, 3, 17\]\]"):
        init_encoder(model, copy, "fcn-tiny")
    shutil.copy(run / ENCODER_INFO, copy / ENCODER_INFO)
    (copy / ENCODER_WEIGHTS).write_bytes(b"not HDF5")
    with pytest.raises(EdgesegError, match="cannot load encoder weights"):
        init_encoder(model, copy, "fcn-tiny")


class _Stop(Exception):
    pass


def _stop(epoch: int, row: dict) -> None:
    raise _Stop


def _checkpoint(run: Path, epoch: int) -> keras.Model:
    import edgeseg.model  # noqa: F401 - registers the custom layers

    return keras.saving.load_model(run / CHECKPOINTS / f"epoch_{epoch:03d}.keras")


def test_frozen_encoder_then_unfrozen_and_resume_inside_the_frozen_epochs(pretrained, synth_data: Path,
                                                                         tmp_path: Path) -> None:
    run, _ = pretrained
    spec = open_dataset(synth_data, "train")
    cfg = RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(64, 96),
                    data=str(synth_data), data_format=spec.format, epochs=3, batch_size=4,
                    learning_rate=5e-3, class_weighting="none", init_from=str(run), freeze_encoder_epochs=2,
                    labels_fraction=0.25)
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full)
    with pytest.raises(_Stop):
        train(cfg, part, on_epoch=_stop)  # interrupted after epoch 0 of the 2 frozen ones
    shutil.move(run, run.with_name("moved"))  # a resumed run never reads the pretrain run again
    try:
        train(cfg, part, resume=True)
    finally:
        shutil.move(run.with_name("moved"), run)
    pretrained_weights = _pretrained_weights(run)
    frozen, unfrozen = _checkpoint(full, 1), _checkpoint(full, 2)
    for name, weights in pretrained_weights.items():
        assert not frozen.get_layer(name).trainable and unfrozen.get_layer(name).trainable
        for a, b in zip(frozen.get_layer(name).get_weights(), weights):
            np.testing.assert_array_equal(a, b)  # two frozen epochs left the encoder (BN statistics too) as it was
    assert not np.array_equal(unfrozen.get_layer("stem_conv").get_weights()[0], pretrained_weights["stem_conv"][0])
    assert _rows(part) == _rows(full)
    resumed = _checkpoint(part, 2)
    for a, b in zip(unfrozen.get_weights() + unfrozen.optimizer.variables,
                    resumed.get_weights() + resumed.optimizer.variables):
        np.testing.assert_array_equal(a, b)


def test_cli_pretrains_on_sampled_video_frames_and_train_refuses_a_mismatched_encoder(synth_data: Path,
                                                                                      tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", 10)
    run = tmp_path / "small"
    proc = subprocess.run([EDGESEG, "pretrain", "--images", str(video), "--out", str(run), "--model", "fcn-small",
                           "--epochs", "1", "--input-size", "32x32", "--every", "3", "--batch-size", "4",
                           "--mask-ratio", "0.75", "--masked-loss", "--whiten-colour"],
                          check=False, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 4 frames for 1 epochs" in proc.stdout  # frames 0, 3, 6 and 9
    info = json.loads((run / ENCODER_INFO).read_text())
    assert (info["mask_ratio"], info["masked_loss"], info["whiten_colour"]) == (0.75, True, True)
    assert (run / ENCODER_WEIGHTS).is_file() and (run / RECONSTRUCTIONS).is_file() and len(_rows(run)) == 1
    resumed = subprocess.run([EDGESEG, "pretrain", "--images", str(video), "--out", str(run), "--model", "fcn-small",
                              "--resume"], check=False, env=ENV, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0 and resumed.stdout.strip() == \
        f"{run}: already pretrained ({ENCODER_INFO} written), nothing to resume", resumed.stderr[-2000:]
    proc = subprocess.run([EDGESEG, "train", "--data", str(synth_data), "--out", str(tmp_path / "tiny"), "--model",
                           "fcn-tiny", "--init-from", str(run), "--epochs", "1", "--input-size", "32x32"],
                          check=False, env=ENV, capture_output=True, text=True, timeout=180)
    assert_one_line_error(proc, str(run / ENCODER_INFO), "pretrained for fcn-small", "fcn-tiny")


def test_frames_from_videos_images_folders_and_globs(tmp_path: Path) -> None:
    write_video(tmp_path / "a.mp4", 10)
    (tmp_path / "more").mkdir()
    write_video(tmp_path / "more" / "b.avi", 5)
    for i in range(5):
        cv2.imwrite(str(tmp_path / "more" / f"{i}.png"), np.full((*SIZE, 3), 40 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not media")
    images, videos = media_files(tmp_path)
    assert [p.name for p in images] == [f"{i}.png" for i in range(5)]
    assert [p.name for p in videos] == ["a.mp4", "b.avi"]
    frames = sample_frames(tmp_path, 2, (24, 32))  # images 0, 2, 4; a.mp4 0, 2, .., 8; b.avi 0, 2, 4
    assert frames.shape == (3 + 5 + 3, 24, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], np.full((24, 32, 3), 80, np.uint8))  # RGB, in path order
    assert len(sample_frames(str(tmp_path / "*.mp4"), 1, (24, 32))) == 10
    assert len(sample_frames(tmp_path / "a.mp4", 4, (24, 32))) == 3
    for bad, match in ((tmp_path / "missing", "no such file"), (tmp_path / "notes.txt", "cannot open")):
        with pytest.raises(EdgesegError, match=match):
            sample_frames(bad, 1, (24, 32))
    with pytest.raises(EdgesegError, match="at least 1"):
        sample_frames(tmp_path, 0, (24, 32))


def test_labels_fraction_is_a_seeded_subset() -> None:
    items = list(range(367))
    subset = labeled_subset(items, 0.1, seed=0)
    assert len(subset) == 37 and subset == sorted(subset) and set(subset) <= set(items)
    assert labeled_subset(items, 0.1, seed=0) == subset
    assert labeled_subset(items, 0.1, seed=1) != subset
    assert labeled_subset(items, 0.001, seed=0) and len(labeled_subset(items, 0.001, seed=0)) == 1
    assert labeled_subset(items, 1.0, seed=5) == items
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(EdgesegError, match="labels fraction"):
            labeled_subset(items, bad, seed=0)


def test_masked_loss_weights_the_masked_blocks_and_targets_are_whitened_colours(synth_data: Path) -> None:
    cfg = PretrainConfig(images=str(synth_data / "train"), input_size=(64, 96), batch_size=6, mask_ratio=0.75,
                         masked_loss=True, whiten_colour=True)
    frames = sample_frames(cfg.images, 1, cfg.input_size)
    whitening = colour_whitening(frames, cfg)
    pixels = ((frames.reshape(-1, 3) - np.asarray(cfg.mean)) / np.asarray(cfg.std)) @ whitening.T
    np.testing.assert_allclose(np.cov(pixels, rowvar=False), np.eye(3), atol=0.02)  # uncorrelated, unit variance
    inputs, targets, weights = (t.numpy() for t in next(iter(make_pretrain_dataset(frames, cfg, 0, whitening))))
    masked = np.all(inputs == 0, axis=-1)
    np.testing.assert_array_equal(weights, masked.astype(np.float32))  # the loss sees the masked blocks only
    assert 0.6 < weights.mean() < 0.9
    visible = ~masked
    np.testing.assert_allclose((targets @ np.linalg.inv(whitening).T)[visible], inputs[visible], atol=1e-4)
    assert np.array_equal(colour_whitening(frames, PretrainConfig(images="x")), np.eye(3))
    with pytest.raises(EdgesegError, match="needs a mask ratio above 0"):
        PretrainConfig(images="x", mask_ratio=0.0, noise=0.1, masked_loss=True).check()


def test_the_same_seed_pretrains_and_fine_tunes_to_the_same_weights_bit_for_bit(synth_data: Path,
                                                                               tmp_path: Path) -> None:
    """Pretraining (inpainting recipe) and fine-tuning twice with one seed: identical weights and optimizer state."""
    frames = sample_frames(str(synth_data / "train"), 3, (32, 48))
    spec = open_dataset(synth_data, "train")
    cfg = PretrainConfig(images=str(synth_data / "train"), input_size=(32, 48), epochs=1, batch_size=4,
                         mask_ratio=0.75, masked_loss=True, whiten_colour=True, seed=3)
    for name in ("a", "b"):
        pretrain(cfg, tmp_path / name / "pretrain", frames)
        train(RunConfig(model="fcn-tiny", classes=spec.classes, palette=spec.palette, input_size=(32, 48),
                        data=str(synth_data), data_format=spec.format, epochs=1, batch_size=4, seed=3,
                        class_weighting="none", init_from=str(tmp_path / name / "pretrain"), val_split=None,
                        labels_fraction=0.25), tmp_path / name / "fine-tuned")
    pretrained = [_pretrained_weights(tmp_path / name / "pretrain") for name in ("a", "b")]
    keras.utils.set_random_seed(3)
    initial = build_encoder("fcn-tiny")
    assert not np.array_equal(pretrained[0]["stem_conv"][0], initial.get_layer("stem_conv").get_weights()[0])
    for layer, weights in pretrained[0].items():
        for a, b in zip(weights, pretrained[1][layer]):
            np.testing.assert_array_equal(a, b)
    tuned = [_checkpoint(tmp_path / name / "fine-tuned", 0) for name in ("a", "b")]
    for a, b in zip(tuned[0].get_weights() + tuned[0].optimizer.variables,
                    tuned[1].get_weights() + tuned[1].optimizer.variables):
        np.testing.assert_array_equal(a, b)
    assert _rows(tmp_path / "a" / "fine-tuned") == _rows(tmp_path / "b" / "fine-tuned")


def test_an_interrupted_pretraining_resumes_to_the_same_weights_bit_for_bit(synth_data: Path, tmp_path: Path) -> None:
    """Stopped after epoch 0 and again after epoch 1 of 3, then resumed: the uninterrupted run's weights."""
    frames = sample_frames(str(synth_data / "train"), 3, (32, 48))
    cfg = PretrainConfig(images=str(synth_data / "train"), input_size=(32, 48), epochs=3, batch_size=4,
                         mask_ratio=0.75, masked_loss=True, whiten_colour=True, seed=3)
    full, part = tmp_path / "full", tmp_path / "part"
    uninterrupted = pretrain(cfg, full, frames, resume=True)  # nothing to resume yet: it starts over
    with pytest.raises(_Stop):
        pretrain(cfg, part, frames, on_epoch=_stop)
    with pytest.raises(_Stop):
        pretrain(cfg, part, frames, resume=True, on_epoch=_stop)
    assert read_state(part, PRETRAIN_STATE_SCHEMA)["epoch"] == 1 and not (part / ENCODER_INFO).exists()
    assert [p.name for p in (part / CHECKPOINTS).iterdir()] == ["epoch_001.keras"]  # only the latest is kept
    with pytest.raises(EdgesegError, match="continues the run with its epochs 3, not 4"):
        pretrain(replace(cfg, epochs=4), part, frames, resume=True)
    resumed = pretrain(cfg, part, frames, resume=True)
    assert (resumed.initial_error, resumed.final_error) == (uninterrupted.initial_error, uninterrupted.final_error)
    assert _rows(part) == _rows(full) and len(_rows(part)) == 3
    assert [p.name for p in (part / CHECKPOINTS).iterdir()] == ["epoch_002.keras"]
    weights = [_pretrained_weights(run) for run in (full, part)]
    for layer, saved in weights[0].items():
        for a, b in zip(saved, weights[1][layer]):
            np.testing.assert_array_equal(a, b)
    autoencoders = [_checkpoint(run, 2) for run in (full, part)]
    for a, b in zip(autoencoders[0].get_weights() + autoencoders[0].optimizer.variables,
                    autoencoders[1].get_weights() + autoencoders[1].optimizer.variables):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EdgesegError, match="already holds a pretrained encoder"):
        pretrain(cfg, part, frames)
