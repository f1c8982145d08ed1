"""benchmarks/scaling.py can fail: it flags a loop that is quadratic in T and passes a linear one.

The quadratic loop rewrites its whole [T] buffer at every step, which is what XLA:CPU
does to a small stacked output in the jaxlib releases of jax-ml/jax#40101; the linear one
writes one element per step. The gap (about 10x per decade of T) is far outside timing
noise, so the assertion holds on a loaded machine.
"""

import sys

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(scope="module")
def scaling(load_script):
    module = load_script("benchmarks/scaling.py", name="rnnlab_bench_scaling")
    yield module
    del sys.modules["rnnlab_bench_scaling"]


def _loop(T: int, whole_buffer: bool):
    def body(t, buf):
        if whole_buffer:  # O(T) work per step
            return buf * 0.5 + jnp.where(jnp.arange(T) == t, 1.0, 0.0)
        return buf.at[t].set(0.5 * buf[t - 1] + 1.0)

    return jax.jit(lambda b: jax.lax.fori_loop(1, T, body, b)), (jnp.zeros(T),)


def test_scaling_flags_quadratic_not_linear(scaling):
    problems = [(name, T, *_loop(T, name == "quadratic"))
                for name in ("linear", "quadratic") for T in (2_000, 20_000)]
    rows = {r["row"]: r for r in scaling.time_problems(problems, rounds=3, tolerance=3.0)}
    assert rows["quadratic"]["flagged"], rows["quadratic"]["ratio"]
    assert not rows["linear"]["flagged"], rows["linear"]["ratio"]
    assert [t["T"] for t in rows["linear"]["timings"]] == [2_000, 20_000]


def test_scaling_rejects_bad_flags(scaling, capsys):
    with pytest.raises(SystemExit) as e:
        scaling.main(["--lengths", "100"])
    assert e.value.code == 2
    assert "--lengths" in capsys.readouterr().err


def test_blocked_scan_equals_scan(scaling):
    """The -blocked rows time the same computation (T not a multiple of the block too)."""
    from conftest import close

    import rnnlab

    cell = rnnlab.registry.get("gru", 4)
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (23, 2, 3))
    close(scaling.blocked_scan(cell, params, xs, 5), rnnlab.scan(cell, params, xs)[1])
