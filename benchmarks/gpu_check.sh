#!/usr/bin/env bash
# Issue 21's measurements on a lent GPU, in one go, within 8 minutes (each step has its
# own time limit, 450 s in all, so one slow step cannot take the others' time):
#   1. per-step cost of the scan against H, B and unroll (benchmarks/overhead.py);
#   2. the Pallas whole-sequence kernel compiled for the GPU: equal to the sequential
#      scan, and timed against it (forward and forward+backward);
#   3. sweep throughput, S = 1, 8, 64, against a PyTorch loop when torch is there;
#   4. time per step at T = 1e3, 1e4, 1e5 on the GPU and on the same jaxlib's CPU
#      backend (JAX_PLATFORMS=cpu), which is where jax-ml/jax#40101 would show.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default: $OUT, else /tmp/gpu_check)
# Run from the repository root with rnnlab importable (pip install -e . or PYTHONPATH=src).
set -u
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: runs it with a limit, logs to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start)) s; tail of $out/$name.log:"
  tail -n 25 "$out/$name.log"
}

python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

# 4 first: a quadratic CPU loop is the one finding that changes what users must install.
step scaling-cpu 90 env JAX_PLATFORMS=cpu python benchmarks/scaling.py \
  --lengths 1000,10000,100000 --rounds 3 --check --out "$out"
step scaling-gpu 60 python benchmarks/scaling.py --rounds 3 --check --out "$out"
step overhead 120 python benchmarks/overhead.py --hidden-sizes 32,128,512 \
  --batch-sizes 1,16,128 --unrolls 1,4,16 --rounds 5 --out "$out"
step pallas 60 python - <<'EOF'
import statistics, time
import jax, jax.numpy as jnp
import rnnlab
from rnnlab.modes import pallas

def timed(fn, *args, rounds=7):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter(); jax.block_until_ready(fn(*args)); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

print(jax.devices()[0].device_kind)
for name in ("elman-tanh", "gru", "lstm"):
    for H, B, T in ((32, 16, 1000), (128, 32, 100), (128, 32, 1000)):
        cell = rnnlab.registry.get(name, H)
        p = cell.init(jax.random.key(0), H)
        xs = jax.random.normal(jax.random.key(1), (T, B, H))
        try:
            fk = jax.jit(lambda p, x: pallas.scan(cell, p, x, interpret=False)[1])
            fs = jax.jit(lambda p, x: rnnlab.scan(cell, p, x)[1])
            err = float(jnp.max(jnp.abs(fk(p, xs) - fs(p, xs))))
            gk = jax.jit(jax.grad(lambda p, x: jnp.mean(pallas.scan(cell, p, x, interpret=False)[1] ** 2)))
            gs = jax.jit(jax.grad(lambda p, x: jnp.mean(rnnlab.scan(cell, p, x)[1] ** 2)))
            print(f"{name:10s} H={H:4d} B={B:3d} T={T:5d} max|diff| {err:.2e}  forward "
                  f"kernel {1e3 * timed(fk, p, xs):.3f} ms scan {1e3 * timed(fs, p, xs):.3f} ms  "
                  f"fwd+bwd kernel {1e3 * timed(gk, p, xs):.3f} ms scan {1e3 * timed(gs, p, xs):.3f} ms",
                  flush=True)
        except Exception as e:  # a lowering the GPU backend refuses: say which, go on
            print(f"{name:10s} H={H:4d} B={B:3d} T={T:5d} FAILED: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:300]}", flush=True)
EOF
step sweep 120 python benchmarks/sweep.py --seeds 1,8,64 --steps 10 --rounds 3 --out "$out"
echo "results in $out"
