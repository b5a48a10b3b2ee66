"""The values of edgeseg's choice options, declared once, light to import (no TensorFlow, Python 3.8).

Each choice is a `Literal`, which the CLI offers as the option's choices (a mistyped value is refused
while the command line is parsed), and a tuple of its values for the modules that act on them.
"""
from __future__ import annotations

from typing import Literal, get_args

ModelName = Literal["fcn-tiny", "fcn-small", "fcn-medium", "fcn-context", "fcn8s"]
DataFormat = Literal["camvid", "pairs", "voc"]
ClassWeighting = Literal["median_frequency", "none"]
Strategy = Literal["default", "mirrored", "multiworker"]
AugmentName = Literal["standard", "strong"]
PretrainLoss = Literal["l1", "l2"]
Target = Literal["cpu", "jetson"]
Precision = Literal["fp32", "fp16", "int8"]
OutputKind = Literal["logits", "labels"]
OnnxLayout = Literal["nchw", "nhwc"]
#: Q/DQ calibration of the jetson export; "auto" scores each of the others on the evaluation images.
CalibMethod = Literal["minmax", "entropy", "percentile", "auto"]
#: TensorRT's implicit INT8 calibrators (`edgeseg compile --calibrator`).
TrtCalibrator = Literal["entropy", "minmax"]
DemoMode = Literal["overlay", "mask", "side"]

MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
WEIGHT_METHODS: tuple[str, ...] = get_args(ClassWeighting)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
AUGMENT_NAMES: tuple[str, ...] = get_args(AugmentName)
PRETRAIN_LOSSES: tuple[str, ...] = get_args(PretrainLoss)
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
ONNX_LAYOUTS: tuple[str, ...] = get_args(OnnxLayout)
CALIB_METHODS: tuple[str, ...] = tuple(m for m in get_args(CalibMethod) if m != "auto")
TRT_PRECISIONS: tuple[str, ...] = get_args(Precision)
TRT_CALIBRATORS: tuple[str, ...] = get_args(TrtCalibrator)

#: The precisions each export target offers.
TARGET_PRECISIONS: dict[str, tuple[str, ...]] = {"cpu": ("fp32", "fp16", "int8"), "jetson": ("fp32", "int8")}
