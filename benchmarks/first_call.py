"""First call of each diagnostic outside a jit, in a fresh process: compile and run, wall s.

A researcher in a notebook calls ``carry_grad_norms(cell, params, xs, loss)`` without a
jit; this times that first call (an LSTM, H = 8, T = 32, B = 4) for each diagnostic, each
in its own process so no call profits from another's compiled programs, in interleaved
rounds, and prints the medians. Run it on two checkouts to compare them
(``PYTHONPATH=<checkout>/src python benchmarks/first_call.py``).

    python benchmarks/first_call.py             # 3 rounds, about a minute
    python benchmarks/first_call.py --rounds 1

Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CALLS = {
    "carry_grad_norms": "D.carry_grad_norms(cell, params, xs, loss)",
    "carry_grad_norms log": "D.carry_grad_norms(cell, params, xs, loss, log=True)",
    "jacobian_norms": "D.jacobian_norms(cell, params, xs[:, 0])",
    "lyapunov_exponents": "D.lyapunov_exponents(cell, params, xs[:, 0], 2)",
}

_PROGRAM = """
import time, jax, jax.numpy as jnp, rnnlab
D = rnnlab.diagnostics
cell = rnnlab.registry.get("lstm", 8)
params = cell.init(jax.random.key(0), 2)
xs = jax.random.normal(jax.random.key(1), (32, 4, 2))
def loss(ys, c):
    return jnp.sum(jnp.sin(ys[-1]))
jax.block_until_ready(xs)
start = time.perf_counter()
jax.block_until_ready({call})
print(time.perf_counter() - start)
"""


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="first_call.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    a = parser.parse_args(argv)
    if a.rounds < 1:
        parser.error(f"--rounds must be >= 1; received {a.rounds}")
    times: dict[str, list[float]] = {name: [] for name in CALLS}
    for _ in range(a.rounds):
        for name, call in CALLS.items():
            out = subprocess.run([sys.executable, "-c", _PROGRAM.format(call=call)],
                                 check=True, capture_output=True, text=True).stdout
            times[name].append(float(out.split()[-1]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    import rnnlab

    print(f"first eager call, LSTM H = 8, T = 32, B = 4; median of {a.rounds} fresh processes "
          f"(rnnlab at {rnnlab.__file__})")
    for name, m in medians.items():
        print(f"  {name:22s} {m:6.2f} s   ({', '.join(f'{t:.2f}' for t in times[name])})")
    return medians


if __name__ == "__main__":
    main()
