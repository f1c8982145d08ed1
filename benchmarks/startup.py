"""Start-up of the headline smoke run: `vanishing_gradients.py --quick`, wall and CPU time.

Runs the command as a fresh process, in interleaved rounds, under three settings:

- ``full-opt, no cache``: ``--no-fast-compile --compile-cache none`` (before either
  existed, every run was this);
- ``fast, cold cache``: ``--quick``'s own ``--fast-compile``, with an empty cache folder;
- ``fast, warm cache``: the same, with the cache a previous run filled.

and reports the median wall and CPU (user + system) seconds of each, and their ratio
to the first. At this size compiling is most of the time, so the first two differ by
XLA's optimisation passes and the last two by loading compiled programs instead.

    python benchmarks/startup.py             # 3 rounds: about 5 min on a 2-core CPU
    python benchmarks/startup.py --rounds 1  # one of each

Writes ``benchmarks/results/startup-<device>.{md,json}`` (``--out DIR`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

import rnnlab
from rnnlab import experiment

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "vanishing_gradients.py"
SETTINGS = ("full-opt, no cache", "fast, cold cache", "fast, warm cache")


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(args: list[str], env: dict[str, str]) -> dict[str, float]:
    cpu0, start = _child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, str(SCRIPT), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"wall_s": time.perf_counter() - start, "cpu_s": _child_cpu() - cpu0}


def measure(rounds: int) -> dict[str, list[dict[str, float]]]:
    # The child sees none of the settings a caller's environment (or the test suite's)
    # may carry, so each setting is the command line's alone.
    env = {k: v for k, v in os.environ.items() if k not in (
        "JAX_DISABLE_MOST_OPTIMIZATIONS", "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", experiment.COMPILE_CACHE_ENV)}
    times: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm-cache"
        _run_once(["--quick", "--out", f"{tmp}/fill", "--compile-cache", str(warm)], env)
        for r in range(rounds):
            cold = Path(tmp) / f"cold-cache-{r}"
            argv = {
                SETTINGS[0]: ["--no-fast-compile", "--compile-cache", "none"],
                SETTINGS[1]: ["--compile-cache", str(cold)],
                SETTINGS[2]: ["--compile-cache", str(warm)],
            }
            for setting in SETTINGS:
                out = Path(tmp) / f"run-{r}-{SETTINGS.index(setting)}"
                times[setting].append(_run_once(["--quick", "--out", str(out), *argv[setting]],
                                                env))
                print(f"round {r + 1}/{rounds} {setting}: "
                      f"{times[setting][-1]['wall_s']:.1f} s", file=sys.stderr)
    return times


def summarise(times: dict[str, list[dict[str, float]]]) -> list[dict[str, float | str]]:
    base = {k: statistics.median(t[k] for t in times[SETTINGS[0]]) for k in ("wall_s", "cpu_s")}
    rows = []
    for setting in SETTINGS:
        med = {k: statistics.median(t[k] for t in times[setting]) for k in ("wall_s", "cpu_s")}
        rows.append({"setting": setting, **med,
                     "wall_ratio": med["wall_s"] / base["wall_s"],
                     "cpu_ratio": med["cpu_s"] / base["cpu_s"],
                     "wall_all_s": [t["wall_s"] for t in times[setting]]})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="startup.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="folder for startup-<device>.{md,json}")
    a = parser.parse_args(argv)
    if a.rounds < 1:
        parser.error(f"--rounds must be >= 1; received {a.rounds}")
    from run import device_slug, machine_info  # the suite's names (benchmarks/ is on the path)

    device = jax.devices()[0]
    slug = device_slug(jax.default_backend(), device.device_kind)
    rows = summarise(measure(a.rounds))
    lines = [
        f"# Start-up of `vanishing_gradients.py --quick` ({slug})", "",
        f"{a.rounds} interleaved rounds, medians; "
        f"{machine_info().get('cpu_model', 'CPU')}, {os.cpu_count()} cores; "
        f"jax {jax.__version__}, rnnlab {rnnlab.__version__}.", "",
        "| setting | wall s | CPU s | wall / full-opt | CPU / full-opt | every round's wall s |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {r['setting']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_ratio']:.2f} | "
        f"{r['cpu_ratio']:.2f} | {', '.join(f'{w:.1f}' for w in r['wall_all_s'])} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    experiment.atomic_write_text(out / f"startup-{slug}.md", text)
    experiment.atomic_write_json(out / f"startup-{slug}.json", {
        "rounds": a.rounds, "environment": experiment.environment_info(), "results": rows})
    return rows


if __name__ == "__main__":
    main()
