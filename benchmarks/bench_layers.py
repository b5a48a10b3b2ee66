"""Which layers INT8 speeds up, and the CPU's int8 multiply-accumulate rate.

Usage: python benchmarks/bench_layers.py [--threads 2] [--runs 100]
Times single-layer TFLite models (fp32 and full-integer INT8, XNNPACK) at the shapes the compact FCNs
have at 480x360: the stem conv, a depthwise 3x3, a pointwise 1x1, a plain 3x3 conv at stride 16
(fcn-medium), the decoder ConvTransposes, the stride-8 and stride-4 ConvTransposes to full resolution
and a skip Add. A large 1x1 conv (256 -> 256 channels at 64x64) gives
the sustained int8 MAC rate, the machine's limit for `MACs / rate`. Prints a markdown table.
"""
from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from edgeseg.converters import tflite
from edgeseg.runtime.timing import time_calls


def _model(shape: tuple[int, int, int], build) -> keras.Model:
    inp = keras.Input(shape, batch_size=1)
    return keras.Model(inp, build(inp))


CASES = {
    "stem conv 3x3 s2 (360x480x3 -> 16)": ((360, 480, 3), lambda x: layers.Conv2D(16, 3, 2, "same")(x)),
    "depthwise 3x3 (90x120x32)": ((90, 120, 32), lambda x: layers.DepthwiseConv2D(3, 1, "same")(x)),
    "pointwise 1x1 (90x120, 32 -> 48)": ((90, 120, 32), lambda x: layers.Conv2D(48, 1)(x)),
    "conv 3x3 (23x30, 96 -> 96)": ((23, 30, 96), lambda x: layers.Conv2D(96, 3, 1, "same")(x)),
    "ConvTranspose 4x4 s2 (23x30x64 -> 64)": ((23, 30, 64), lambda x: layers.Conv2DTranspose(64, 4, 2, "same")(x)),
    "ConvTranspose 16x16 s8 (45x60x11 -> 11)": ((45, 60, 11),
                                                lambda x: layers.Conv2DTranspose(11, 16, 8, "same")(x)),
    "ConvTranspose 8x8 s8 (45x60x11 -> 11)": ((45, 60, 11), lambda x: layers.Conv2DTranspose(11, 8, 8, "same")(x)),
    "bilinear resize x8 (45x60x11)": ((45, 60, 11), lambda x: layers.UpSampling2D(8, interpolation="bilinear")(x)),
    "ConvTranspose 4x4 s2 (45x60x64 -> 32)": ((45, 60, 64), lambda x: layers.Conv2DTranspose(32, 4, 2, "same")(x)),
    "ConvTranspose 8x8 s4 (90x120x11 -> 11)": ((90, 120, 11), lambda x: layers.Conv2DTranspose(11, 8, 4, "same")(x)),
    "ConvTranspose 4x4 s4 (90x120x11 -> 11)": ((90, 120, 11), lambda x: layers.Conv2DTranspose(11, 4, 4, "same")(x)),
    "skip Add (45x60x64)": ((45, 60, 64), lambda x: layers.Add()([x, layers.ReLU()(x)])),
    "MAC-rate 1x1 (64x64, 256 -> 256)": ((64, 64, 256), lambda x: layers.Conv2D(256, 1)(x)),
}
MAC_CASE = "MAC-rate 1x1 (64x64, 256 -> 256)"


def _time(model: bytes, threads: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(0).integers(0, 255, inp["shape"]).astype(inp["dtype"]))
    return float(np.median(time_calls(interp.invoke, 10, runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"| layer ({args.threads} threads) | fp32 p50 ms | INT8 p50 ms | INT8 speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, (shape, build) in CASES.items():
        model = _model(shape, build)
        frames = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(8)]
        fp32 = _time(tflite.convert_float(model, "fp32"), args.threads, args.runs)
        input_type = tf.uint8 if shape[-1] == 3 else tf.int8  # only frames come in as uint8
        int8 = _time(tflite.quantize(tflite.calibrate(model, frames), "logits", input_type=input_type),
                     args.threads, args.runs)
        print(f"| {name} | {fp32:.3f} | {int8:.3f} | {fp32 / int8:.2f} |")
        if name == MAC_CASE:
            macs = 64 * 64 * 256 * 256
            mac_rate = macs / (int8 / 1000)
    print(f"\nint8 MAC rate ({args.threads} threads): {mac_rate / 1e9:.1f} GMAC/s")


if __name__ == "__main__":
    main()
