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
    train_steps: int = 4
    clip: float | None = None
    plot: bool = True

    PRESETS = {"quick": {"steps": 2}}

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; received {self.steps}.")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1; received {self.train_steps}.")


@dataclasses.dataclass(frozen=True)
class ClipCfg:
    clip: float | None = 1.0


def test_cli_is_generated_from_fields():
    cfg, ns = experiment.parse_config(
        Cfg, ["--quick", "--cells", "lstm,gru", "--clip", "0.5", "--no-plot"]
    )
    assert cfg == Cfg(cells=("lstm", "gru"), steps=2, clip=0.5, plot=False)
    assert experiment.parse_config(Cfg, ["--clip", "none"])[0].clip is None
    # An explicit none overrides a preset's or a default's value, it is not "unset".
    assert experiment.parse_config(ClipCfg, ["--clip", "none"])[0].clip is None
    assert experiment.parse_config(ClipCfg, [])[0].clip == 1.0
    assert experiment.parse_config(Cfg, ["--preset", "quick", "--steps", "5"])[0].steps == 5
    for empty in ("", "[]", "()"):
        assert experiment.parse_config(Cfg, ["--cells", empty])[0].cells == ()
    assert experiment.parse_config(Cfg, ["--cells", "[lstm, gru]"])[0].cells == ("lstm", "gru")


