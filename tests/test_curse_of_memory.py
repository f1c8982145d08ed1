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


def test_cells_retain_one_minus_one_over_tau_at_initialisation(com):
    """The tau <-> knob mapping: at h = 0, x = 0 the LSTM's forget gate, the GRU's update
    gate and every |lambda| of the LRU equal 1 - 1/tau."""
    import jax
    import jax.numpy as jnp

    for tau in (2.0, 30.0, 1000.0):
        lam = 1 - 1 / tau
        for name in com.CELLS:
            cell, params, tangents = com.memory_cell(name, tau, 4, jax.random.key(0))
            if name == "lstm":
                retained = jax.nn.sigmoid(params.b[4:8])
            elif name == "gru":
                retained = jax.nn.sigmoid(params.b_x[4:8] + params.b_h[4:8])
            else:
                retained = jnp.exp(-jnp.exp(params.nu_log))
                np.testing.assert_allclose(jnp.exp(params.gamma_log), np.sqrt(1 - lam**2),
                                           rtol=1e-5)
            np.testing.assert_allclose(retained, lam, rtol=1e-6, err_msg=name)
            for v in tangents.values():  # each tangent has norm sqrt(H)
                norm = np.sqrt(sum(float(jnp.sum(jnp.square(a))) for a in jax.tree.leaves(v)))
                np.testing.assert_allclose(norm, 2.0, rtol=1e-6)


def test_lru_measurement_follows_the_exp_normalised_closed_form(com):
    """An outside check of the cells' measurement: a diagonal LRU set to |lambda| = 1 - 1/tau
    is, per unit, the exp-parametrised recurrence with its input scaled by a FIXED
    gamma = sqrt(1 - |lambda|^2) (gamma_log is its own parameter) and driven by B_i x_t,
    so its per-unit steady state is (l ln l)^2 (1+l^2)/(1-l^2)^2 times the mean |B_i|^2
    (the phases leave |d lambda / d nu| and the sums unchanged)."""
    import jax
    import jax.numpy as jnp

    cfg = com.Config(cells=("lru",), taus=(5.0, 20.0), cell_seq_len=1500, batch_size=64,
                     hidden_size=8)
    got = com.measure_cell(cfg, "lru")["memory"]
    for tau, value in zip(cfg.taus, got, strict=True):
        _, params, _ = com.memory_cell("lru", tau, 8, jax.random.fold_in(jax.random.key(0), 2))
        gain = float(jnp.mean(params.B_re[0] ** 2 + params.B_im[0] ** 2))
        lam = 1 - 1 / tau
        expected = (lam * np.log(lam)) ** 2 * (1 + lam**2) / (1 - lam**2) ** 2 * gain
        np.testing.assert_allclose(com.lru_closed_form(lam), expected / gain, rtol=1e-12)
        np.testing.assert_allclose(value, expected, rtol=0.1)  # Monte-Carlo noise
