"""The speed suite: rnnlab's scanned cells against flax.linen.RNN and PyTorch, on one device.

For each cell (lstm, gru, elman) x size (small, medium, large) x pass (forward;
forward+backward = gradient of the mean-squared outputs w.r.t. params and
inputs), every implementation runs in the same process with the same thread
count: compile (timed separately), warm up, then ``repeats`` interleaved rounds
that call each implementation once, in rotating order, so that a busy moment on
a shared machine lands on all of them. Reported: the median, the minimum (and
the ratios of both to rnnlab), and the minor page faults per call.

Implementations (``--frameworks``): ``rnnlab`` (``rnnlab.scan`` as it comes,
``derivative="auto"``), ``rnnlab-fused`` and ``rnnlab-autodiff`` (``derivative=``
forced; one of the two is what ``"auto"`` picks on this device, so its ratio to
``rnnlab`` shows the run's noise), ``rnnlab-remat`` (``remat=True``; not in the
default set), ``flax`` (``flax.linen.RNN`` with the matching flax cell), ``torch``
(``nn.LSTM``/``nn.GRU``/``nn.RNN``; on CPU the LSTM runs oneDNN's fused LSTM
primitive, on CUDA all three run cuDNN), ``torch-native`` (the same with that
vendor library off: ATen's own loop) and ``matmul-floor`` (the same ``lax.scan``
with each step cut down to one ``[x, h] @ W`` matmul: the floor for a step that
makes one matmul). Alongside:

- **GEMM fraction**: a large float32 matmul is timed in the same run; each
  implementation's achieved FLOP rate (the cell's matmul FLOPs: ``2 (F + H) G H``
  per step and sequence for G gate blocks, x3 for forward+backward) over it.
- **compile time vs T** (should stay flat: one ``lax.scan``, not an unrolled loop).
- **memory vs T with and without remat**: XLA's own buffer plan for
  forward+backward (``compiled.memory_analysis()``: arguments + outputs +
  temporaries), and the measured time of each remat setting.
- **carry_grad_norms cost** relative to one plain backward pass.
- optionally (``--long-run``) one forward+backward of an LSTM at T=100,000 in a
  fresh process, reporting its peak resident memory.

    python benchmarks/run.py              # everything, minutes
    python benchmarks/run.py --quick      # tiny sizes, seconds (what the test runs)
    python benchmarks/run.py --frameworks rnnlab,flax --cells lstm --out /tmp/bench

Writes ``suite-<device>.json`` and ``suite-<device>.md`` (``suite-cpu``,
``suite-gpu-h100``, ...; ``-tf32`` appended for ``--precision tf32``, ``-quick`` for
``--quick``) into ``benchmarks/results/``, which holds the latest published run per
device, or into ``--out`` (use it for subsets). PyTorch is used only if importable
(``pip install -e .[bench]``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import rnnlab
from rnnlab import experiment
from rnnlab.validation import check_choice

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
PASSES = ("forward", "forward+backward")
SIZES: dict[str, tuple[int, int, int, int]] = {  # name -> (T, B, F, H)
    "tiny": (8, 2, 3, 4),
    "small": (1000, 16, 1, 64),
    "medium": (100, 32, 32, 128),
    "large": (500, 64, 64, 256),
}
# precision -> (jax_default_matmul_precision, PyTorch's allow_tf32 for cuBLAS and cuDNN).
# On GPUs, JAX's float32 matmuls default to TF32 while PyTorch's cuBLAS ones do not
# (its cuDNN RNNs do), so the suite pins both to the same arithmetic.
PRECISIONS = {"float32": ("highest", False), "tf32": ("tensorfloat32", True)}
PRECISION_NOTES = {
    "float32": "JAX at precision 'highest', PyTorch with allow_tf32 off for cuBLAS and cuDNN",
    "tf32": "JAX at precision 'tensorfloat32', PyTorch with allow_tf32 on for cuBLAS and cuDNN; "
            "on a CPU the same as float32",
}
GATES = {"lstm": 4, "gru": 3, "elman": 1}
REGISTRY_NAMES = {"lstm": "lstm", "gru": "gru", "elman": "elman-tanh"}  # as torch/flax defaults


@dataclasses.dataclass(frozen=True)
class SuiteBenchmark:
    """python benchmarks/run.py [--quick] — rnnlab vs flax.linen.RNN vs PyTorch on this device.

    Expect compile time flat in T, remat memory O(sqrt T) against O(T), and rnnlab
    at about flax.linen.RNN's time or faster. Against PyTorch it depends on the device and the
    cell; where rnnlab is behind, the matmul-floor column says whether any step built
    on one matmul per step could catch up (docs/performance.md)."""

    cells: tuple[str, ...] = dataclasses.field(
        default=("lstm", "gru", "elman"), metadata={"help": "lstm, gru, elman"})
    sizes: tuple[str, ...] = dataclasses.field(
        default=("small", "medium", "large"), metadata={"help": f"of {tuple(SIZES)}"})
    frameworks: tuple[str, ...] = dataclasses.field(
        default=("rnnlab", "rnnlab-fused", "rnnlab-autodiff", "flax", "torch", "torch-native",
                 "matmul-floor"),
        metadata={"help": "rnnlab (derivative='auto'), rnnlab-fused, rnnlab-autodiff "
                  "(derivative= forced), rnnlab-remat (remat=True), flax, torch, "
                  "torch-native (oneDNN/cuDNN off), matmul-floor (the scan with only its "
                  "matmul); torch ones skipped if torch is not importable"})
    repeats: int = dataclasses.field(
        default=9, metadata={"help": "interleaved timed rounds; median (and min) reported"})
    warmup: int = dataclasses.field(default=2, metadata={"help": "untimed calls after compiling"})
    gemm_size: int = dataclasses.field(default=2048, metadata={"help": "N of the N x N matmul"})
    compile_lengths: tuple[int, ...] = dataclasses.field(
        default=(10, 100, 1000, 10000),
        metadata={"help": "T for compile time vs T ('[]' skips the study)"})
    memory_lengths: tuple[int, ...] = dataclasses.field(
        default=(1000, 10000, 100000),
        metadata={"help": "T for memory vs T ('[]' skips the study)"})
    memory_size: tuple[int, int, int] = dataclasses.field(
        default=(32, 1, 256), metadata={"help": "B,F,H of the memory study (an LSTM)"})
    remat_timing_length: int = dataclasses.field(
        default=2000, metadata={"help": "T at which each remat setting is also timed"})
    precision: str = dataclasses.field(
        default="float32",
        metadata={"help": "float32 (true float32 matmuls everywhere) or tf32 (JAX's and "
                  "PyTorch's TensorFloat-32 matmuls on GPUs that have them; no effect on CPU)"})
    torch_device: str = dataclasses.field(
        default="auto", metadata={"help": "auto (cuda when JAX runs on a GPU), cpu or cuda"})
    diagnostics: bool = dataclasses.field(
        default=True, metadata={"help": "time carry_grad_norms against a plain backward"})
    long_run: bool = dataclasses.field(
        default=False, metadata={"help": "also run T=100000 with remat in a fresh process"})
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(sizes=("tiny",), repeats=2, warmup=1, gemm_size=128,
                      compile_lengths=(10, 100), memory_lengths=(64, 256),
                      memory_size=(2, 1, 8), remat_timing_length=64),
    }

    def __post_init__(self):
        for c in self.cells:
            check_choice(c, tuple(GATES), "cells")
        for s in self.sizes:
            check_choice(s, tuple(SIZES), "sizes")
        for f in self.frameworks:
            check_choice(f, tuple(FRAMEWORKS), "frameworks")
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.torch_device, ("auto", "cpu", "cuda"), "torch_device")
        if self.repeats < 1 or self.warmup < 0 or self.gemm_size < 1:
            raise ValueError("repeats >= 1, warmup >= 0 and gemm_size >= 1 are required.")
        if len(self.memory_size) != 3:
            raise ValueError("memory_size is B,F,H.")


# ----------------------------------------------------------------------------- timing


def median_time(call: Callable[[], Any], *, warmup: int, repeats: int) -> dict[str, Any]:
    """Median wall time of ``call()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(calls: dict[str, Callable[[], Any]], *, warmup: int,
                     repeats: int) -> dict[str, dict[str, Any]]:
    """Times several implementations of the same computation in interleaved rounds.

    Round r calls every implementation once, starting from a different one each
    round, so that a slow minute on a shared machine lands on all of them
    rather than on whichever happened to be timed then: the ratios between
    implementations are what this suite is for. Returns, per name, the median
    and the minimum wall time (the minimum estimates the cost on a quiet
    machine), every time, and the minor page faults per call (memory that the
    call touches for the first time; each costs about a microsecond here).
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, int] = {n: 0 for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            f0 = _minor_faults()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
            faults[name] += _minor_faults() - f0
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t,
                "minor_faults_per_call": faults[n] / repeats} for n, t in times.items()}


def _jax_prepared(fn, args) -> dict[str, Any]:
    """Compiles ``fn(*args)`` (timed) and returns the blocking call."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    return {"compile_s": compile_s, "call": lambda: jax.block_until_ready(compiled(*args))}


