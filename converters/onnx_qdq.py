"""INT8 by explicit quantization: fp32 ONNX -> Q/DQ ONNX as TensorRT consumes it.

Placement is onnxruntime's `quantize_static` (QDQ format), not hand-written: it already does
symmetric per-channel weights with the right axis per op (0 for Conv, 1 for ConvTranspose) and
shares one Q/DQ pair per tensor. Its options are set to TensorRT's placement rules:

* only Conv, ConvTranspose and Add are quantized, on their inputs: activations per-tensor symmetric
  int8 (zero point 0), weights per-channel symmetric int8;
* their outputs are not (`OpTypesToExcludeOutputQuantization`), so nothing sits between a Conv and
  its ReLU and TensorRT fuses conv + bias + ReLU; ReLU is not in the list, so it is kept, not removed;
* each skip Add has only its residual input quantized: the input produced by a convolution's fused
  epilogue stays float, so TensorRT fuses the Add into that convolution (`qdq_placement`, which follows
  the TensorRT guide and NVIDIA Model Optimizer and cites both);
* the node writing the graph output, unless it is a Conv (fcn-*'s full-resolution ConvTranspose where
  no crop follows it), and convs without a trusted int8 kernel stay float, as Model Optimizer leaves them;
* Adds with a constant operand (the folded input normalisation) stay float: the first Q then sees
  normalised values, not 0..255 pixels crushed by a symmetric scale onto 0..127;
* bias stays float (`QuantizeBias` off: an int32 DequantizeLinear is outside TensorRT's op support);
* weights stay fp32 behind a Q -> DQ pair (`AddQDQPairToWeight`), the form every TensorRT from 8.5 on
  parses (it folds the Q into int8 weights at build time).

Calibration (the activation ranges) is done here, then handed to `quantize_static` as its
calibration cache: its own entropy calibrator gets no histogram sizes through `quantize_static`, and
with its defaults (128 bins into 128) it has a single candidate threshold, i.e. it is minmax again;
with TensorRT's sizes (2048 into 128) its Python loop takes about half a second per tensor. Here one
|x| histogram per tensor (two passes over the frames) gives all three methods at once, the entropy
search as TensorRT does it (KL divergence, vectorised, every 8th candidate threshold).

The result runs as is in onnxruntime on the CPU (`OnnxRuntimeRunner`), which is how calibration
methods are scored.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgeseg.choices import CALIB_METHODS
from edgeseg.runtime.backends.onnxrt import OnnxRuntimeRunner, ort_session
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import Artifact
from edgeseg.runtime.preprocess import model_batches

from .onnx import artifact_from_onnx, get_metadata, save_onnx, set_metadata
from .qdq_placement import float_nodes, fused_add_inputs, remove_input_qdq, summary
from .trt_conformance import ensure_conformant

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Add")
HISTOGRAM_BINS = 2048
QUANTIZED_BINS = 128  # the positive int8 levels the entropy search maps the histogram onto
ENTROPY_STEP = 8  # candidate thresholds every 8 bins (0.4% of the tensor's max)
PERCENTILE = 99.99  # the default of NVIDIA Model Optimizer's histogram calibrator
#: Which tensors `calibrate` covers; part of the cache key (2: every input of QUANTIZED_OPS, placement aside).
RANGES_VERSION = 2
#: Scores one Q/DQ ONNX file (higher is better), e.g. its mIoU on held-out frames.
ScoreFn = Callable[[Path], float]


def quantize_qdq(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calib_frames: Sequence[np.ndarray],
    method: str = "entropy",
    score_fn: ScoreFn | None = None,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> tuple[Artifact, dict[str, float]]:
    """Quantize `fp32_onnx` to a TensorRT-conformant Q/DQ model at `out_path`.

    `calib_frames`: RGB uint8 HxWx3 frames at model size. `method`: one of CALIB_METHODS, or "auto"
    to quantize each way and keep the one `score_fn` scores best. Returns the artifact (method,
    frame count and scores in `extra`) and the scores by method (empty without `score_fn`).
    `thresholds`: ranges from an earlier `calibrate()` on the same model and frames (a cache hit).
    """
    if method not in (*CALIB_METHODS, "auto"):
        raise ValueError(f"method must be one of {(*CALIB_METHODS, 'auto')}, not {method!r}")
    if method == "auto" and score_fn is None:
        raise ValueError("method 'auto' needs a score_fn to choose with")
    if not calib_frames:
        raise EdgesegError(f"{fp32_onnx}: no calibration frames to quantize with")
    fp32, out = Path(fp32_onnx), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or calibrate(fp32, calib_frames)
    methods = CALIB_METHODS if method == "auto" else (method,)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        candidates = {m: _quantize(fp32, Path(tmp) / f"{m}.onnx", thresholds[m], m) for m in methods}
        scores = {m: float(score_fn(path)) for m, path in candidates.items()} if score_fn else {}
        best = max(scores, key=scores.__getitem__) if scores else method
        os.replace(candidates[best], out)
    artifact = artifact_from_onnx(out, backend="onnxruntime", precision="int8")
    artifact.extra.update(calibration_method=best, calibration_frames=len(calib_frames),
                          calibration_scores=scores, qdq_placement=summary(out))
    return artifact, scores


def calibrate(fp32: Path, frames: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Symmetric clip threshold t (range [-t, t]) of each activation to quantize, by method."""
    model = onnx.load(str(fp32))
    spec = artifact_from_onnx(fp32, backend="onnxruntime", precision="fp32").input
    tensors = _activations(model.graph)
    fetch = [f"{name}/calibration" for name in tensors]  # Identity copies: graph inputs can't be outputs
    for name, copy in zip(tensors, fetch):
        model.graph.node.append(onnx.helper.make_node("Identity", [name], [copy]))
        model.graph.output.append(onnx.helper.make_tensor_value_info(copy, onnx.TensorProto.FLOAT, None))
    session = ort_session(model.SerializeToString())
    feed = model.graph.input[0].name

    def outputs() -> Iterator[list[np.ndarray]]:
        for batch in model_batches(frames, spec):
            yield [np.abs(x) for x in session.run(fetch, {feed: batch})]

    amax = np.full(len(tensors), 1e-8)
    for values in outputs():
        amax = np.maximum(amax, [x.max() for x in values])
    hists = np.zeros((len(tensors), HISTOGRAM_BINS), np.int64)
    for values in outputs():
        for hist, x, top in zip(hists, values, amax):
            hist += np.histogram(x, HISTOGRAM_BINS, (0.0, top))[0]
    return {
        "minmax": dict(zip(tensors, amax.tolist())),
        "entropy": {t: _entropy_threshold(h, a) for t, h, a in zip(tensors, hists, amax)},
        "percentile": {t: _percentile_threshold(h, a) for t, h, a in zip(tensors, hists, amax)},
    }


