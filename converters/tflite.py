"""TFLite (LiteRT) conversion: fp32, fp16 and full-integer INT8, and a check of the result.

INT8 is calibrated in two steps so that the calibration (the observed activation ranges) can be
cached: `calibrate()` runs the representative frames through the float model and returns it with
the ranges recorded; `quantize()` turns that into a full-integer model, uint8 pixels in, int8 logits
or a uint8 label map out. `inspect_tflite()` lists every op with its tensor types and
`check_integer_only()` fails an INT8 model that still has a float op the user did not allow.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tfl_convert

from ..choices import TARGET_PRECISIONS
from ..runtime.errors import EdgesegError

PRECISIONS = TARGET_PRECISIONS["cpu"]
_FLOAT_TYPES = {"float32", "float16", "float64"}
#: Ops that move data between float and integer around layers a user keeps in float.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert_float(model: keras.Model, precision: str) -> bytes:
    """An fp32 model, or fp16 (fp16 weights, float32 compute on CPUs)."""
    converter = _converter(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision != "fp32":
        raise ValueError(f"convert_float takes fp32 or fp16, not {precision!r}")
    return converter.convert()


def _int8_converter(model: keras.Model, frames: Sequence[np.ndarray]) -> tf.lite.TFLiteConverter:
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: ([f[None].astype(np.float32)] for f in frames)
    converter.inference_input_type = tf.uint8
    return converter


def calibrate(model: keras.Model, frames: Sequence[np.ndarray]) -> bytes:
    """The float TFLite model with activation ranges recorded from `frames` (RGB uint8 HxWx3)."""
    if not frames:
        raise EdgesegError("calibration needs at least one frame")
    converter = _int8_converter(model, frames)
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the documented two-step path
    return converter.convert()


def resolve_float_layers(calibrated: bytes, names: Iterable[str]) -> list[str]:
    """Op-output tensor names for `names`, each a tensor name or a Keras layer name (e.g. `dec8_up`)."""
    report = inspect_tflite(calibrated)
    outputs = [t for op in report.ops for t in op.output_names]
    resolved = []
    for name in names:
        matches = [t for t in outputs if t == name] or [t for t in outputs if name in layer_names(t)]
        if not matches:
            raise EdgesegError(f"no layer named {name!r} in the model (--debug-quant lists them)")
        resolved += matches
    return resolved


def quantize(calibrated: bytes, output_kind: str, float_layers: Iterable[str] = (), float_ops: Iterable[str] = (),
             input_type=tf.uint8) -> bytes:
    """Full-integer model from a calibrated one: uint8 input, int8 logits or uint8 labels.

    Per-channel int8 weights, int8 activations. `float_layers` (layer or tensor names, as the
    `--debug-quant` report lists them) and every op of the types in `float_ops` (e.g. TRANSPOSE_CONV)
    stay in float; a requested layer the converter could not keep float (it fused it) is an error.
    """
    layers = resolve_float_layers(calibrated, float_layers) if float_layers else []
    model = tfl_convert.mlir_quantize(
        calibrated,
        input_data_type=input_type,
        output_data_type=tf.int8 if output_kind == "logits" else tf.float32,
        denylisted_nodes=layers or None,
        denylisted_ops=list(float_ops) or None,
    )
    if layers and not any(op.is_float and op.name not in _BOUNDARY_OPS for op in inspect_tflite(model).ops):
        raise EdgesegError(f"the converter could not keep {', '.join(float_layers)} in float (fused with "
                           "neighbouring ops); keep its op type float with --float-ops instead")
    return model


@dataclass
class OpInfo:
    """One op of a TFLite graph and the types of its tensors."""

    index: int
    name: str
    inputs: list[str]
    outputs: list[str]
    output_names: list[str]

    @property
    def is_float(self) -> bool:
        return bool(_FLOAT_TYPES & {*self.inputs, *self.outputs})

    def __str__(self) -> str:
        return f"#{self.index} {self.name}({', '.join(self.inputs)}) -> {', '.join(self.outputs)}"


@dataclass
class TFLiteReport:
    """Ops and tensor types of a TFLite model, and its input/output types."""

    ops: list[OpInfo]
    input_dtype: str
    input_quantization: tuple[float, int]
    output_dtype: str

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.name] = counts.get(op.name, 0) + 1
        return counts


def inspect_tflite(model: bytes) -> TFLiteReport:
    """Every op with its input/output tensor types (the graph as written, before any delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def types(indices: Iterable[int]) -> list[str]:
        return [np.dtype(tensors[i]["dtype"]).name for i in indices if i >= 0]

    ops = [
        OpInfo(op["index"], op["op_name"], types(op["inputs"]), types(op["outputs"]),
               [tensors[i]["name"] for i in op["outputs"]])
        for op in interp._get_ops_details()  # noqa: SLF001 - LiteRT's only op listing
    ]
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    return TFLiteReport(ops, np.dtype(inp["dtype"]).name, tuple(inp["quantization"]), np.dtype(out["dtype"]).name)


def check_integer_only(report: TFLiteReport, float_layers: Iterable[str] = (), float_ops: Iterable[str] = (),
                       source: str = "model") -> None:
    """Fail when an INT8 model has a float op other than those the user chose to keep float."""
    layers, ops = set(float_layers), set(float_ops)

    def allowed(op: OpInfo) -> bool:
        if op.name in ops or layers & ({*op.output_names} | {n for t in op.output_names for n in layer_names(t)}):
            return True
        return bool(layers or ops) and op.name in _BOUNDARY_OPS

    bad = [op for op in report.ops if op.is_float and not allowed(op)]
    if bad:
        listed = "; ".join(str(op) for op in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise EdgesegError(f"{source}: INT8 model has float ops ({listed}); allow them with --float-layers/--float-ops")


@dataclass
class LayerError:
    """Quantization error of one layer: RMSE of its int8 output against float, in quantization steps."""

    layer: str
    tensor: str
    op: str
    rmse_over_scale: float
    max_abs_error: float


def layer_name(tensor: str) -> str:
    """The Keras layer a TFLite tensor comes from (`<deploy>/fcn_tiny_1/dec8_up_1/conv_transpose` -> `dec8_up`,
    `<deploy>/normalize_1/add` -> `normalize`); the model's output tensor is `output`. For a fused op,
    the first of the layers fused into it."""
    parts = tensor.split(";")[0].split("/")
    if len(parts) < 3:
        return "output"
    name = parts[2] if len(parts) > 3 else parts[1]
    return name[:-2] if name.endswith("_1") else name


def layer_names(tensor: str) -> set[str]:
    """Every Keras layer fused into the op that writes `tensor`."""
    return {layer_name(part) for part in tensor.split(";")}


def debug_quantization(model: keras.Model, frames: Sequence[np.ndarray]) -> list[LayerError]:
    """Per-layer quantization error (TFLite's QuantizationDebugger), worst layers first."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_int8_converter(model, frames),
        debug_dataset=lambda: ([f[None].astype(np.float32)] for f in frames),
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    buffer.seek(0)
    rows = []
    for row in csv.DictReader(buffer):
        scale = float(row["scale"]) if row.get("scale") else 0.0
        mse = float(row["mean_squared_error"])
        rmse_scale = math.sqrt(mse) / scale if scale > 0 else float("inf")
        rows.append(LayerError(layer_name(row["tensor_name"]), row["tensor_name"], row["op_name"], rmse_scale,
                               float(row["max_abs_error"])))
    return sorted(rows, key=lambda r: r.rmse_over_scale, reverse=True)