def _jax_timed(fn, args, warmup, repeats) -> dict[str, Any]:
    prepared = _jax_prepared(fn, args)
    return {"compile_s": prepared["compile_s"],
            **median_time(prepared["call"], warmup=warmup, repeats=repeats)}


def _mse(ys):
    return jnp.mean(jnp.square(ys))


def _jax_passes(forward: Callable, params, xs) -> dict[str, Callable]:
    """forward(params, xs) -> ys, and value_and_grad of the MSE w.r.t. params and xs."""
    return {
        "forward": forward,
        "forward+backward": jax.value_and_grad(lambda p, x: _mse(forward(p, x)), argnums=(0, 1)),
    }


# ----------------------------------------------------------------------------- implementations
# Each returns {pass: {"call": blocking zero-argument callable, "compile_s": seconds}}.


def prepare_rnnlab(cell_name, T, B, F, H, key, *, derivative="auto", remat=False):
    """``rnnlab.scan(cell, params, xs, derivative=..., remat=...)``."""
    cell = rnnlab.registry.get(REGISTRY_NAMES[cell_name], H)
    params = cell.init(key, F)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, F))

    def forward(p, x):
        return rnnlab.scan(cell, p, x, derivative=derivative, remat=remat)[1]

    return {k: _jax_prepared(f, (params, xs)) for k, f in _jax_passes(forward, params, xs).items()}


