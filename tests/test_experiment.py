"""The experiment plumbing: configs from the command line, atomic results folders."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rnnlab import experiment


@dataclasses.dataclass(frozen=True)
class Cfg:
    """demo config."""

    cells: tuple[str, ...] = dataclasses.field(default=("lstm",), metadata={"help": "cells"})
    steps: int = dataclasses.field(default=10, metadata={"help": "train steps"})
    clip: float | None = None
    plot: bool = True

    PRESETS = {"quick": {"steps": 2}}

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; received {self.steps}.")


def test_cli_is_generated_from_fields():
    cfg, ns = experiment.parse_config(
        Cfg, ["--quick", "--cells", "lstm,gru", "--clip", "0.5", "--no-plot"]
    )
    assert cfg == Cfg(cells=("lstm", "gru"), steps=2, clip=0.5, plot=False)
    assert experiment.parse_config(Cfg, ["--clip", "none"])[0].clip is None
    assert experiment.parse_config(Cfg, ["--preset", "quick", "--steps", "5"])[0].steps == 5
    for empty in ("", "[]", "()"):
        assert experiment.parse_config(Cfg, ["--cells", empty])[0].cells == ()
    assert experiment.parse_config(Cfg, ["--cells", "[lstm, gru]"])[0].cells == ("lstm", "gru")


def test_cli_errors_name_the_option(capsys):
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--steps", "-1"])
    assert "steps must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--steps", "many"])
    assert "--steps expects int" in capsys.readouterr().err


def test_run_dir_refuses_other_config_and_resumes_same(tmp_path):
    run = experiment.RunDir(tmp_path / "r", Cfg())
    run.write_json("part.json", {"x": 1})
    again = experiment.RunDir(tmp_path / "r", Cfg())  # same config: reused, nothing lost
    assert again.read_json("part.json") == {"x": 1}
    assert len(again.read_json("environment_resumed.json")) == 1
    with pytest.raises(experiment.ConfigMismatchError, match="steps"):
        experiment.RunDir(tmp_path / "r", Cfg(steps=3))
    fresh = experiment.RunDir(tmp_path / "r", Cfg(steps=3), overwrite=True)
    assert fresh.read_json("part.json") is None


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    experiment.atomic_write_json(path, {"old": True})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(experiment.os, "replace", boom)
    with pytest.raises(OSError):
        experiment.atomic_write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # temp file cleaned up


def test_json_has_no_nan():
    text = json.dumps(experiment.to_jsonable(
        {"a": np.array([1.0, np.nan, np.inf]), "b": math.nan, "c": (1, 2)}
    ), allow_nan=False)
    assert json.loads(text) == {"a": [1.0, None, None], "b": None, "c": [1, 2]}


def test_written_files_are_readable_by_others(tmp_path):
    path = experiment.atomic_write_text(tmp_path / "x.txt", "hi")
    assert path.stat().st_mode & 0o044 == 0o044 or (experiment._UMASK & 0o044)


def test_csv_and_npz_round_trip_through_a_run_dir(tmp_path):
    run = experiment.RunDir(tmp_path / "r", Cfg())
    run.write_csv("h.csv", [{"step": 0, "loss": 0.5}, {"step": 1, "loss": math.nan}])
    assert run.read_csv("h.csv") == [{"step": "0", "loss": "0.5"}, {"step": "1", "loss": ""}]
    assert run.read_csv("missing.csv") is None
    run.write_npz("a.npz", {"x": np.arange(3), "['cell'].W": np.ones((2, 2))})
    saved = np.load(run.file("a.npz"))
    assert saved.files == ["x", "['cell'].W"] and saved["x"].tolist() == [0, 1, 2]
    reader = experiment.RunDir(tmp_path / "r", Cfg(), is_writer=False)
    reader.write_npz("b.npz", {"x": np.zeros(1)})
    assert not run.file("b.npz").exists()


def test_replot_folder_is_recognised_before_the_config_options():
    assert experiment.replot_folder(["--quick"], prog="x.py") is None
    assert experiment.replot_folder(["--replot", "some/run"], prog="x.py") == Path("some/run")
    with pytest.raises(SystemExit, match="usage: x.py --replot RESULTS_FOLDER"):
        experiment.replot_folder(["--replot"], prog="x.py")


def test_save_figure_can_close_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    paths = experiment.RunDir(tmp_path / "r", Cfg()).save_figure(fig, "f", ("png",), close=True)
    assert [p.name for p in paths] == ["f.png"] and paths[0].stat().st_size > 0
    assert not plt.fignum_exists(fig.number)
