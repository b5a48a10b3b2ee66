"""The compact FCN family (Keras functional API).

Encoder: a strided stem and four downsampling stages of residual blocks, depthwise-separable or plain
3x3 convolutions per stage (plain convolutions carry more weights per output channel, so their
per-channel INT8 scales cost less file size, and XNNPACK runs them near the int8 MAC rate).
Decoder: FCN-8s style. Features at stride 32 are upsampled by 2 with `Conv2DTranspose` and summed
with projected stride-16 encoder features, again to stride 8 (and, with a third decoder width, to
stride 4, which keeps poles and signs), then a 1x1 classifier and a `Conv2DTranspose` (initialised
bilinear) back to full resolution. No dense layers; only ops that quantize cleanly to full INT8
(Conv, DepthwiseConv, ConvTranspose, Add, ReLU, BN folded at export).

Any input size: sizes not divisible by the stride are padded inside the model and the logits are
cropped back. With a static size the padding is static (what export uses); with `None` it is computed.
The model takes normalised float images, `(x - mean) / std`; export folds normalisation in front.
`build_encoder` is the encoder alone, with the FCN's layer names (what `edgeseg pretrain` trains).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .choices import MODEL_NAMES
from .runtime.errors import EdgesegError

STRIDE = 32
#: Fast-moving BN statistics: small datasets take few steps, and inference uses these statistics.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class FCNConfig:
    """Widths and depths of a compact FCN."""

    stem: int
    widths: tuple[int, int, int, int]  # stages at stride 4, 8, 16, 32
    depths: tuple[int, int, int, int]  # residual blocks after each downsampling block
    decoder: tuple[int, ...]  # decoder widths at strides 16, 8 (and 4): one skip each
    blocks: tuple[str, str, str, str] = ("separable",) * 4  # per stage: "separable" or "conv" (3x3)
    #: Per stage, the dilation of each residual block (empty: 1 everywhere); only "conv" stages dilate.
    dilations: tuple[tuple[int, ...], ...] = ()

    def dilation(self, stage: int, block: int) -> int:
        """The dilation of residual block `block` of stage `stage` (0-based)."""
        rates = self.dilations[stage] if stage < len(self.dilations) else ()
        return rates[block] if block < len(rates) else 1


COMPACT_MODELS = {
    "fcn-tiny": FCNConfig(stem=16, widths=(24, 32, 64, 96), depths=(0, 1, 1, 1), decoder=(32, 32)),
    "fcn-small": FCNConfig(stem=16, widths=(32, 48, 96, 160), depths=(1, 2, 3, 2), decoder=(64, 64)),
    "fcn-medium": FCNConfig(stem=16, widths=(32, 48, 96, 160), depths=(1, 2, 3, 1), decoder=(64, 64, 32),
                            blocks=("separable", "separable", "conv", "conv")),
    # fcn-medium with context at low resolution: dilated residual 3x3 convolutions at strides 16 and 32
    # (receptive field past the whole 480x360 frame, no extra MACs) and a wider stride-8 stage.
    "fcn-context": FCNConfig(stem=16, widths=(32, 64, 96, 160), depths=(1, 2, 3, 1), decoder=(64, 64, 32),
                             blocks=("separable", "separable", "conv", "conv"),
                             dilations=((), (), (1, 2, 5), (2,))),
}
#: The VGG16 FCN-8s decoder.
FCN8S_DECODER = (256, 256)


@keras.saving.register_keras_serializable(package="edgeseg")
class PadToMultiple(layers.Layer):
    """Pads H and W at the bottom/right up to a multiple of `multiple` (dynamic sizes)."""

    def __init__(self, multiple: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, x):
        shape = keras.ops.shape(x)
        ph = (-shape[1]) % self.multiple
        pw = (-shape[2]) % self.multiple
        return keras.ops.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="edgeseg")
class CropToReference(layers.Layer):
    """Crops x to the spatial size of a reference tensor (undoes `PadToMultiple`)."""

    def call(self, inputs):
        x, ref = inputs
        shape = keras.ops.shape(ref)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable(x, filters: int, stride: int, name: str, residual: bool, dilation: int = 1):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN, identity sum when `residual`, then ReLU."""
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", dilation_rate=dilation, use_bias=False,
                               name=f"{name}_dw")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(y)
    if residual:
        y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_relu")(y)


def _conv3x3(x, filters: int, stride: int, name: str, residual: bool, dilation: int = 1):
    """3x3 conv (dilated by `dilation`) + BN, identity sum when `residual`, then ReLU (more weights per
    channel, int8-friendly)."""
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", dilation_rate=dilation, use_bias=False,
                      name=f"{name}_conv")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(y)
    if residual:
        y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_relu")(y)


BLOCKS = {"separable": _separable, "conv": _conv3x3}


def _compact_encoder(x, cfg: FCNConfig) -> list:
    """Features at strides 4, 8, 16 and 32."""
    x = _conv_bn_relu(x, cfg.stem, 3, 2, "stem")
    feats = []
    for s, (width, depth, kind) in enumerate(zip(cfg.widths, cfg.depths, cfg.blocks), start=1):
        block = BLOCKS[kind]
        x = block(x, width, 2, f"enc{s}_down", residual=False)
        for b in range(depth):
            x = block(x, width, 1, f"enc{s}_block{b}", residual=True, dilation=cfg.dilation(s - 1, b))
        feats.append(x)
    return feats


def vgg16_encoder(x) -> tuple[list, list[layers.Layer]]:
    """VGG16 conv blocks (no top): pool2 to pool5 features and the encoder's layers."""
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_tensor=x)
    names = ("block2_pool", "block3_pool", "block4_pool", "block5_pool")
    return [vgg.get_layer(n).output for n in names], vgg.layers[1:]