_FLAX_CELLS = {
    "lstm": "OptimizedLSTMCell",
    "gru": "GRUCell",
    "elman": "SimpleCell",
}


def prepare_flax(cell_name, T, B, F, H, key):
    import flax.linen as nn

    model = nn.RNN(getattr(nn, _FLAX_CELLS[cell_name])(H), time_major=True)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, F))
    params = model.init(key, xs)
    fns = _jax_passes(model.apply, params, xs)
    return {k: _jax_prepared(f, (params, xs)) for k, f in fns.items()}


def prepare_matmul_floor(cell_name, T, B, F, H, key):
    """The same lax.scan with the step cut down to its one matmul: XLA's floor for a scan.

    Per step ``z = [x_t, h] @ W`` with ``W [F + H, G H]`` and ``h = z[:, :H]``:
    the FLOPs that every implementation here counts, none of the gate
    arithmetic (forward; forward+backward is its gradient). A step built on one
    such matmul cannot be faster. A step that splits it into smaller independent
    matmuls can be, where XLA runs them concurrently (the GRU's, on a CPU).
    """
    G = GATES[cell_name]
    W = jax.random.normal(key, (F + H, G * H)) / (F + H) ** 0.5
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, F))

    def forward(W, xs):
        def body(h, x):
            h = (jnp.concatenate([x, h], axis=-1) @ W)[:, :H]
            return h, h

        return jax.lax.scan(body, jnp.zeros((B, H), W.dtype), xs)[1]

    return {k: _jax_prepared(f, (W, xs)) for k, f in _jax_passes(forward, W, xs).items()}


