"""Benchmark: edgeseg's Q/DQ placement beside NVIDIA Model Optimizer's, on the same fp32 ONNX.

Usage: python benchmarks/qdq_modelopt.py BUNDLE [--data DIR] [--calib-data DIR] [--split val] [--threads 2]
       [--out benchmarks/_work/qdq_modelopt]
BUNDLE is an `edgeseg export --target jetson --precision int8` bundle (fp32 ONNX, edgeseg's Q/DQ ONNX and
the calibration images it records, looked up under --calib-data, else --data, else the recorded folder).
Where `modelopt` imports, the fp32 ONNX is also quantized with
`modelopt.onnx.quantization.quantize` (int8, max calibration on the same images, CPU, fp32 elsewhere) and
the script prints both placements (Q/DQ pairs, float layers, skip Adds), every node whose quantized inputs
differ and, with --data, the onnxruntime mIoU of fp32, edgeseg's and ModelOpt's graphs on the same images.
Without `modelopt` (a 7 GB install with its dependencies) it says so and prints edgeseg's placement and,
with --data, the fp32 and edgeseg mIoU. TensorRT engine latency is not measured here (`edgeseg compile`
and `edgeseg bench` on the device do that).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx

from edgeseg.calibration.frames import frames_from_record
from edgeseg.converters.onnx import get_metadata, set_metadata
from edgeseg.converters.onnx_qdq import miou_scorer
from edgeseg.converters.qdq_placement import quantized_inputs, summary
from edgeseg.data.readers import load_all, open_dataset
from edgeseg.runtime.errors import EdgesegError
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.preprocess import model_batches


def modelopt_quantize(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """ModelOpt's INT8 Q/DQ model of `fp32` (max calibration on `calib`, CPU), with edgeseg's metadata."""
    from modelopt.onnx.quantization import quantize

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    quantize(str(fp32), quantize_mode="int8", calibration_data={name: calib}, calibration_method="max",
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=str(out))
    model = onnx.load(str(out))
    set_metadata(model, **get_metadata(onnx.load(str(fp32), load_external_data=False)))
    onnx.save(model, str(out))
    return out


def differences(ours: onnx.GraphProto, theirs: onnx.GraphProto) -> list[str]:
    """One line per node whose quantized inputs differ (q: through Q/DQ, -: float), leaving out nodes that
    read nothing quantized in either graph."""
    a, b = quantized_inputs(ours), quantized_inputs(theirs)
    ops = {n.name: n.op_type for n in ours.node} | {n.name: n.op_type for n in theirs.node}

    def mark(placed: tuple[bool, ...] | None) -> str:
        return "absent" if placed is None else "".join("q" if p else "-" for p in placed)

    return [f"{ops[name]:<13} {name}: edgeseg {mark(a.get(name))}, modelopt {mark(b.get(name))}"
            for name in sorted(set(a) | set(b))
            if a.get(name) != b.get(name) and any((*a.get(name, ()), *b.get(name, ())))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, help="Dataset to score every graph on (onnxruntime, CPU).")
    parser.add_argument("--calib-data", type=Path,
                        help="Dataset holding the bundle's calibration images (default: --data).")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work/qdq_modelopt"))
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    fp32, int8 = (args.bundle / manifest.artifact(name).file for name in ("fp32", "int8"))
    graphs = {"fp32": fp32, "edgeseg": int8}
    if importlib.util.find_spec("modelopt") is None:
        print("modelopt is not installed (pip install 'nvidia-modelopt[onnx]'): edgeseg's placement only")
    else:
        spec = manifest.artifact("fp32").input
        frames = frames_from_record(manifest.calibration, (spec.height, spec.width), args.calib_data or args.data)
        args.out.mkdir(parents=True, exist_ok=True)
        calib = np.concatenate(list(model_batches(frames, spec)))
        graphs["modelopt"] = modelopt_quantize(fp32, args.out / "model_int8_modelopt.onnx", calib)
    for name in ("edgeseg", "modelopt"):
        if name in graphs:
            print(f"{name}: {json.dumps(summary(graphs[name]))}")
    if "modelopt" in graphs:
        lines = differences(onnx.load(str(int8)).graph, onnx.load(str(graphs["modelopt"])).graph)
        print(f"placement differences ({len(lines)} nodes; per input, q: quantized, -: float):")
        print("\n".join(lines) or "none")
    if args.data is not None:
        pairs = load_all(open_dataset(args.data, args.split))
        score = miou_scorer(pairs, manifest.classes, threads=args.threads)
        for name, path in graphs.items():
            print(f"mIoU {name}: {score(path) * 100:.2f} ({len(pairs)} {args.split} images, onnxruntime CPU)")


if __name__ == "__main__":
    try:
        main()
    except EdgesegError as exc:  # e.g. the calibration images are not where the bundle recorded them
        raise SystemExit(f"error: {exc}") from None
