"""experiments/parallel_newton.py: a tiny run writes its numbers and figure, the numbers
obey what is known without running it, a replot redraws from the folder, bad configs fail."""

import csv
import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("experiments/parallel_newton.py")


def test_a_tiny_run_writes_consistent_numbers_and_a_figure(tmp_path, script):
    folder = script.main([
        "--cells", "mingru", "--hidden-size", "4", "--lengths", "8,16", "--gains", "0.5,1.5",
        "--seeds", "1", "--formats", "png", "--out", str(tmp_path / "run")])
    assert (folder / "iterations_vs_lyapunov.png").stat().st_size > 0
    with open(folder / "iterations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # (2 gains + 1 cell) x 1 seed x 2 lengths x 2 modes
    assert len(rows) == 3 * 2 * 2
    for row in rows:
        T, its = int(row["T"]), int(row["iterations"])
        assert row["converged"] == "True" and 1 <= its <= T  # the default cap T is exact
        if row["system"] == "mingru":
            assert its == 1  # its carry is linear in itself: one Newton step solves it
    summary = json.loads((folder / "summary.json").read_text())
    lyap = summary["sweep"]["lyapunov"]  # [G, S]: contracting at 0.5, less so at 1.5
    assert lyap[0][0] < lyap[1][0] and lyap[0][0] < np.log(0.5) + 0.1
    newton = summary["sweep"]["iterations/newton/16"]
    assert newton[0][0] <= newton[1][0]

    (folder / "iterations_vs_lyapunov.png").unlink()
    script.main(["--replot", str(folder)])
    assert (folder / "iterations_vs_lyapunov.png").exists()


@pytest.mark.parametrize("fields, message", [
    ({"lengths": (2,)}, "lengths must be non-empty and each >= 4"),
    ({"gains": (0.0,)}, "gains must be positive"),
    ({"cells": ("nope",)}, "cell must be one of"),
    ({"input_scale": -1.0}, "input_scale must be >= 0"),
])
def test_bad_configs_are_clear_errors(script, fields, message):
    with pytest.raises(ValueError, match=message):
        script.Config(**fields)
