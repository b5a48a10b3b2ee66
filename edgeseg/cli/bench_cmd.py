"""`edgeseg bench`."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..runtime.errors import EdgesegError
from ..runtime.timing import RUNS, WARMUP
from .training_extra import missing_module_message, require_training


def bench(
    targets: List[str] = typer.Argument(..., help="Bundles (paths or shipped names like camvid) and run folders."),
    data: Optional[Path] = typer.Option(None, "--data", exists=True, file_okay=False,
                                        help="Dataset root for mIoU (left out: latency only)."),
    split: str = typer.Option("val", "--split"),
    threads: int = typer.Option(2, "--threads", help="CPU threads for every CPU backend."),
    warmup: int = typer.Option(WARMUP, "--warmup", help="Untimed runs first."),
    runs: int = typer.Option(RUNS, "--runs", help="Timed runs per artifact."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every row as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write accuracy-vs-latency and per-class IoU PNG."),
) -> None:
    """Compare artifacts side by side: format, precision, size, mIoU, latency p50/p90/p99 and FPS."""
    from ..bench import bench as run_bench
    from ..bench import check_options, plot, write_json
    from ..rundir import is_run_folder

    check_options(threads, warmup, runs, has_data=data is not None, json_out=json_out, plot_out=plot_out)
    if plot_out is not None and importlib.util.find_spec("matplotlib") is None:
        raise EdgesegError(missing_module_message("bench", "matplotlib"))
    if any(is_run_folder(Path(t)) for t in targets):
        require_training("bench")
    pairs = None
    if data is not None:
        from ..data.readers import load_all, open_dataset

        pairs = load_all(open_dataset(data, split))
    rows = run_bench(targets, pairs, threads, warmup, runs, log=lambda m: None)
    table = Table(title=f"edgeseg bench ({threads} threads, {runs} runs)")
    for col in ("artifact", "format", "precision", "size KiB", f"mIoU % ({split})", "held-out mIoU %", "p50 ms",
                "p90 ms", "p99 ms", "FPS"):
        table.add_column(col, justify="left" if col in ("artifact", "format", "precision") else "right")
    for r in rows:
        if r.skipped:
            table.add_row(r.name, r.format, r.precision, f"{r.bytes / 1024:.1f}", "-", "-", "-", "-", "-",
                          f"skipped: {r.skipped}")
            continue
        lat = r.latency
        table.add_row(r.name, r.format, r.precision, f"{r.bytes / 1024:.1f}",
                      "-" if r.miou is None else f"{r.miou * 100:.2f}",
                      "-" if r.heldout_miou is None else f"{r.heldout_miou * 100:.2f}", f"{lat['p50_ms']:.2f}",
                      f"{lat['p90_ms']:.2f}", f"{lat['p99_ms']:.2f}", f"{lat['fps']:.1f}")
    Console(width=None if Console().is_terminal else 160).print(table)
    typer.echo("held-out mIoU: recorded in the bundle, measured on recordings its training recipe never saw "
               "(a val split from recordings also in train overstates accuracy on new footage)")
    measured = sum(r.skipped is None for r in rows)
    if not measured:
        raise EdgesegError(f"benchmarked 0 artifacts: all {len(rows)} skipped ({rows[0].skipped})")
    if json_out:
        write_json(rows, json_out)
    if plot_out:
        plot(rows, plot_out)
    typer.echo(f"benchmarked {measured} artifacts ({len(rows) - measured} skipped)")
