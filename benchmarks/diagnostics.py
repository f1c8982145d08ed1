"""Cost of log-space gradient norms: carry_grad_norms(log=True) against log=False.

For each cell: compile once (timed separately), warm up, then time ``repeats`` calls
with ``jax.block_until_ready`` and report the median, for the plain one-backward-pass
norms and the rescaled adjoint, in the same process on the same device, so their
ratio is the comparison. Prints a table and the device and versions; writes nothing.

    python benchmarks/diagnostics.py            # H = 64, T = 256, B = 16
    python benchmarks/diagnostics.py --quick    # smoke test, seconds

Expect log=True to cost a small multiple of log=False: it records the carries, then
re-linearises every step and makes (leaves + 1) vector-Jacobian products per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import rnnlab
from rnnlab import diagnostics, experiment


def _time(fn, args, repeats: int, warmup: int) -> dict:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "median_s": statistics.median(times), "times_s": times}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="diagnostics.py", description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default="elman-tanh,lstm,gru,lru")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one cell, 2 repeats")
    a = parser.parse_args(argv)
    if a.quick:
        a.cells, a.hidden_size, a.seq_len, a.batch_size, a.repeats = "lstm", 8, 32, 2, 2
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); jax "
          f"{jax.__version__}; rnnlab {rnnlab.__version__}")
    rows = []
    for name in a.cells.split(","):
        cell = rnnlab.registry.get(name, a.hidden_size)
        params = cell.init(jax.random.key(0), a.hidden_size)
        xs = jax.random.normal(jax.random.key(1), (a.seq_len, a.batch_size, a.hidden_size))

        def loss(ys, c):
            return jnp.sum(jnp.sin(ys[-1]))

        timings = {log: _time(lambda p, x, log=log, cell=cell: diagnostics.carry_grad_norms(
            cell, p, x, loss, log=log), (params, xs), a.repeats, 1) for log in (False, True)}
        rows.append({"cell": name, "plain_s": timings[False]["median_s"],
                     "log_s": timings[True]["median_s"],
                     "log/plain": timings[True]["median_s"] / timings[False]["median_s"],
                     "plain_compile_s": timings[False]["compile_s"],
                     "log_compile_s": timings[True]["compile_s"]})
    experiment.print_table(
        f"carry_grad_norms, H = {a.hidden_size}, T = {a.seq_len}, B = {a.batch_size} "
        f"(median of {a.repeats})",
        list(rows[0]), [list(r.values()) for r in rows])
    return rows


if __name__ == "__main__":
    main()
