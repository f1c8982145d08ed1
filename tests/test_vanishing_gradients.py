"""The headline experiment end to end at its --quick size: files, resume, replot, registry."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab


@pytest.fixture(scope="module")
def vg(load_script):
    return load_script("experiments/vanishing_gradients.py")


def _user_cell(hidden_size):
    """A linear cell h_t = 0.5 h_{t-1} + x W, registered by a 'user' for the experiment."""

    def init(key, input_size):
        return {"W": jax.random.normal(key, (input_size, hidden_size))}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros((*batch_shape, hidden_size))

    def step(params, h, x):
        h = 0.5 * h + x @ params["W"]
        return h, h

    return rnnlab.Cell(init, initial_carry, step)


@pytest.fixture(scope="module")
def quick_run(vg, tmp_path_factory):
    rnnlab.registry.register(
        "test-half-linear",
        _user_cell,
        description="h = 0.5 h + x W",
        decay_bound=lambda params: jnp.asarray(0.5),
        overwrite=True,
    )
    out = tmp_path_factory.mktemp("vg") / "run"
    args = ["--quick", "--out", str(out), "--cells", "elman-tanh,test-half-linear"]
    path = vg.main(args)
    return vg, args, Path(path)


def test_quick_run_writes_everything(quick_run):
    _, _, path = quick_run
    for name in [
        "gradient_norms.png",
        "phase_diagram.png",
        "gradient_norms.csv",
        "phase_diagram.csv",
        "summary.json",
        "config.json",
        "environment.json",
        "COMPLETE",
        "cells/elman-tanh.json",
        "norms_elman-tanh.npz",
    ]:
        assert (path / name).exists(), name
    env = json.loads((path / "environment.json").read_text())
    assert env["jax"] == jax.__version__ and env["devices"]
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["cells"]) == {"elman-tanh", "test-half-linear"}
    cfg = json.loads((path / "config.json").read_text())
    raw = np.load(path / "norms_elman-tanh.npz")
    assert raw["log_init"].shape == (cfg["seeds"], cfg["seq_len"], cfg["batch_size"])
    # The summary is the median over seeds x sequences of the raw log-norms, by distance.
    k = 5
    want = np.median(raw["log_init"][:, cfg["seq_len"] - 1 - k, :].astype(np.float64))
    got = summary["cells"]["elman-tanh"]["init"]
    np.testing.assert_allclose(got["log_median"][k - 1], want, rtol=1e-6)
    np.testing.assert_allclose(got["median"][k - 1], np.exp(want), rtol=1e-6)


def test_registered_user_cell_joins_with_its_closed_form(quick_run):
    """A linear cell with decay 0.5 per step: the measured rate is exactly the closed form."""
    _, _, path = quick_run
    res = json.loads((path / "cells" / "test-half-linear.json").read_text())
    np.testing.assert_allclose(res["init"]["decay_per_step"], 0.5, rtol=1e-4)
    np.testing.assert_allclose(res["init"]["median"], res["init"]["theory"], rtol=1e-4)
    assert res["init"]["bound_rate"] == 0.5


def test_rerun_resumes_without_recomputing(quick_run, monkeypatch):
    vg, args, path = quick_run
    before = (path / "summary.json").read_text()

    def fail(*a, **k):
        raise AssertionError("a finished cell was measured again")

    monkeypatch.setattr(vg, "measure_cell", fail)
    monkeypatch.setattr(vg, "phase_diagram", fail)
    vg.main(args)
    assert (path / "summary.json").read_text() == before


def test_partial_run_is_completed(quick_run, monkeypatch):
    """Delete one cell's result (as if killed before it finished): only it is redone."""
    vg, args, path = quick_run
    before = json.loads((path / "cells" / "elman-tanh.json").read_text())
    (path / "cells" / "elman-tanh.json").unlink()
    (path / "COMPLETE").unlink()
    measured = []
    real = vg.measure_cell
    monkeypatch.setattr(
        vg, "measure_cell", lambda name, *a: measured.append(name) or real(name, *a)
    )
    vg.main(args)
    assert measured == ["elman-tanh"]
    after = json.loads((path / "cells" / "elman-tanh.json").read_text())
    assert after == before  # same seeds, same numbers
    assert (path / "COMPLETE").exists()


def test_replot_from_saved_numbers(quick_run):
    vg, _, path = quick_run
    png = path / "gradient_norms.png"
    png.unlink()
    vg.main(["--replot", str(path)])
    assert png.stat().st_size > 10_000


def test_different_config_into_same_folder_refuses(quick_run):
    vg, args, _ = quick_run
    with pytest.raises(SystemExit, match="different config"):
        vg.main(args + ["--seq-len", "41"])


def test_bad_options_are_usage_errors(vg, capsys):
    with pytest.raises(SystemExit):
        vg.main(["--cells", "transformer"])
    assert "cell must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vg.main(["--train-steps", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        vg.main(["--help"])
    assert e.value.code == 0
    assert "--phase-distance" in capsys.readouterr().out


def test_ratios_are_numbers_however_deep(vg):
    """The table reads g(k)/g(1) from log-space medians: 0.5^245 ~ 1.8e-74 is a number,
    a ratio beyond float64 a power of ten, an exactly-zero median says so."""
    d = np.arange(1, 301)
    logs = (d - 1) * np.log(0.5)
    summary = {"log_median": logs.tolist(), "median": np.exp(logs).tolist()}
    np.testing.assert_allclose(vg._ratio(summary, 246), 0.5**245, rtol=1e-9)
    assert vg._ratio({"log_median": (logs * 10).tolist()}, 300) == "1e-900.1"
    assert vg._ratio({"log_median": [0.0, None]}, 2) == "0 (no path)"
    summarised = vg._summarise(np.log(0.5) * np.arange(200.0)[::-1].reshape(1, 200, 1) +
                               np.zeros((2, 1, 3)), None)
    np.testing.assert_allclose(summarised["decay_per_step"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(summarised["median"][-1], 0.5**199, rtol=1e-9)


def test_figure_marks_a_curve_that_reaches_exactly_zero(tmp_path):
    """A median that becomes exactly 0 ends in a labelled cross; deep norms (1e-100)
    are drawn, not dropped."""
    from rnnlab import plots

    d = list(range(1, 11))
    logs = [-(k * 23.0) for k in d[:6]] + [None] * 4  # down to 1e-60, then exactly 0
    curve = {"distance": d, "log_median": logs, "log_q25": logs, "log_q75": logs}
    fig = plots.gradient_norms_vs_distance({"cell": {"init": curve}}, phases=["init"])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "exactly 0 beyond" in texts
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), np.asarray(logs[:6]) / np.log(10))
    assert ax.get_ylim()[0] < -60 / 2.3


def test_cells_take_names_tags_and_all(vg):
    registry = rnnlab.registry
    zoo = set(registry.names("zoo"))
    default = vg.Config().cell_names
    assert default and not zoo & set(default)  # the legible first generation
    assert set(vg.Config(cells=("zoo",)).cell_names) == zoo
    assert vg.Config(cells=("all",)).cell_names == registry.names()
    assert vg.Config(cells=("lstm", "classic")).cell_names[0] == "lstm"  # order kept, no repeats
    assert len(set(vg.Config(cells=("lstm", "classic")).cell_names)) == len(
        vg.Config(cells=("lstm", "classic")).cell_names)
    with pytest.raises(ValueError, match="received 'nope'"):
        vg.Config(cells=("nope",))
