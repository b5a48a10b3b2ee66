"""The deployable form of a trained model: raw RGB pixels in, logits or labels out.

Every exported artifact starts from `deploy_model`: normalisation `(x - mean) / std` is folded in
front of the network (so a camera frame goes in as it is) and, for `output="labels"`, the argmax is
inside the model (a uint8 label map is a quarter of the int8 logits' bytes or less).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from .choices import OUTPUT_KINDS
from .model import rebuild
from .runtime.manifest import DEFAULT_MEAN, DEFAULT_STD


@keras.saving.register_keras_serializable(package="edgeseg")
class ArgmaxLabels(layers.Layer):
    """Per-pixel argmax over classes, as a uint8 label map.

    `tf.math.argmax` directly: Keras' `ops.argmax` adds -0.0 handling ops that TFLite lacks.
    """

    def call(self, x):
        return tf.cast(tf.math.argmax(x, axis=-1, output_type=tf.int32), tf.uint8)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


def deploy_model(
    model: keras.Model,
    name: str,
    num_classes: int,
    input_size: tuple[int, int],
    mean: tuple[float, ...] = DEFAULT_MEAN,
    std: tuple[float, ...] = DEFAULT_STD,
    output: str = "logits",
) -> keras.Model:
    """`model` rebuilt at a static size, taking float32 RGB pixels 0..255 (NHWC, batch 1)."""
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUT_KINDS}, not {output!r}")
    net = rebuild(model, name, num_classes, input_size)
    pixels = keras.Input((*input_size, 3), batch_size=1, name="pixels")
    scale = (1.0 / np.asarray(std, np.float32)).tolist()
    offset = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).tolist()
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        scale, offset = scale[0], offset[0]
    x = layers.Rescaling(scale, offset, name="normalize")(pixels)
    y = net(x)
    if output == "labels":
        y = ArgmaxLabels(name="labels")(y)
    return keras.Model(pixels, y, name=f"{net.name}_deploy")
