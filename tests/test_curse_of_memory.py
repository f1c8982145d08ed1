"""The curse-of-memory experiment at its --quick size: closed forms, measurement, files."""

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def com(load_script):
    return load_script("experiments/curse_of_memory.py")


def test_closed_forms_equal_their_series(com):
    """(1+l^2)/(1-l^2)^3 = sum k^2 l^(2k-2); the normalised coefficients' squares sum to
    1/(1-l^2)^2; the exponential parametrisation multiplies by (l ln l)^2."""
    k = np.arange(0, 20000.0)
    for lam in (0.5, 0.9, 0.99):
        plain = np.sum((k * lam ** (k - 1)) ** 2)
        norm = np.sum((np.sqrt(1 - lam**2) * (k * lam ** (k - 1) - lam ** (k + 1)
                                              / (1 - lam**2))) ** 2)
        np.testing.assert_allclose(com.closed_form("plain", lam), plain, rtol=1e-9)
        np.testing.assert_allclose(com.closed_form("normalised", lam), norm, rtol=1e-9)
        dl = (lam * np.log(lam)) ** 2
        np.testing.assert_allclose(com.closed_form("exp", lam), dl * plain, rtol=1e-9)
        np.testing.assert_allclose(com.closed_form("exp+normalised", lam), dl * norm, rtol=1e-9)


def test_quick_run_measures_the_closed_forms(com, tmp_path):
    path = Path(com.main(["--quick", "--out", str(tmp_path / "run")]))
    for name in ("curse_of_memory.png", "curse_of_memory.csv", "summary.json", "config.json",
                 "COMPLETE"):
        assert (path / name).exists(), name
    summary = json.loads((path / "summary.json").read_text())
    for p in com.PARAMETRISATIONS:  # Monte-Carlo noise: ~5% at lambda = 0.99, T = 2000
        np.testing.assert_allclose(summary["measured"][p], summary["closed_form"][p], rtol=0.2)
    (path / "curse_of_memory.png").unlink()
    com.main(["--replot", str(path)])
    assert (path / "curse_of_memory.png").stat().st_size > 10_000


def test_help_says_what_to_expect(com, capsys):
    with pytest.raises(SystemExit) as e:
        com.main(["--help"])
    assert e.value.code == 0
    assert "bounded" in capsys.readouterr().out
