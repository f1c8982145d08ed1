"""experiments/sequence_classification.py: the results folder, summary.csv's columns, resume
after an interruption (in-process) and after kill -9 (subprocess, slow), bad flags named."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from rnnlab import train

pytest.importorskip("aeon")

SCRIPT = "experiments/sequence_classification.py"
TINY = ["--dataset", "japanese-vowels", "--cells", "gru", "--seeds", "2", "--hidden-size", "4",
        "--steps", "20", "--batch-size", "8", "--chunk-size", "10", "--grad-sequences", "6"]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script(SCRIPT, "sequence_classification")


@pytest.mark.slow  # ~10 s of compiling (train, evaluate, gradient norms); CI runs it
def test_interrupted_run_resumes_and_writes_the_folder(script, tmp_path):
    out = tmp_path / "run"

    def stop_after_first_chunk(step, state, history):
        if step == 10:
            raise train.TrainInterrupted

    with pytest.raises(train.TrainInterrupted):
        script.main([*TINY, "--out", str(out)], callback=stop_after_first_chunk)
    assert not (out / "COMPLETE").exists()
    steps_seen = []
    script.main([*TINY, "--out", str(out)], callback=lambda step, *_: steps_seen.append(step))
    assert steps_seen == [20]  # only the second chunk ran again
    assert (out / "COMPLETE").exists() and (out / "japanese-vowels.png").stat().st_size > 0
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert list(rows[0])[:5] == ["dataset", "cell", "seeds", "test_accuracy_mean",
                                 "test_accuracy_std"]
    assert rows[0]["dataset"] == "japanese-vowels" and rows[0]["cell"] == "gru"
    assert rows[0]["seeds"] == "2" and 0 <= float(rows[0]["test_accuracy_mean"]) <= 1
    result = json.loads((out / "runs/japanese-vowels_gru/result.json").read_text())
    accuracy = np.asarray(result["test_accuracy"])
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(accuracy.std())
    curve = json.loads((out / "runs/japanese-vowels_gru/test_curve.json").read_text())
    assert curve["step"] == [10, 20]  # one test point per chunk, across the interruption
    np.testing.assert_allclose(curve["accuracy"][-1], accuracy)
    grad = np.load(out / "runs/japanese-vowels_gru/grad_norms.npz")
    assert grad["distance"][0] == 1 and np.isfinite(grad["mean_log_norm"][:5]).all()
    assert not (out / "runs/japanese-vowels_gru/checkpoint").exists()


def test_help_states_the_numbers_and_bad_flags_are_named(script, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "MNIST-1D" in text and "91%" in text and "--dataset" in text
    with pytest.raises(SystemExit) as e:
        script.main(["--dataset", "mnist", "--out", "/nonexistent/never"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'mnist'" in err and "japanese-vowels" in err


@pytest.mark.slow
def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    args = [sys.executable, str(ROOT / SCRIPT), *TINY, "--steps", "40"]
    subprocess.run([*args, "--out", str(tmp_path / "full")], check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    curve = killed / "runs/japanese-vowels_gru/test_curve.json"
    deadline = time.monotonic() + 300
    while not curve.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "COMPLETE").exists()
    subprocess.run([*args, "--out", str(killed)], check=True, env=env, capture_output=True)

    def result(folder):
        return json.loads((folder / "runs/japanese-vowels_gru/result.json").read_text())

    assert result(killed)["test_accuracy"] == result(tmp_path / "full")["test_accuracy"]
    np.testing.assert_array_equal(
        np.load(killed / "runs/japanese-vowels_gru/history.npz")["loss"],
        np.load(tmp_path / "full/runs/japanese-vowels_gru/history.npz")["loss"])