def _torch_sync(device: str) -> Callable[[], None]:
    """What makes a PyTorch call on ``device`` block until done (CUDA runs asynchronously)."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def prepare_torch(cell_name, T, B, F, H, key, *, vendor=True, device="cpu"):
    """torch.nn.LSTM/GRU/RNN on ``device``; ``vendor=False`` switches its vendor library
    off (oneDNN on CPU, cuDNN on CUDA), leaving ATen's own loop."""
    import torch

    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[cell_name](F, H)
    module = module.to(device)
    x = torch.randn(T, B, F, device=device, requires_grad=True)
    params = list(module.parameters())
    backend = torch.backends.cudnn if device == "cuda" else torch.backends.mkldnn
    flags = functools.partial(backend.flags, enabled=vendor)
    sync = _torch_sync(device)

    def forward():
        with torch.no_grad(), flags():
            module(x)
        sync()

    def forward_backward():
        with flags():
            ys, _ = module(x)
            torch.autograd.grad(ys.square().mean(), [*params, x])
        sync()

    return {"forward": {"compile_s": 0.0, "call": forward},
            "forward+backward": {"compile_s": 0.0, "call": forward_backward}}


FRAMEWORKS = {
    "rnnlab": prepare_rnnlab,
    # The whole-sequence derivative of the cell's AffineForm (rnnlab.modes.fused) ...
    "rnnlab-fused": functools.partial(prepare_rnnlab, derivative="fused"),
    # ... and JAX's derivative of the lax.scan; "auto" picks one of the two by backend.
    "rnnlab-autodiff": functools.partial(prepare_rnnlab, derivative="autodiff"),
    # The backward pass recomputes each chunk of sqrt(T) steps instead of reading every
    # step's stored intermediates back from memory.
    "rnnlab-remat": functools.partial(prepare_rnnlab, remat=True),
    "flax": prepare_flax,
    # torch.nn.LSTM on CPU runs oneDNN's fused LSTM primitive (aten::mkldnn_rnn_layer);
    # GRU and RNN run ATen's own loop. On CUDA all three run cuDNN's RNN. torch-native
    # switches the vendor library off, so that those rows show what it is worth.
    "torch": prepare_torch,
    "torch-native": functools.partial(prepare_torch, vendor=False),
    "matmul-floor": prepare_matmul_floor,
}
TORCH_FRAMEWORKS = ("torch", "torch-native")
# The columns rnnlab is compared against, in table order.
COMPARED = ("rnnlab-fused", "rnnlab-autodiff", "rnnlab-remat", "flax", "torch", "torch-native",
            "matmul-floor")


