"""The benchmark scripts run end to end. Speed is measured in benchmarks/, never asserted here."""

import json
import sys

import jax
import pytest

SUITE = ("rnnlab", "rnnlab-fused", "rnnlab-autodiff", "flax", "matmul-floor")  # no torch


@pytest.mark.slow  # ~45 s of CPU time: every framework and study is compiled
def test_benchmark_scripts_run_quick(tmp_path, load_script):
    """run.py --quick writes every cell x pass row with consistent timings and ratios, and
    parallel_scan.py (one cell, one length) writes its table; no timing is asserted."""
    run = load_script("benchmarks/run.py", name="rnnlab_bench_run")
    parallel = load_script("benchmarks/parallel_scan.py", name="rnnlab_bench_parallel_scan")
    try:
        run.main(["--quick", "--frameworks", ",".join(SUITE), "--out", str(tmp_path)])
        parallel.main(["--quick", "--cells", "mingru", "--lengths", "64",
                       "--out", str(tmp_path)])
    finally:
        del sys.modules["rnnlab_bench_run"], sys.modules["rnnlab_bench_parallel_scan"]

    device = run.device_slug(jax.default_backend(), jax.devices()[0].device_kind)  # "cpu"
    assert (tmp_path / f"suite-{device}-quick.md").exists()
    suite = json.loads((tmp_path / f"suite-{device}-quick.json").read_text())
    assert suite["frameworks"] == list(SUITE)
    assert [(r["cell"], r["pass"]) for r in suite["results"]] == [
        (c, p) for c in ("lstm", "gru", "elman") for p in ("forward", "forward+backward")]
    for row in suite["results"]:
        for f in SUITE:
            timing = row[f]
            assert 0 < timing["min_s"] <= timing["median_s"], (row["cell"], row["pass"], f)
            assert len(timing["times_s"]) == suite["config"]["repeats"]
            assert timing["gemm_fraction"] > 0
        for f in SUITE[1:]:
            assert row[f"rnnlab/{f}"] == row["rnnlab"]["median_s"] / row[f]["median_s"]
            assert row[f"rnnlab/{f} (min)"] == row["rnnlab"]["min_s"] / row[f]["min_s"]
    assert [r["T"] for r in suite["compile_vs_T"]] == list(suite["config"]["compile_lengths"])
    remat = {(r["T"], r["remat"]) for r in suite["memory_vs_T"]}
    assert {(256, False), (256, True), (256, 100)} <= remat
    assert suite["carry_grad_norms"]["ratio"] > 0

    assert (tmp_path / f"parallel_scan-{device}-quick.md").exists()
    rows = json.loads((tmp_path / f"parallel_scan-{device}-quick.json").read_text())["results"]
    assert [(r["cell"], r["T"], r["pass"]) for r in rows] == [
        ("mingru", 64, "forward"), ("mingru", 64, "forward+backward")]
    for row in rows:
        assert row["speedup"] == row["sequential"]["median_s"] / row["parallel"]["median_s"]
