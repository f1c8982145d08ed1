"""experiments/long_range.py: config errors, divergence as an outcome, interrupted and
SIGKILLed runs resume to the uninterrupted numbers, the quick run writes its files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rnnlab import experiment, plots, train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "long_range.py"


def test_long_range_records_divergence_as_an_outcome(tmp_path, capsys, load_script):
    lr = load_script("experiments/long_range.py")
    cfg = lr.LongRangeConfig(cells=("elman-relu",), lengths=(4,), seeds=2, hidden_size=4,
                             train_steps=4, train_batch_size=4, eval_batch_size=8, chunk_size=4,
                             optimizer="sgd", learning_rate=1e30, clip_norm=None,
                             compare_clip_cell=None)
    run_dir = experiment.RunDir(tmp_path / "run", cfg)
    (spec,) = lr.run_specs(cfg)
    result = lr.run_one(cfg, spec, run_dir)
    assert result["diverged"] == [True, True] and result["outcome"] == ["diverged"] * 2
    assert result["success_rate"] == 0.0 and result["history_steps"] == 4
    assert [d["seed"] for d in result["divergence"]] == [0, 1]
    err = capsys.readouterr().err
    assert "seed 0 diverged at step" in err and "seed 1 diverged at step" in err
    folder = run_dir.path / "runs" / spec["key"]
    saved = np.load(folder / "last_good_params.npz")
    assert list(saved["seeds"]) == [0, 1]
    assert all(np.all(np.isfinite(saved[k])) for k in saved.files)
    assert json.loads((folder / "result.json").read_text())["outcome"] == ["diverged"] * 2


# ----------------------------------------------------------------------------- its figures


def _run(metric, success_rate):
    mean = float(np.mean([m for m in metric if m is not None]))
    return {"metric": metric, "metric_mean": mean, "success_rate": success_rate}


def _lines(ax) -> dict[str, np.ndarray]:
    return {ln.get_label(): np.asarray(ln.get_ydata(), float) for ln in ax.lines
            if not ln.get_label().startswith("_")}


def _close(fig) -> None:
    import matplotlib.pyplot as plt  # after rnnlab.plots has chosen the headless backend

    plt.close(fig)


def test_metric_vs_length_draws_each_cell_at_its_saved_values():
    runs = {"a": [_run([0.1, 0.3], 0.5), _run([0.2, 0.2], 0.0)],
            "b": [_run([0.01, 0.03], 1.0), _run([0.05, None], 0.5)]}  # None: NaN in JSON
    runs["b"][1]["metric_mean"] = None
    fig = plots.metric_vs_length(runs, [10, 20], [1 / 6, 1 / 6], task="adding",
                                 metric_name="mse", baseline_formula="1/6",
                                 success_criterion="mse < 0.01", higher_is_better=False)
    ax_m, ax_s = fig.axes
    lines = _lines(ax_m)
    np.testing.assert_allclose(lines["a"], [0.2, 0.2])
    np.testing.assert_array_equal(lines["b"], [0.02, np.nan])
    np.testing.assert_array_equal(lines["baseline: 1/6"], [1 / 6, 1 / 6])
    assert {k: v.tolist() for k, v in _lines(ax_s).items()} == {"a": [0.5, 0.0], "b": [1.0, 0.5]}
    seeds = sorted(y for ln in ax_m.lines if ln.get_linestyle() == "None"
                   for y in ln.get_ydata() if np.isfinite(y))
    assert seeds == [0.01, 0.03, 0.05, 0.1, 0.2, 0.2, 0.3]
    assert ax_m.get_yscale() == "log"
    assert ax_m.get_title() == "adding: final mse (line: mean; dots: seeds)"
    # The legend sits outside both panels, and tied cells are drawn apart along T.
    assert ax_m.get_legend() is None and ax_s.get_legend() is None and len(fig.legends) == 1
    xa, xb = (np.asarray(ln.get_xdata(), float) for ln in ax_s.lines[:2])
    assert np.all(xa < [10, 20]) and np.all(xb > [10, 20])
    np.testing.assert_allclose(xb / xa, plots._OFFSET)
    assert ax_s.lines[0].get_marker() != ax_s.lines[1].get_marker()
    _close(fig)


def test_training_curves_one_panel_per_length_one_line_per_cell():
    loss = np.array([[4.0, 3.0, np.nan], [2.0, 1.0, 1.0]])  # [S, steps]
    fig = plots.training_curves({"a": [loss, 2 * loss], "b": [loss, loss]}, [10, 20],
                                loss_kind="mse", baselines=[0.5, 0.25])
    assert [ax.get_title() for ax in fig.axes] == ["T = 10", "T = 20"]
    for ax, scale, baseline in zip(fig.axes, (1, 2), (0.5, 0.25), strict=True):
        # Too short to smooth: each curve is the NaN-ignoring mean over seeds.
        assert {k: v.tolist() for k, v in _lines(ax).items()} == {
            "a": [3.0 * scale, 2.0 * scale, 1.0 * scale], "b": [3.0, 2.0, 1.0],
            "baseline": [baseline, baseline]}
        assert ax.get_ylim()[1] == pytest.approx(5 * baseline)
    _close(fig)


def test_gradient_norm_clipping_draws_seed_0_and_the_geometric_mean():
    g = np.array([[1.0, 4.0], [4.0, 1.0]])  # [S, steps]
    fig = plots.gradient_norm_clipping([(1.0, g), (None, 2 * g)], clip_norm=1.0, title="t")
    (ax,) = fig.axes
    ys = [np.asarray(ln.get_ydata(), float) for ln in ax.lines]
    want = [[1.0, 4.0], [2.0, 2.0], [2.0, 8.0], [4.0, 4.0], [], [1.0, 1.0]]
    assert len(ys) == len(want)
    for got, expected in zip(ys, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("clipped at 1: ") and labels[1].startswith("no clipping: ")
    assert labels[2].startswith("thin: seed 0") and labels[3] == "clip threshold 1"
    # The two means differ in dash as well as colour, so where they overlap both show.
    assert ax.lines[1].get_linestyle() != ax.lines[3].get_linestyle()
    _close(fig)


# ----------------------------------------------------------------------------- the experiment


def test_replot_redraws_from_the_saved_numbers(tmp_path, load_script, capsys):
    lr = load_script("experiments/long_range.py")
    cfg = lr.LongRangeConfig(cells=("elman-tanh",), lengths=(4,), seeds=2, hidden_size=4,
                             train_steps=4, train_batch_size=4, eval_batch_size=8,
                             chunk_size=4, compare_clip_cell=None)
    lr.run(cfg, experiment.RunDir(tmp_path / "run", cfg))
    png = tmp_path / "run" / "metric_vs_T.png"
    png.unlink()
    lr.main(["--replot", str(tmp_path / "run")])
    assert png.stat().st_size > 0
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(SystemExit) as e:
        lr.main(["--replot", str(tmp_path / "run")])
    assert e.value.code == 2 and "holds no summary.json" in capsys.readouterr().err


def test_experiment_config_errors(load_script):
    lr = load_script("experiments/long_range.py")
    with pytest.raises(ValueError, match="task must be one of"):
        lr.LongRangeConfig(task="nope")
    with pytest.raises(ValueError, match="cell must be one of"):
        lr.LongRangeConfig(cells=("lstm", "no-such-cell"))
    with pytest.raises(ValueError, match="lengths must be >= 2"):
        lr.LongRangeConfig(lengths=(1,))
    with pytest.raises(ValueError, match="train_steps must be >= 0"):
        lr.LongRangeConfig(train_steps=-5)
    with pytest.raises(SystemExit):  # a usage error from the command line
        lr.main(["--steps", "-5", "--out", "unused"])


TINY = ["--cells", "elman-tanh", "--lengths", "4", "--seeds", "2", "--hidden-size", "4",
        "--train-steps", "30", "--chunk-size", "10", "--train-batch-size", "4",
        "--eval-batch-size", "16",
        "--compare-clip-cell", "none"]


def _numbers(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    keep = ("key", "metric", "eval_loss", "success", "diverged")
    history = (run_dir / "runs" / summary[0]["key"] / "history.csv").read_text()
    return [{k: r[k] for k in keep} for r in summary], history


@pytest.mark.slow
def test_experiment_interrupted_then_resumed_equals_uninterrupted(tmp_path, load_script):
    lr = load_script("experiments/long_range.py")
    lr.main([*TINY, "--out", str(tmp_path / "full")])

    def kill_at_20(step, state, history):
        if step == 20:
            raise train.TrainInterrupted

    with pytest.raises(train.TrainInterrupted):
        lr.main([*TINY, "--out", str(tmp_path / "cut")], callback=kill_at_20)
    cut = tmp_path / "cut"
    assert not (cut / "COMPLETE").exists()
    assert any((cut / "runs").glob("*/checkpoint/*"))  # the mid-run checkpoint is there
    lr.main([*TINY, "--out", str(cut)])
    assert (cut / "COMPLETE").exists()
    assert _numbers(cut) == _numbers(tmp_path / "full")
    # A third call finds everything finished and trains nothing.
    calls = []
    lr.main([*TINY, "--out", str(cut)], callback=lambda *a: calls.append(a))
    assert calls == []


@pytest.mark.slow
def test_quick_run_writes_its_files(tmp_path):
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("COMPLETE", "config.json", "environment.json", "summary.csv", "summary.json",
                 "metric_vs_T.png", "metric_vs_T.pdf", "training_curves.png",
                 "grad_norm_clipping.png", "grad_norm_clipping.pdf"):
        assert (out / name).exists(), name
    assert not any(out.glob("runs/*/checkpoint"))  # cleared once results were written
    assert len(list(out.glob("runs/*/result.json"))) == len(list(out.glob("runs/*/history.csv")))


# ----------------------------------------------------------------------------- no lost work

SWEEP = ["--cells", "elman-tanh", "--lengths", "4,5", "--seeds", "2", "--hidden-size", "4",
         "--steps", "60", "--chunk-size", "10", "--batch-size", "4", "--eval-batch-size", "16",
         "--compare-clip-cell", "none"]


def _launch(out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *SWEEP, "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(out: Path) -> dict:
    keep = ("metric", "eval_loss", "success", "diverged", "outcome", "history_steps")
    return {p.parent.name: ({k: json.loads(p.read_text())[k] for k in keep},
                            (p.parent / "history.csv").read_text())
            for p in sorted(out.glob("runs/*/result.json"))}


def _assert_same_results(got: dict, want: dict) -> None:
    """Bitwise on CPU. On a GPU (an H100, 2026-11-25) a resumed run matched to about 1e-7
    relative but not bitwise, even with --xla_gpu_deterministic_ops=true
    (docs/performance.md, "Tests on the H100"), so elsewhere the numbers need only agree to 1e-5."""
    if jax.default_backend() == "cpu":
        assert got == want
        return
    assert got.keys() == want.keys()
    for name in got:
        (g_result, g_history), (w_result, w_history) = got[name], want[name]
        assert g_result.keys() == w_result.keys(), name
        for key in g_result:
            if np.asarray(g_result[key]).dtype.kind in "fiub":  # numbers (or lists of them)
                np.testing.assert_allclose(g_result[key], w_result[key], rtol=1e-5,
                                           err_msg=f"{name}: {key}")
            else:
                assert g_result[key] == w_result[key], (name, key)
        g_rows, w_rows = (h.strip().splitlines() for h in (g_history, w_history))
        assert g_rows[0] == w_rows[0] and len(g_rows) == len(w_rows), name
        np.testing.assert_allclose(np.loadtxt(g_rows[1:], delimiter=","),
                                   np.loadtxt(w_rows[1:], delimiter=","), rtol=1e-5,
                                   err_msg=name)


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_the_uninterrupted_results(tmp_path):
    ref = _launch(tmp_path / "ref")
    cut_dir = tmp_path / "cut"
    cut = _launch(cut_dir)
    # Kill once the first (cell, T) run has finished and the second has a checkpoint.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and cut.poll() is None:
        done = list(cut_dir.glob("runs/*/result.json"))
        if done and any(cut_dir.glob("runs/*_T5_*/checkpoint/*")):
            break
        time.sleep(0.02)
    cut.send_signal(signal.SIGKILL)
    cut.communicate()
    assert cut.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    ref_out, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err[-3000:]

    # The killed folder is recognisably incomplete: no COMPLETE, no summary; every run
    # folder either has its result.json (finished) or has none (unfinished).
    assert not (cut_dir / "COMPLETE").exists() and not (cut_dir / "summary.json").exists()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in cut_dir.glob("runs/*/result.json")}
    assert len(finished) == 1
    for folder in (cut_dir / "runs").iterdir():
        if not (folder / "result.json").exists():
            assert not (folder / "history.csv").exists()

    again = _launch(cut_dir)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert (cut_dir / "COMPLETE").exists()
    # Finished runs were not recomputed, and the results equal the uninterrupted run's
    # (exactly on CPU).
    for name, mtime in finished.items():
        assert (cut_dir / "runs" / name / "result.json").stat().st_mtime_ns == mtime
    _assert_same_results(_results(cut_dir), _results(tmp_path / "ref"))
    for _, (result, history) in _results(cut_dir).items():
        assert result["history_steps"] == 60
        assert len(history.strip().splitlines()) == 1 + 2 * 60  # header + seeds x steps
    assert not any(cut_dir.glob("runs/*/checkpoint"))