def _activations(graph: onnx.GraphProto) -> list[str]:
    """Every tensor quantize_static may quantize as an activation: the non-constant inputs of the quantized
    op types, those the placement rules keep float included, so cached ranges outlive a change of rules."""
    consts = {init.name for init in graph.initializer}
    names = {name for node in graph.node if node.op_type in QUANTIZED_OPS
             for name in node.input if name and name not in consts}
    return sorted(names)


def _entropy_threshold(hist: np.ndarray, amax: float) -> float:
    """TensorRT's entropy calibration (as NVIDIA's pytorch-quantization does it): the clip threshold
    whose 128-level quantization of the |x| histogram diverges least (KL) from the clipped histogram
    (outliers piled into its last bin). The zero bin takes its neighbour's count: after a ReLU it
    holds half the values, and smearing that spike would favour ever smaller thresholds."""
    hist = hist.copy()
    hist[0] = hist[1]
    best, best_kl = len(hist), np.inf
    for i in range(QUANTIZED_BINS, len(hist) + 1, ENTROPY_STEP):
        p = hist[:i].astype(np.float64)
        p[-1] += hist[i:].sum()
        starts = -(-np.arange(QUANTIZED_BINS + 1) * i // QUANTIZED_BINS)  # ceil(k * i / 128)
        nonzero = hist[:i] > 0
        merged = np.add.reduceat(hist[:i], starts[:-1]) / np.maximum(np.add.reduceat(nonzero, starts[:-1]), 1)
        q = np.repeat(merged, np.diff(starts)) * nonzero
        used = p > 0
        p, q = p / p.sum(), q / max(q.sum(), 1.0)
        kl = float(np.sum(p[used] * np.log(p[used] / np.maximum(q[used], 1e-12))))
        if kl <= best_kl:  # ties: the larger threshold
            best, best_kl = i, kl
    return float(best * amax / len(hist))


def _percentile_threshold(hist: np.ndarray, amax: float) -> float:
    cdf = np.cumsum(hist)
    index = int(np.searchsorted(cdf, cdf[-1] * PERCENTILE / 100.0))
    return float((index + 1) * amax / len(hist))


def _quantize(fp32: Path, out: Path, thresholds: dict[str, float], method: str) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    model = onnx.load(str(fp32))
    ranges = out.with_suffix(".ranges.json")
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
        name: (np.array(-t, np.float32), np.array(t, np.float32)) for name, t in thresholds.items()}), ranges)
    raw = out.with_suffix(".raw.onnx")
    quantize_static(
        str(fp32), str(raw), None,
        calibration_cache_path=str(ranges),
        calibrate_method=CalibrationMethod.MinMax,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(QUANTIZED_OPS),
        nodes_to_exclude=float_nodes(model.graph),
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            "QuantizeBias": False,
            "AddQDQPairToWeight": True,
        },
    )
    qdq = onnx.load(str(raw))
    remove_input_qdq(qdq.graph, fused_add_inputs(model.graph))
    set_metadata(qdq, **get_metadata(model), calibration=method)
    del qdq.graph.value_info[:]  # re-inferred (and checked) by save_onnx
    save_onnx(qdq, out)
    ensure_conformant(out)
    return out


def miou_scorer(pairs: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str],
                threads: int | None = None) -> ScoreFn:
    """A ScoreFn: mIoU of an edgeseg ONNX model on (RGB uint8, labels) pairs, run by `OnnxRuntimeRunner`
    and scored by `evaluate`."""
    from edgeseg.evaluate import evaluate

    def score(path: Path) -> float:
        spec = artifact_from_onnx(path, backend="onnxruntime", precision="int8").spec
        with OnnxRuntimeRunner(path, spec, threads) as runner:
            return evaluate(runner, pairs, classes).miou

    return score