def torch_available() -> bool:
    """Whether PyTorch is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def cell_flops(cell_name: str, T: int, B: int, F: int, H: int, pass_: str) -> float:
    """Matmul FLOPs: forward 2 (F + H) G H per step and sequence; backward twice that."""
    forward = 2.0 * T * B * (F + H) * GATES[cell_name] * H
    return forward if pass_ == "forward" else 3.0 * forward


def gemm_throughput(n: int, warmup: int, repeats: int, torch_device: str | None) -> dict[str, Any]:
    """FLOP/s of an ``n x n`` float32 matmul, in JAX (and PyTorch on ``torch_device``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    res = _jax_timed(jnp.matmul, (a, a), warmup, max(repeats, 5))
    out = {"n": n, "jax_flops": 2.0 * n**3 / res["median_s"]}
    if torch_device:
        import torch

        t = torch.randn(n, n, device=torch_device)
        sync = _torch_sync(torch_device)

        def mm():
            torch.mm(t, t)
            sync()

        tt = median_time(mm, warmup=warmup, repeats=max(repeats, 5))
        out["torch_flops"] = 2.0 * n**3 / tt["median_s"]
    out["reference_flops"] = max(v for k, v in out.items() if k.endswith("_flops"))
    return out


def resolve_torch_device(requested: str) -> str:
    """``auto``: cuda when JAX's default backend is a GPU and PyTorch sees one, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- studies


def compile_vs_length(lengths, warmup) -> list[dict[str, Any]]:
    """Compile time of an LSTM's forward+backward (medium width) against T."""
    rows = []
    _, B, F, H = SIZES["medium"]
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    for T in lengths:
        xs = jnp.zeros((T, B, F))
        fn = _jax_passes(lambda p, x: rnnlab.scan(cell, p, x)[1], params, xs)["forward+backward"]
        start = time.perf_counter()
        jax.jit(fn).lower(params, xs).compile()
        rows.append({"T": T, "compile_s": time.perf_counter() - start})
        print(f"compile  T={T:6d}  {rows[-1]['compile_s']:.3f} s", flush=True)
    return rows


def _final_state_loss(cell, remat):
    # The loss reads only the last hidden state, so the outputs [T, B, H] need
    # not be kept: what remains is what BPTT itself stores.
    def loss(p, x):
        carry, _ = rnnlab.scan(cell, p, x, remat=remat)
        return jnp.mean(jnp.square(carry.h))

    return jax.value_and_grad(loss, argnums=(0, 1))


def memory_vs_length(lengths, size, timing_length, warmup, repeats) -> list[dict[str, Any]]:
    """XLA's planned memory (and, at ``timing_length``, the time) of LSTM BPTT per remat."""
    B, F, H = size
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    rows = []
    for T in sorted(set(lengths) | {timing_length}):
        for remat in (False, True, 100):
            if isinstance(remat, int) and not isinstance(remat, bool) and remat >= T:
                continue
            xs = jnp.zeros((T, B, F))
            lowered = jax.jit(_final_state_loss(cell, remat)).lower(params, xs)
            start = time.perf_counter()
            compiled = lowered.compile()
            compile_s = time.perf_counter() - start
            mem = compiled.memory_analysis()
            total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            row = {"T": T, "remat": remat, "compile_s": compile_s,
                   "temp_bytes": mem.temp_size_in_bytes, "total_bytes": total}
            if T == timing_length:
                row.update(median_time(
                    lambda c=compiled, x=xs: jax.block_until_ready(c(params, x)),
                    warmup=warmup, repeats=repeats))
            rows.append(row)
            extra = f"  {1e3 * row['median_s']:9.2f} ms" if "median_s" in row else ""
            print(f"memory   T={T:6d} remat={remat!s:5s}  {total / 2**20:10.1f} MiB{extra}",
                  flush=True)
    return rows


def diagnostics_cost(warmup, repeats, size="medium") -> dict[str, Any]:
    """carry_grad_norms against jax.grad of the same loss w.r.t. the params (LSTM)."""
    T, B, F, H = SIZES[size]
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))

    def loss_fn(ys, carry):
        return jnp.mean(jnp.square(ys))

    def plain(p, x):
        return jax.grad(lambda p: loss_fn(*rnnlab.scan(cell, p, x)[::-1]))(p)

    def norms(p, x):
        return rnnlab.diagnostics.carry_grad_norms(cell, p, x, loss_fn)

    a = _jax_timed(plain, (params, xs), warmup, repeats)
    b = _jax_timed(norms, (params, xs), warmup, repeats)
    out = {"size": size, "backward_s": a["median_s"], "carry_grad_norms_s": b["median_s"],
           "ratio": b["median_s"] / a["median_s"]}
    print(f"carry_grad_norms / backward = {out['ratio']:.2f}", flush=True)
    return out


def long_run_child(T: int, B: int, F: int, H: int) -> None:
    """The long run's body, in its own process: prints one JSON line of time and peak memory."""
    try:  # start the resident peak from here: Linux's clear_refs resets VmHWM
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    cell = rnnlab.lstm(H)
    params = cell.init(jax.random.key(0), F)
    xs = jax.random.normal(jax.random.key(1), (T, B, F))
    compiled = jax.jit(_final_state_loss(cell, True)).lower(params, xs).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, xs))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:  # VmHWM, unlike ru_maxrss, does not carry the parent's peak over exec
        status = Path("/proc/self/status").read_text().splitlines()
        peak = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    out = {"T": T, "B": B, "F": F, "H": H, "remat": "sqrt",
           "device": jax.devices()[0].device_kind, "seconds": elapsed, "peak_rss_bytes": peak}
    stats = jax.devices()[0].memory_stats() or {}  # accelerators: the allocator's own peak
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = stats["peak_bytes_in_use"]
    print(json.dumps(out))