def _bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Conv2DTranspose kernel (size, size, out, in) that upsamples bilinearly, channel by channel."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def _fcn_decoder(feats: list, num_classes: int, widths: tuple[int, ...]):
    """Stride-32 features, then per width: up x2 + the projected encoder skip at that stride; classify
    at the finest stride and upsample to the input with a bilinear-initialised `Conv2DTranspose`."""
    x = _conv_bn_relu(feats[-1], widths[0], 1, 1, "dec32")
    stride = STRIDE
    for width, skip in zip(widths, reversed(feats[:-1])):
        stride //= 2
        up = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"dec{stride}_up")(x)
        up = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dec{stride}_up_bn")(up)
        proj = layers.Conv2D(width, 1, use_bias=False, name=f"dec{stride}_skip")(skip)
        proj = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dec{stride}_skip_bn")(proj)
        x = layers.Add(name=f"dec{stride}_add")([up, proj])
        x = layers.ReLU(name=f"dec{stride}_relu")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    upsample = layers.Conv2DTranspose(num_classes, 2 * stride, strides=stride, padding="same", use_bias=False,
                                      name=f"upsample{stride}")
    x = upsample(x)
    upsample.set_weights([_bilinear_kernel(2 * stride, num_classes)])
    return x


def _padding(height: int, width: int) -> tuple[int, int]:
    """Bottom and right padding that makes a static input size a multiple of `STRIDE`."""
    return (-height) % STRIDE, (-width) % STRIDE


def build_encoder(
    name: str,
    input_size: tuple[int | None, int | None] = (None, None),
    backbone_weights: str | Path | None = None,
    freeze_backbone: bool = False,
) -> keras.Model:
    """The encoder of `build_model(name, ...)`: normalised image -> [f4, f8, f16, f32] (strides 4 to 32).

    The input is padded to a multiple of `STRIDE` (layer `pad` when needed); layer names equal those in
    the FCN, so weights transfer by name.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    height, width = input_size
    inputs = keras.Input((height, width, 3), name="image")
    if height is not None and width is not None:
        pad_h, pad_w = _padding(height, width)
        x = layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name="pad")(inputs) if pad_h or pad_w else inputs
    else:
        x = PadToMultiple(STRIDE, name="pad")(inputs)
    if name == "fcn8s":
        feats, encoder_layers = vgg16_encoder(x)
        if backbone_weights is not None:
            load_backbone_weights(encoder_layers, Path(backbone_weights))
        for layer in encoder_layers:
            layer.trainable = not freeze_backbone
    else:
        feats = _compact_encoder(x, COMPACT_MODELS[name])
    return keras.Model(inputs, feats, name=f"{name.replace('-', '_')}_encoder")


def crop_to_input(x, inputs, input_size: tuple[int | None, int | None]):
    """Undo the encoder's padding: `x` (at the padded size) cropped to the size of `inputs`."""
    height, width = input_size
    if height is None or width is None:
        return CropToReference(name="crop")([x, inputs])
    pad_h, pad_w = _padding(height, width)
    return layers.Cropping2D(((0, pad_h), (0, pad_w)), name="crop")(x) if pad_h or pad_w else x


def build_model(
    name: str,
    num_classes: int,
    input_size: tuple[int | None, int | None] = (None, None),
    backbone_weights: str | Path | None = None,
    freeze_backbone: bool = False,
) -> keras.Model:
    """A compact FCN (`fcn-tiny`, `fcn-small`, `fcn-medium`) or the VGG16 `fcn8s`, for normalised float input."""
    encoder = build_encoder(name, input_size, backbone_weights, freeze_backbone)
    widths = FCN8S_DECODER if name == "fcn8s" else COMPACT_MODELS[name].decoder
    logits = _fcn_decoder(encoder.outputs, num_classes, widths)
    logits = crop_to_input(logits, encoder.input, input_size)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(encoder.input, logits, name=name.replace("-", "_"))


def load_backbone_weights(encoder_layers: list[layers.Layer], path: Path) -> None:
    """Load VGG16 conv weights from a local Keras weights file (`.weights.h5` of VGG16 without top)."""
    if not path.is_file():
        raise EdgesegError(f"{path}: backbone weights file not found")
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        source.load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise EdgesegError(f"{path}: not VGG16 (no top) weights ({str(exc).splitlines()[0]})") from None
    by_name = {layer.name: layer for layer in source.layers}
    for layer in encoder_layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())


def rebuild(model: keras.Model, name: str, num_classes: int, input_size: tuple[int, int]) -> keras.Model:
    """The same network at a static input size, with `model`'s weights (what export converts)."""
    static = build_model(name, num_classes, input_size)
    static.set_weights(model.get_weights())
    return static


def count_params(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (conv, depthwise and transposed conv layers)."""
    total = 0
    for layer in model.layers:
        if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose)):
            continue
        kh, kw = layer.kernel_size
        out_h, out_w, out_c = layer.output.shape[1:4]
        in_c = layer.input.shape[-1]
        if out_h is None or out_w is None:
            raise ValueError("count_macs needs a model built at a static input size")
        if isinstance(layer, layers.DepthwiseConv2D):
            total += out_h * out_w * out_c * kh * kw
        elif isinstance(layer, layers.Conv2DTranspose):
            in_h, in_w = layer.input.shape[1:3]
            total += in_h * in_w * in_c * out_c * kh * kw
        else:
            total += out_h * out_w * out_c * in_c * kh * kw
    return int(total)
