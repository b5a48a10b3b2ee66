"""Benchmark TFLite fp32 / fp16 / INT8 of one run: accuracy, file size and model-only latency.

Usage: python benchmarks/bench_tflite.py --run RUN --data DATA [--work DIR] [--runs 200]
Exports the run as an INT8 bundle (with its fp32 artifact) and an fp16 bundle, evaluates each artifact
on the val split, and times each at 1 and 2 threads in one process. Prints a markdown table and writes
`<work>/tflite_results.json`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeseg.export import ExportOptions, export_cpu
from edgeseg.runtime.backends.base import load_runner
from edgeseg.runtime.timing import RUNS, WARMUP, time_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work/tflite"))
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    bundles = {"int8": args.work / "int8", "fp16": args.work / "fp16"}
    for precision, path in bundles.items():
        export_cpu(args.run, path, ExportOptions(precision=precision, eval_data=args.data, force=True))
    rows = []
    for precision, path in (("fp32", bundles["int8"]), ("fp16", bundles["fp16"]), ("int8", bundles["int8"])):
        manifest = json.loads((path / "edgeseg.json").read_text())
        art = manifest["artifacts"][precision]
        row = {"precision": precision, "bytes": (path / art["file"]).stat().st_size,
               "miou": manifest["evaluation"]["scores"][precision]["miou"]}
        for threads in (1, 2):
            with load_runner(path, precision, threads) as runner:
                row[f"t{threads}"] = time_runner(runner, WARMUP, args.runs).to_dict()
        rows.append(row)
    (args.work / "tflite_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    fp32 = rows[0]
    print("| TFLite | size KiB | x fp32 size | val mIoU % | 1 thread p50/p90/p99 ms | 2 threads p50/p90/p99 ms "
          "| speed-up vs fp32 (2 threads) |")
    print("| --- | ---: | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        lat = {t: "/".join(str(r[t][k]) for k in ("p50_ms", "p90_ms", "p99_ms")) for t in ("t1", "t2")}
        print(f"| {r['precision']} | {r['bytes'] / 1024:.1f} | {r['bytes'] / fp32['bytes']:.2f} | "
              f"{r['miou'] * 100:.2f} | {lat['t1']} | {lat['t2']} | {fp32['t2']['p50_ms'] / r['t2']['p50_ms']:.2f} |")


if __name__ == "__main__":
    main()
