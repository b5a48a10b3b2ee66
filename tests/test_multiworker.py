"""Training across machines for real: two `edgeseg train --strategy multiworker` processes on 127.0.0.1 joined
by TF_CONFIG. Only the chief writes the run folder; a worker killed mid-run and restarted (with the chief, as
a synchronous cluster restarts) resumes; the result matches one process training the same global batch."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from test_train import EDGESEG, ENV, _final_weights, _history, make_easy_dataset

from edgeseg.rundir import CHECKPOINTS, STATE

EPOCHS = 2
#: fcn-tiny at 32x48, 8 training images in 2 global batches of 4: two images per replica and step.
TRAIN = ["--model", "fcn-tiny", "--epochs", str(EPOCHS), "--batch-size", "4", "--input-size", "32x48",
         "--lr", "5e-3", "--no-logit-adjustment"]
#: Two workers all-reduce their gradients over gRPC where one process sums its two replicas locally; with op
#: determinism the weights came out bit-identical here (max difference 0.0). History is rounded to 6 decimals.
TOLERANCE = 2e-6
#: Bound on each phase, for a loaded machine. The test costs about 135 CPU-seconds (measured; five TensorFlow
#: processes, at most three at a time, each mostly start-up and tracing), so roughly 70 s on two free cores.
PHASE_S = 420


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([EDGESEG, "train", *args], cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def start_cluster(outs: list[Path], data: Path, tmp: Path, resume: bool = False) -> list[subprocess.Popen]:
    """One process per worker, as on separate machines: the same command line, its own TF_CONFIG task."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(len(outs))]}
    args = ["--resume"] if resume else ["--data", str(data), *TRAIN]
    return [start([*args, "--out", str(out), "--strategy", "multiworker"], tmp, TMPDIR=str(tmp / "tmp"),
                  TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            for index, out in enumerate(outs)]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every process's output once all have exited; all are killed if one is still running at `timeout`."""
    deadline, outputs = time.monotonic() + timeout, []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs.append(proc.communicate()[0])
    return outputs


def wait_for_epoch(run: Path, epoch: int, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            if json.loads((run / STATE).read_text())["epoch"] >= epoch:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} was not checkpointed: " + "\n".join(finish(procs, 1)))


@pytest.mark.slow
@pytest.mark.timeout(3 * PHASE_S)
def test_two_workers_chief_writes_resume_matches_one_process(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data", n_train=8, n_val=4, size=(32, 48))
    run, own, reference = tmp_path / "run", tmp_path / "worker1-own", tmp_path / "reference"
    (tmp_path / "tmp").mkdir()
    # One process, two replicas (two logical CPUs), the same global batch: what the two workers must match.
    single = start(["--data", str(data), *TRAIN, "--out", str(reference), "--strategy", "mirrored"], tmp_path,
                   EDGESEG_CPU_DEVICES="2")
    # Worker 1 gets its own --out here, which must stay empty: only the chief writes a run folder.
    chief, worker = start_cluster([run, own], data, tmp_path)
    wait_for_epoch(run, 0, [chief, worker], timeout=PHASE_S)
    worker.send_signal(signal.SIGKILL)
    first = finish([chief, worker], timeout=5)  # the chief cannot go on alone; the cluster is restarted
    assert worker.returncode == -signal.SIGKILL
    assert json.loads((run / STATE).read_text())["epoch"] == 0, first[0]
    assert "multiworker: 2 replica(s) on 2 worker(s)" in first[0], first[0]
    assert not own.exists() or not any(own.iterdir()), list(own.rglob("*"))

    # Restarted, on the shared run folder (what --resume reads on every worker), both continue at epoch 1.
    resumed = finish(start_cluster([run, run], data, tmp_path, resume=True), timeout=PHASE_S)
    ref_out = finish([single], timeout=PHASE_S)[0]
    assert single.returncode == 0, ref_out[-3000:]
    assert "strategy mirrored: 2 replica(s) on 1 worker(s); devices here: " in ref_out, ref_out
    assert json.loads((reference / STATE).read_text())["setup"]["devices"][1].endswith("CPU:1")
    assert "for 1 epochs" in resumed[0] and "for 1 epochs" in resumed[1], resumed
    state = json.loads((run / STATE).read_text())
    assert state["epoch"] == EPOCHS - 1 and state["setup"]["strategy"] == "multiworker", state
    assert state["setup"]["workers"] == 2 and state["setup"]["replicas"] == 2, state
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["epoch_000.keras", "epoch_001.keras"]
    assert not [p for p in run.rglob(".*") if p.is_file()], "temporary files left in the run folder"
    # Worker 1 wrote into a private folder, removed at exit; SIGKILL left the killed one's (its config, logs).
    leftovers = list((tmp_path / "tmp").glob("edgeseg-worker-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "config.json").is_file(), leftovers

    rows, ref_rows = _history(run), _history(reference)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows] == ["0", "1"]
    for row, ref in zip(rows, ref_rows):
        for key in ("loss", "val_miou"):
            assert abs(float(row[key]) - float(ref[key])) <= TOLERANCE, (row, ref)
    weights, optimizer = _final_weights(run, EPOCHS - 1)  # the resumed optimizer state too
    ref_weights, ref_optimizer = _final_weights(reference, EPOCHS - 1)
    assert len(weights) == len(ref_weights) and len(optimizer) == len(ref_optimizer)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(weights + optimizer, ref_weights + ref_optimizer))
    assert worst <= TOLERANCE, worst


def test_single_process_setup_is_reported(capsys) -> None:
    import tensorflow as tf

    from edgeseg.train import report_setup

    setup = report_setup("default", tf.distribute.get_strategy())
    gpus = tf.config.list_physical_devices("GPU")
    assert setup == {"strategy": "default", "replicas": 1, "workers": 1, "gpus": [d.name for d in gpus],
                     "devices": [tf.config.list_logical_devices("GPU" if gpus else "CPU")[0].name]}
    printed = capsys.readouterr().out
    assert printed.startswith("training with strategy default: 1 replica(s) on 1 worker(s); devices here: "
                              f"{setup['devices'][0]}; GPUs seen: {len(gpus) or 'none'}"), printed
