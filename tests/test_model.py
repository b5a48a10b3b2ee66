"""The FCN family: any input size, allowed layer types only, params/MACs, VGG16 backbone weights."""
from __future__ import annotations

import functools
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from edgeseg.model import (
    MODEL_NAMES,
    CropToReference,
    PadToMultiple,
    build_model,
    count_macs,
    count_params,
    rebuild,
)
from edgeseg.runtime.errors import EdgesegError

NUM_CLASSES = 5
ODD_SIZES = [(37, 53), (65, 97)]
COMPACT = ["fcn-tiny", "fcn-small", "fcn-medium"]

#: What a compact FCN may contain: all of it quantizes to full INT8.
ALLOWED = (layers.InputLayer, layers.Conv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose,
           layers.BatchNormalization, layers.ReLU, layers.Add, layers.ZeroPadding2D, layers.Cropping2D,
           layers.Activation, PadToMultiple, CropToReference)


def _all_layers(model: keras.Model) -> list[layers.Layer]:
    """Every layer, descending into nested models."""
    out = []
    for layer in model.layers:
        out.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)


@functools.cache
def _built(name: str, size: tuple = (None, None)) -> keras.Model:
    """Models are only read by these tests, so each (name, size) is built once."""
    return build_model(name, NUM_CLASSES, size)


@pytest.mark.parametrize("name", COMPACT)
def test_odd_input_sizes_dynamic_and_static(name: str) -> None:
    dynamic = _built(name)
    assert dynamic.input_shape == (None, None, None, 3)
    for seed, (h, w) in enumerate(ODD_SIZES):
        x = _image(h, w, seed)
        yd = dynamic(x, training=False)
        assert yd.shape == (1, h, w, NUM_CLASSES)
        static = rebuild(dynamic, name, NUM_CLASSES, (h, w))
        assert static.input_shape == (None, h, w, 3) and static.output_shape == (None, h, w, NUM_CLASSES)
        ys = static(x, training=False)
        assert ys.shape == (1, h, w, NUM_CLASSES)
        # Static zero padding and dynamic padding are the same computation with the same weights.
        np.testing.assert_allclose(np.asarray(ys), np.asarray(yd), rtol=1e-4, atol=1e-4)


def test_fcn8s_builds_at_small_odd_size_without_dense_layers() -> None:
    """fcn8s is the VGG16 encoder: the compact set of layers plus VGG's max pooling."""
    model = build_model("fcn8s", 3, (37, 53))
    assert model(_image(37, 53), training=False).shape == (1, 37, 53, 3)
    found = _all_layers(model)
    assert not any(isinstance(layer, layers.Dense) for layer in found)
    assert not [layer.name for layer in found if not isinstance(layer, (*ALLOWED, layers.MaxPooling2D))]


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet-huge", 3)


