"""Several hosts, really: two processes on 127.0.0.1 run experiments/long_range.py together.

Each process is started with two forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and the environment that
:func:`rnnlab.distributed.maybe_initialize_distributed` reads
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), so the seed
axis is split over four devices in two processes, which talk through JAX's CPU
collectives (gloo, the default of ``jax_cpu_collectives_implementation`` in jax 0.10).
The oracle is the same command run as one plain process with four devices: the same
partition of the seeds, so the numbers must agree bit for bit. (Against a one-device
run they agree to float32 rounding only: a device holding one seed compiles its own
kernels rather than those of a batch of two.)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "long_range.py"
# Two runs (the grid's and the unclipped comparison), five checkpointed chunks each.
ARGS = ["--quick", "--cells", "elman-tanh", "--train-steps", "100", "--chunk-size", "20"]
RUNS = ("elman-tanh_T10_clip1", "elman-tanh_T10_noclip")
TIMEOUT = 600  # seconds; a two-process run takes about a minute on a loaded 2-core machine

pytestmark = pytest.mark.slow  # each sweep compiles in every process: minutes in all


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                "SLURM_", "OMPI_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, num_processes: int, log_dir: Path,
           devices: int = 4) -> list[subprocess.Popen]:
    """Starts the sweep as ``num_processes`` processes of two devices each, or as one
    process with four (the same mesh of four devices, so the same programs per device)."""
    if num_processes == 1:
        envs = [_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")]
    else:
        port = _free_port()
        envs = [_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                     JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                     JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
                for i in range(num_processes)]
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, env in enumerate(envs):
        log = open(log_dir / f"process{i}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), *ARGS, "--out", str(out)],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], log_dir: Path) -> None:
    for i, p in enumerate(procs):
        try:
            rc = p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            rc = "timeout"
        if rc != 0:
            raise AssertionError(f"process {i} ended with {rc}:\n"
                                 + (log_dir / f"process{i}.log").read_text()[-4000:])


def _results(out: Path) -> dict:
    """What a reader of the folder trusts: every run's numbers and history, the summary."""
    summary = json.loads((out / "summary.json").read_text())
    for r in summary:
        r.pop("train_seconds_this_session")
    return {"summary": summary, "history": {
        key: (out / "runs" / key / "history.csv").read_text() for key in RUNS}}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "out"
    procs = _start(out, 1, out.parent / "logs")
    _wait(procs, out.parent / "logs")
    return _results(out)


def test_two_processes_equal_one(tmp_path, single_process):
    """Two processes x two devices give the one-process run's numbers, bit for bit, and
    only process 0 writes (one environment record, listing all four devices)."""
    out = tmp_path / "out"
    procs = _start(out, 2, tmp_path / "logs")
    _wait(procs, tmp_path / "logs")
    assert (out / "COMPLETE").exists()
    assert _results(out) == single_process
    env = json.loads((out / "environment.json").read_text())
    assert len(env["devices"]) == 4, env["devices"]
    assert not (out / "environment_resumed.json").exists()  # process 1 wrote no record
    for i in range(2):
        log = (tmp_path / "logs" / f"process{i}.log").read_text()
        assert "elman-tanh" in log and "Traceback" not in log


def _killed_mid_run(out: Path, procs: list[subprocess.Popen]) -> int:
    """Kills every process (process 0 first) once the first run has saved a checkpoint
    and before it writes its result; returns the checkpoint's step."""
    ckpt = out / "runs" / RUNS[0] / "checkpoint"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        steps = [p for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
        if steps or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.02)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=60)
    assert steps, "the sweep ended (or timed out) before its first checkpoint"
    return max(int(p.name) for p in steps)


def test_killed_sweep_leaves_nothing_a_rerun_trusts(tmp_path, single_process):
    """SIGKILL to both processes mid-run: no result, summary or COMPLETE marker exists, no
    temporary file holds a finished name, and the rerun (same command) resumes from the
    checkpoint and gives the uninterrupted run's numbers."""
    out = tmp_path / "out"
    step = _killed_mid_run(out, _start(out, 2, tmp_path / "logs1"))
    assert 0 < step < 100
    for name in ("COMPLETE", "summary.json", "summary.csv"):
        assert not (out / name).exists(), name
    assert not (out / "runs" / RUNS[0] / "result.json").exists()
    assert not (out / "runs" / RUNS[1]).exists()
    finished = {"result.json", "summary.json", "summary.csv", "history.csv", "COMPLETE"}
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name in finished]
    assert leftovers == [], leftovers

    procs = _start(out, 2, tmp_path / "logs2")
    _wait(procs, tmp_path / "logs2")
    assert (out / "COMPLETE").exists()
    assert _results(out) == single_process
    resumed = json.loads((out / "environment_resumed.json").read_text())
    assert len(resumed) == 1  # the rerun is recorded as a resumption


def test_two_processes_match_one_device(tmp_path, single_process):
    """The plain one-device run (what a user without a cluster runs) agrees with the
    four-device runs to float32 rounding: every metric and every logged loss."""
    out = tmp_path / "out"
    _wait(_start(out, 1, tmp_path / "logs", devices=1), tmp_path / "logs")
    one = _results(out)
    for a, b in zip(one["summary"], single_process["summary"], strict=True):
        np.testing.assert_allclose(a["metric"], b["metric"], rtol=1e-4)
        assert a["outcome"] == b["outcome"]
    for key in RUNS:
        rows = [np.loadtxt(h.splitlines()[1:], delimiter=",")
                for h in (one["history"][key], single_process["history"][key])]
        np.testing.assert_allclose(rows[0], rows[1], rtol=1e-4)