def test_cli_errors_name_the_flag_the_user_typed(capsys):
    # The config validates its fields (train_steps); the user typed --train-steps.
    with pytest.raises(SystemExit) as e:
        experiment.parse_config(Cfg, ["--train-steps", "-3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--train-steps must be >= 1; received -3" in err and "train_steps" not in err
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--steps", "-1"])
    err = capsys.readouterr().err  # "steps" inside "--train-steps" is left alone
    assert "--steps must be >= 0" in err
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--train-steps", "abc"])
    err = capsys.readouterr().err
    assert "--train-steps expects an integer; received 'abc'" in err
    assert "--train_steps" not in err


def test_help_lists_replot_when_the_script_supports_it(capsys):
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--help"], replot=True)
    assert "--replot RESULTS_FOLDER" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        experiment.parse_config(Cfg, ["--help"])
    assert "--replot" not in capsys.readouterr().out


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


def test_a_folder_from_before_a_new_field_resumes_at_its_default(tmp_path):
    experiment.RunDir(tmp_path / "r", Cfg()).write_json("part.json", {"x": 1})
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["plot"]  # as written by a version without the field
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    again = experiment.RunDir(tmp_path / "r", Cfg())  # plot=True is the default: resumes
    assert again.read_json("part.json") == {"x": 1}
    assert json.loads((tmp_path / "r" / "config.json").read_text())["plot"] is True
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(experiment.ConfigMismatchError, match="plot"):
        experiment.RunDir(tmp_path / "r", Cfg(plot=False))  # not the default: refused


def test_compile_fast_sets_jax_flag_and_restores_it():
    import jax

    flag = "jax_disable_most_optimizations"
    before = jax.config.read(flag)
    try:
        for outer in (False, True):
            jax.config.update(flag, outer)
            with experiment.compile_fast(True):
                assert jax.config.read(flag) is True
            assert jax.config.read(flag) is outer
            with experiment.compile_fast(False):  # never turns a caller's setting off
                assert jax.config.read(flag) is outer
    finally:
        jax.config.update(flag, before)


_CACHE_PROBE = """
import sys, jax, jax.numpy as jnp
from rnnlab import experiment
experiment._CACHE_MIN_COMPILE_SECONDS = 0.0  # the probe compiles in milliseconds
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
print(experiment.use_compile_cache(sys.argv[1]))
print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).sum()), len(hits))
"""


@pytest.mark.slow  # two fresh processes
def test_compile_cache_is_written_then_read_by_the_next_process(tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def probe(arg):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, arg], check=True, env=env,
                             capture_output=True, text=True)
        words = out.stdout.split()
        return words[0], float(words[1]), int(words[2])

    first = probe(str(cache))
    assert first[0] == str(cache) and first[2] == 0 and any(cache.iterdir())
    second = probe(str(cache))
    assert second[1] == first[1] and second[2] >= 1  # loaded, not compiled


def test_compile_cache_off_and_a_directory_set_in_jax_is_kept(tmp_path, monkeypatch):
    import jax

    monkeypatch.delenv(experiment.COMPILE_CACHE_ENV, raising=False)
    assert experiment.use_compile_cache("none") is None
    monkeypatch.setenv(experiment.COMPILE_CACHE_ENV, "off")
    assert experiment.use_compile_cache() is None  # the environment's choice
    before = jax.config.jax_compilation_cache_dir  # the suite's own cache, unless turned off
    # Nothing compiles between setting and resetting, so the suite's cache is unchanged.
    jax.config.update("jax_compilation_cache_dir", before or str(tmp_path / "mine"))
    try:
        assert experiment.use_compile_cache(tmp_path / "ours") == Path(
            before or tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


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


def test_replot_folder_is_recognised_before_the_config_options(tmp_path, capsys):
    assert experiment.replot_folder(["--quick"], prog="x.py") is None
    experiment.RunDir(tmp_path / "run", Cfg())
    assert experiment.replot_folder(["--replot", str(tmp_path / "run")], prog="x.py") == (
        tmp_path / "run"
    )
    assert experiment.replot_folder([f"--replot={tmp_path / 'run'}"], prog="x.py") == (
        tmp_path / "run"
    )
    with pytest.raises(SystemExit) as e:
        experiment.replot_folder(["--replot"], prog="x.py")
    assert e.value.code == 2 and "usage: x.py --replot RESULTS_FOLDER" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_replot_of_a_wrong_folder_is_one_line_and_status_2(tmp_path, capsys, make):
    folder = tmp_path / "nonexistent"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(SystemExit) as e:
        experiment.replot_folder(["--replot", str(folder)], prog="x.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("x.py: error: --replot: ") and str(folder) in err
    assert ("is not a folder" if make == "missing" else "holds no config.json") in err


_HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from rnnlab import experiment
from test_experiment import Cfg
experiment.RunDir({folder!r}, Cfg())
Path({ready!r}).write_text("ready")
time.sleep(60)
"""


def test_a_live_run_keeps_its_folder_and_a_killed_one_is_taken_over(tmp_path):
    # Two real processes: a re-queued job must not write into a folder a live run
    # writes, yet resuming after kill -9 must still work.
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    folder, ready = tmp_path / "run", tmp_path / "ready"
    code = _HOLDER.format(tests=str(Path(__file__).parent), folder=str(folder), ready=str(ready))
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert other.poll() is None, "the holder process died"
            assert time.monotonic() < deadline, "the holder process did not start"
            time.sleep(0.05)
        with pytest.raises(experiment.FolderBusyError) as e:
            experiment.RunDir(folder, Cfg())
        message = str(e.value)
        assert f"pid {other.pid}" in message and socket.gethostname() in message
        assert "started 20" in message  # the holder's start time, ISO format
        with pytest.raises(SystemExit, match="is being written by a live run"):
            experiment.open_run_dir("x", Cfg(), experiment.build_parser(Cfg).parse_args(
                ["--out", str(folder)]))
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
    run = experiment.RunDir(folder, Cfg())  # the dead run's claim is taken over
    assert run.read_json("config.json") is not None
    assert f"pid {os.getpid()}" in (folder / experiment.CLAIM_FILE).read_text()
    experiment.RunDir(folder, Cfg())  # the same process may reopen its own folder
    run.mark_complete()


def test_progress_without_a_terminal_prints_plain_periodic_lines():
    import io

    out = io.StringIO()
    with experiment.progress("sweep", total=4, disable=None, interval=0.0, stream=out) as adv:
        adv(note="lstm")
        adv(3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "sweep: 0/4, started"
    assert lines[1].startswith("sweep: 1/4, elapsed 0:00, eta ") and lines[1].endswith(", lstm")
    assert lines[-1].startswith("sweep: 4/4, elapsed 0:00, eta 0:00")
    quiet = io.StringIO()
    with experiment.progress("sweep", total=2, disable=True, stream=quiet) as adv:
        adv(2)
    assert quiet.getvalue() == ""


def test_save_figure_can_close_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    paths = experiment.RunDir(tmp_path / "r", Cfg()).save_figure(fig, "f", ("png",), close=True)
    assert [p.name for p in paths] == ["f.png"] and paths[0].stat().st_size > 0
    assert not plt.fignum_exists(fig.number)


def test_tables_say_n_a_for_missing_values(capsys):
    experiment.print_table("t", ["cell", "metric", "ratio"], [["a", float("nan"), None],
                                                             ["b", 0.123456, 2]])
    out = capsys.readouterr().out
    assert out.count("n/a") == 2 and "nan" not in out and "None" not in out
    assert "0.1235" in out