# A fresh interpreter runs this file (not as __main__, so no suite) and calls long_run_child.
_CHILD = "import runpy, sys; runpy.run_path(sys.argv[1])['long_run_child'](*map(int, sys.argv[2:]))"


def long_run(T=100_000, B=32, F=1, H=256) -> dict[str, Any]:
    """One forward+backward of an LSTM at ``T`` with remat, in a fresh process (its peak memory)."""
    command = [sys.executable, "-c", _CHILD, str(Path(__file__).resolve()), *map(str, (T, B, F, H))]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    device = (f", device peak {out['device_peak_bytes'] / 2**30:.2f} GiB"
              if "device_peak_bytes" in out else "")
    print(f"long run T={T}: {out['seconds']:.1f} s, peak RSS "
          f"{out['peak_rss_bytes'] / 2**30:.2f} GiB{device}", flush=True)
    return out


# ----------------------------------------------------------------------------- machine


def device_slug(backend: str, device_kind: str) -> str:
    """The device in a file name: ``cpu``, else the backend and the first word of the device
    kind that holds a digit (``gpu-h100`` for "NVIDIA H100 80GB HBM3", ``tpu-v4``)."""
    if backend == "cpu":
        return "cpu"
    words = [w for w in re.split(r"[^a-z0-9]+", device_kind.lower()) if w]
    model = next((w for w in words if any(c.isdigit() for c in w)), "-".join(words))
    return f"{backend}-{model}" if model else backend


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"processor": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- main


def run(config: SuiteBenchmark) -> dict[str, Any]:
    jax_precision, tf32 = PRECISIONS[config.precision]
    # A context, not a global switch: it applies to everything traced (so compiled) inside.
    with jax.default_matmul_precision(jax_precision):
        return _run(config, tf32)


def _run(config: SuiteBenchmark, tf32: bool) -> dict[str, Any]:
    frameworks = [f for f in config.frameworks
                  if f not in TORCH_FRAMEWORKS or torch_available()]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    use_torch = any(f in TORCH_FRAMEWORKS for f in frameworks)
    torch_device = None
    if use_torch:
        import torch

        torch.set_num_threads(threads)
        torch_device = resolve_torch_device(config.torch_device)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    gemm_start = gemm_throughput(config.gemm_size, config.warmup, config.repeats, torch_device)
    print(f"GEMM {config.gemm_size}^2: {gemm_start['reference_flops'] / 1e9:.1f} GFLOP/s",
          flush=True)
    key = jax.random.key(config.seed)
    rows = []
    for cell_name in config.cells:
        for size in config.sizes:
            T, B, F, H = SIZES[size]
            prepared = {f: FRAMEWORKS[f](cell_name, T, B, F, H, key,
                                         **({"device": torch_device}
                                            if f in TORCH_FRAMEWORKS else {}))
                        for f in frameworks}
            for pass_ in PASSES:
                timed = time_interleaved({f: prepared[f][pass_]["call"] for f in frameworks},
                                         warmup=config.warmup, repeats=config.repeats)
                row = {"cell": cell_name, "size": size, "T": T, "B": B, "F": F, "H": H,
                       "pass": pass_, "flops": cell_flops(cell_name, T, B, F, H, pass_)}
                for f in frameworks:
                    row[f] = {"compile_s": prepared[f][pass_]["compile_s"], **timed[f]}
                for other in COMPARED:
                    if "rnnlab" in row and other in row:
                        row[f"rnnlab/{other}"] = row["rnnlab"]["median_s"] / row[other]["median_s"]
                        row[f"rnnlab/{other} (min)"] = row["rnnlab"]["min_s"] / row[other]["min_s"]
                rows.append(row)
                print(_line(row, frameworks), flush=True)
            del prepared
    # The machine may be shared: GEMM is timed before and after the table and the
    # faster of the two is the reference, so a busy moment cannot inflate the fractions.
    gemm_end = gemm_throughput(config.gemm_size, config.warmup, config.repeats, torch_device)
    gemm = {"n": config.gemm_size, "start": gemm_start, "end": gemm_end,
            "reference_flops": max(gemm_start["reference_flops"], gemm_end["reference_flops"])}
    print(f"GEMM reference (max of start, end): {gemm['reference_flops'] / 1e9:.1f} GFLOP/s",
          flush=True)
    for row in rows:
        for f in frameworks:
            row[f]["gemm_fraction"] = row["flops"] / row[f]["median_s"] / gemm["reference_flops"]
    out: dict[str, Any] = {"gemm": gemm, "threads": threads, "frameworks": frameworks,
                           "torch_device": torch_device, "precision": config.precision,
                           "results": rows}
    if config.compile_lengths:
        out["compile_vs_T"] = compile_vs_length(config.compile_lengths, config.warmup)
    if config.memory_lengths:
        out["memory_vs_T"] = memory_vs_length(config.memory_lengths, config.memory_size,
                                              config.remat_timing_length, config.warmup,
                                              config.repeats)
    if config.diagnostics:
        out["carry_grad_norms"] = diagnostics_cost(
            config.warmup, config.repeats, "tiny" if config.sizes == ("tiny",) else "medium")
    if config.long_run:
        out["long_run"] = long_run()
    return out