@pytest.mark.parametrize("name", COMPACT)
@pytest.mark.parametrize("size", [(None, None), (37, 53)])
def test_compact_models_use_only_int8_friendly_layers(name: str, size) -> None:
    model = _built(name, size)
    found = _all_layers(model)
    assert not [layer.name for layer in found if isinstance(layer, layers.Dense)]
    bad = [f"{layer.name} ({type(layer).__name__})" for layer in found if not isinstance(layer, ALLOWED)]
    assert not bad, f"layer types outside the INT8-friendly set: {bad}"
    activations = [layer for layer in found if isinstance(layer, layers.Activation)]
    assert activations and all(keras.activations.serialize(a.activation) == "linear" for a in activations)
    # Conv layers carry no hidden non-linearity either (ReLU is its own layer).
    convs = [layer for layer in found if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]
    assert all(keras.activations.serialize(c.activation) == "linear" for c in convs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_and_macs_positive_and_macs_scale_with_pixels(name: str) -> None:
    small = _built(name, (64, 96))
    large = _built(name, (128, 192))  # 4x the pixels
    wide = _built(name, (64, 192))  # 2x the pixels
    assert count_params(small) > 0 and count_params(small) == count_params(large)
    macs = count_macs(small)
    assert macs > 0
    assert count_macs(large) / macs == pytest.approx(4.0, rel=0.02)
    assert count_macs(wide) / macs == pytest.approx(2.0, rel=0.02)


def test_params_grow_with_model_size_and_macs_need_static_size() -> None:
    params = [count_params(_built(n, (64, 96))) for n in MODEL_NAMES]
    assert params == sorted(params) and len(set(params)) == len(params)  # tiny < small < medium < fcn8s
    with pytest.raises(ValueError, match="static"):
        count_macs(_built("fcn-tiny"))


@pytest.mark.parametrize(("name", "finest"), [("fcn-small", 8), ("fcn-medium", 4)])
def test_decoder_sums_encoder_skips_down_to_its_finest_stride(name: str, finest: int) -> None:
    model = _built(name, (64, 96))
    for stride in (16, 8, 4):
        has_skip = any(layer.name == f"dec{stride}_add" for layer in model.layers)
        assert has_skip == (stride >= finest)
    skip = model.get_layer(f"dec{finest}_skip")
    assert skip.input.shape[1:3] == (64 // finest, 96 // finest)
    # The last layer before the crop upsamples by the finest stride, initialised bilinear: a constant
    # classifier output stays constant away from the borders.
    upsample = model.get_layer(f"upsample{finest}")
    assert upsample.strides == (finest, finest)
    flat = keras.ops.convert_to_numpy(upsample(np.ones((1, 6, 6, NUM_CLASSES), np.float32)))
    assert np.allclose(flat[0, finest:-finest, finest:-finest], 1.0)


def test_medium_model_mixes_separable_and_plain_conv_stages() -> None:
    kinds = {type(layer) for layer in _built("fcn-medium", (64, 96)).layers if layer.name.startswith("enc3_")}
    assert layers.Conv2D in kinds and layers.DepthwiseConv2D not in kinds
    kinds = {type(layer) for layer in _built("fcn-medium", (64, 96)).layers if layer.name.startswith("enc1_")}
    assert layers.DepthwiseConv2D in kinds


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> tuple[Path, keras.Model]:
    """A fresh (random) VGG16 without top, saved as a local `.weights.h5` file."""
    keras.utils.set_random_seed(123)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    return path, vgg


def test_backbone_weights_are_loaded_into_the_fcn8s_encoder(vgg_weights) -> None:
    path, vgg = vgg_weights
    model = build_model("fcn8s", 3, (40, 56), backbone_weights=path)
    fresh = build_model("fcn8s", 3, (40, 56))
    conv_layers = [layer for layer in vgg.layers if layer.weights]
    assert len(conv_layers) == 13
    for layer in conv_layers:
        for saved, loaded in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(loaded, saved)
    # Without the file the encoder is initialised differently, so the equality above is not by chance.
    assert not np.array_equal(fresh.get_layer("block1_conv1").get_weights()[0],
                              vgg.get_layer("block1_conv1").get_weights()[0])


def test_freeze_backbone_freezes_only_the_encoder(vgg_weights) -> None:
    model = build_model("fcn8s", 3, (32, 32), backbone_weights=vgg_weights[0], freeze_backbone=True)
    assert not model.get_layer("block3_conv2").trainable
    assert model.get_layer("classifier").trainable and model.get_layer("dec8_up").trainable


def test_bad_backbone_weights_file_is_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"this is not an HDF5 file")
    other = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((4,)), layers.Dense(2)]).save_weights(other)
    for path in (garbage, other):
        with pytest.raises(EdgesegError, match="not VGG16"):
            build_model("fcn8s", 3, (32, 32), backbone_weights=path)
    with pytest.raises(EdgesegError, match="not found"):
        build_model("fcn8s", 3, (32, 32), backbone_weights=tmp_path / "missing.weights.h5")