def _line(row, frameworks) -> str:
    parts = [f"{row['cell']:5s} {row['size']:6s} {row['pass']:16s}"]
    for f in frameworks:
        parts.append(f"{f} {1e3 * row[f]['median_s']:9.3f} ms")
    for other in COMPARED:
        if f"rnnlab/{other}" in row:
            parts.append(f"rnnlab/{other} {row[f'rnnlab/{other}']:.2f}")
    return "  ".join(parts)


def markdown(config: SuiteBenchmark, env: dict[str, Any], machine, out) -> str:
    fw = out["frameworks"]
    lines = [
        "# rnnlab speed suite",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine['cores']} cores "
        f"({out['threads']} threads used by every framework), load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_average', ()))}, at end "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_average_end', ()))} (a load "
        "beyond the suite's own threads means other jobs ran alongside, so single entries "
        "can be outliers; PyTorch's OpenMP threads suffer most when cores are "
        "oversubscribed); "
        f"{env['device_kind']} ({env['backend']}); jax {env['jax']}, flax {env.get('flax', '?')}, "
        f"torch {env.get('torch', 'absent')} on {out.get('torch_device') or '-'}; "
        f"{env['time_utc']}.",
        "",
        f"float32 data, {out['precision']} matmuls ({PRECISION_NOTES[out['precision']]}); "
        f"{config.repeats} rounds after {config.warmup} warm-up calls, each round "
        "calling every implementation once, in rotating order (compilation excluded); the "
        "table shows medians, the JSON keeps every time. forward+backward = gradient of "
        "mean(ys^2) w.r.t. params and inputs. GEMM reference: "
        f"{out['gemm']['reference_flops'] / 1e9:.1f} GFLOP/s ({out['gemm']['n']}^2 float32 "
        "matmul); % = the cell's matmul FLOPs per second over it. rnnlab/X < 1: rnnlab is "
        "faster; (min) = the ratio of the fastest rounds, what a quiet machine would show. "
        "rnnlab: rnnlab.scan with derivative='auto'; rnnlab-fused and rnnlab-autodiff: the "
        "same with derivative= forced ('auto' picks one of the two by backend); rnnlab-remat: "
        "remat=True. torch-native: PyTorch with its vendor library switched off (on CPU "
        "oneDNN: for the LSTM, ATen's own loop instead of oneDNN's fused LSTM primitive, GRU "
        "and RNN never use it; on CUDA cuDNN, which runs all three). matmul-floor: the "
        "same lax.scan with each step cut down to its one [x, h] @ W matmul.",
        "",
    ]
    ratio_keys = [f"rnnlab/{o}" for o in COMPARED if o in fw]
    if "torch" in fw:
        ratio_keys.append("rnnlab/torch (min)")
    lines += [
        "| cell | size (T,B,F,H) | pass | " + " | ".join(f"{f} ms (% GEMM)" for f in fw)
        + "".join(f" | {k}" for k in ratio_keys) + " |",
        "|---|---|---|" + "---:|" * (len(fw) + len(ratio_keys)),
    ]
    for r in out["results"]:
        cells = [f"{1e3 * r[f]['median_s']:.3f} ({100 * r[f]['gemm_fraction']:.1f}%)"
                 for f in fw]
        ratios = [f"{r[k]:.2f}" if k in r else "-" for k in ratio_keys]
        lines.append(f"| {r['cell']} | {r['size']} ({r['T']},{r['B']},{r['F']},{r['H']}) | "
                     f"{r['pass']} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "## Minor page faults per call", "",
              "Memory a call touches for the first time (fresh temporaries the allocator "
              "returned to the OS after the previous call); each fault costs roughly a "
              "microsecond on this machine, so large forward+backward passes spend a visible "
              "share of their time here.", "",
              "| cell | size | pass | " + " | ".join(fw) + " |",
              "|---|---|---|" + "---:|" * len(fw)]
    for r in out["results"]:
        lines.append(f"| {r['cell']} | {r['size']} | {r['pass']} | " + " | ".join(
            f"{r[f]['minor_faults_per_call']:.0f}" for f in fw) + " |")
    if "compile_vs_T" in out:
        lines += ["", "## Compile time vs T (LSTM forward+backward, medium width)", "",
                  "| T | compile (s) |", "|---:|---:|"]
        lines += [f"| {r['T']} | {r['compile_s']:.3f} |" for r in out["compile_vs_T"]]
    if "memory_vs_T" in out:
        B, F, H = config.memory_size
        lines += ["", f"## Memory vs T, LSTM B={B} F={F} H={H}, forward+backward, loss on the "
                  "final state", "",
                  "XLA's buffer plan (arguments + outputs + temporaries). remat=True: chunks of "
                  "ceil(sqrt T) steps; remat=100: chunks of 100.", "",
                  "| T | remat | memory (MiB) | time (ms) |", "|---:|---|---:|---:|"]
        for r in out["memory_vs_T"]:
            t = f"{1e3 * r['median_s']:.2f}" if "median_s" in r else "-"
            lines.append(f"| {r['T']} | {r['remat']} | {r['total_bytes'] / 2**20:.1f} | {t} |")
    if "carry_grad_norms" in out:
        d = out["carry_grad_norms"]
        lines += ["", f"## carry_grad_norms (LSTM, {d['size']}): "
                  f"{1e3 * d['carry_grad_norms_s']:.2f} ms against {1e3 * d['backward_s']:.2f} ms "
                  "for jax.grad w.r.t. the params: "
                  f"{d['ratio']:.2f}x"]
    if "long_run" in out:
        lines += ["", f"## Long run: `{json.dumps(out['long_run'])}`"]
    lines += ["", "Command: `" + " ".join(["python", *sys.argv]) + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    config, ns = experiment.parse_config(SuiteBenchmark, argv, prog="python benchmarks/run.py")
    machine = machine_info()
    env = experiment.environment_info()
    if any(f in TORCH_FRAMEWORKS for f in config.frameworks) and torch_available():
        import torch

        env["torch"] = torch.__version__
    print(f"machine: {machine}\njax {env['jax']} ({env['backend']}), flax {env.get('flax')}, "
          f"torch {env.get('torch', 'absent')}", flush=True)
    out = run(config)
    machine["load_average_end"] = os.getloadavg()
    dest = Path(ns.out) if ns.out else DEFAULT_OUT
    stem = "-".join(["suite", device_slug(env["backend"], env["device_kind"])]
                    + ([config.precision] if config.precision != "float32" else [])
                    + ([ns.preset] if ns.preset else []))
    experiment.atomic_write_json(dest / f"{stem}.json", {"config": config, "environment": env,
                                                         "machine": machine, **out})
    experiment.atomic_write_text(dest / f"{stem}.md", markdown(config, env, machine, out))
    print(f"wrote {dest / (stem + '.md')} and {dest / (stem + '.json')}")


if __name__ == "__main__":
    main()
