"""coRNN against a numpy transcription of the authors' PyTorch code (tk-rusch/coRNN,
commit afd8174, adding/model.py and the README's cell), in its conventions:

* ``coRNNCell.forward(x, hy, hz)``: ``hz = hz + dt * (tanh(i2h(cat(x, hz, hy))) - gamma * hy
  - epsilon * hz)``, then ``hy = hy + dt * hz``; one ``nn.Linear(n_inp + 2 n_hid, n_hid)``
  over the concatenation in the order (input, velocity z, position y);
* ``coRNN.forward``: zero initial states, the loop over ``x [T, batch, n_inp]``, the
  readout on the last ``hy``;
* the scripts' hyper-parameters: sMNIST ``dt = 0.042, gamma = 2.7, epsilon = 4.7`` (our
  defaults) and the adding script's defaults ``dt = 0.06, gamma = 66, epsilon = 15``.

Mapping: ``i2h.weight = [V^T | W_z^T | W^T]`` (torch's ``[out, in]``), ``i2h.bias = b``;
``hy`` is our ``y``, ``hz`` our ``z``. The code draws ``i2h`` with torch's Linear default,
uniform in ``+-1/sqrt(n_inp + 2 n_hid)`` (bias too); rnnlab's default is lecun_normal with
a zero bias, so the tests draw the code's way and map the weights in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab

H, F, S, B = 5, 3, 12, 4


def cornn_reference(i2h_w, i2h_b, x, dt, gamma, epsilon):
    """coRNN.forward without the readout: x [T, B, n_inp] -> every hy [T, B, H], final (hy, hz)."""
    hy = np.zeros((x.shape[1], i2h_w.shape[0]))
    hz = np.zeros_like(hy)
    hys = []
    for t in range(x.shape[0]):
        pre = np.concatenate([x[t], hz, hy], axis=1) @ i2h_w.T + i2h_b
        hz = hz + dt * (np.tanh(pre) - gamma * hy - epsilon * hz)
        hy = hy + dt * hz
        hys.append(hy)
    return np.stack(hys), hy, hz


def _torch_linear_init(rng, n_in, n_out):
    bound = 1.0 / np.sqrt(n_in)
    return rng.uniform(-bound, bound, (n_out, n_in)), rng.uniform(-bound, bound, n_out)


def _from_code(i2h_w, i2h_b, n_inp):
    """The code's i2h as CoRNNParams."""
    Wt = i2h_w.T  # [n_inp + 2H, H], rows in the order (x, hz, hy)
    return rnnlab.CoRNNParams(V=jnp.asarray(Wt[:n_inp]), W=jnp.asarray(Wt[n_inp + H:]),
                              W_z=jnp.asarray(Wt[n_inp:n_inp + H]), b=jnp.asarray(i2h_b))


SETTINGS = {
    "smnist": dict(dt=0.042, gamma=2.7, epsilon=4.7),
    "adding": dict(dt=0.06, gamma=66.0, epsilon=15.0),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_cornn_equals_the_authors_code(x64, setting):
    del x64
    hp = SETTINGS[setting]
    rng = np.random.default_rng(0)
    i2h_w, i2h_b = _torch_linear_init(rng, F + 2 * H, H)
    i2h_w *= 20.0  # weights well past the init's scale, so that tanh saturates and y, z grow
    x = rng.normal(size=(S, B, F))
    want_ys, want_y, want_z = cornn_reference(i2h_w, i2h_b, x, **hp)

    cell = rnnlab.cornn(H, param_dtype=jnp.float64, **hp)
    carry, ys = rnnlab.scan(cell, _from_code(i2h_w, i2h_b, F), jnp.asarray(x))
    assert float(np.max(np.abs(want_ys))) > 1e-2  # the comparison is not of near-zeros
    np.testing.assert_allclose(np.asarray(ys), want_ys, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(carry.y), want_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(carry.z), want_z, rtol=1e-12, atol=1e-14)


def test_cornn_position_and_velocity_weights_are_not_interchangeable(x64):
    """The mapping above is the only one that fits: reading the code's (x, hz, hy) blocks as
    (x, hy, hz) gives other outputs, so the equality test pins which weight acts on which."""
    del x64
    rng = np.random.default_rng(1)
    i2h_w, i2h_b = _torch_linear_init(rng, F + 2 * H, H)
    x = rng.normal(size=(S, B, F))
    want_ys, _, _ = cornn_reference(i2h_w, i2h_b, x, **SETTINGS["smnist"])
    p = _from_code(i2h_w, i2h_b, F)
    swapped = p._replace(W=p.W_z, W_z=p.W)
    _, ys = rnnlab.scan(rnnlab.cornn(H, param_dtype=jnp.float64), swapped, jnp.asarray(x))
    assert np.max(np.abs(np.asarray(ys) - want_ys)) > 1e-6


def test_cornn_defaults_are_the_smnist_scripts():
    """sMNIST/sMNIST_task.py's argparse defaults: dt 0.042, gamma 2.7, epsilon 4.7."""
    import inspect

    params = inspect.signature(rnnlab.cornn).parameters
    assert {k: params[k].default for k in ("dt", "gamma", "epsilon")} == SETTINGS["smnist"]


def test_cornn_adding_entry_is_the_adding_scripts_setting():
    """cornn-adding: the adding script's dt, gamma, epsilon and i2h's uniform draw."""
    hidden = 128
    cell = rnnlab.registry.get("cornn-adding", hidden)
    params = cell.init(jax.random.key(0), 2)
    bound = (2 + 2 * hidden) ** -0.5  # nn.Linear(n_inp + 2 n_hid, n_hid), n_inp = 2
    for name in ("V", "W", "W_z", "b"):  # the bias too: nn.Linear draws it alike
        w = np.asarray(getattr(params, name))
        assert np.max(np.abs(w)) <= bound, name
        # uniform on [-bound, bound]: variance bound^2 / 3 (to 4 standard errors of the
        # sample variance, whose relative s.e. is sqrt(0.8 / n)), both ends reached
        np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=4 * (0.8 / w.size) ** 0.5,
                                   err_msg=name)
        assert np.max(np.abs(w)) > 0.95 * bound, name
    assert not np.allclose(params.b, params.W[0])  # the bias has a key of its own
    # dt, gamma, epsilon: one step from a chosen carry against the update written out
    dt, gamma, epsilon = (SETTINGS["adding"][k] for k in ("dt", "gamma", "epsilon"))
    y0, z0 = jnp.full((hidden,), 0.1), jnp.full((hidden,), -0.2)
    p = params._replace(V=jnp.zeros_like(params.V), W=jnp.zeros_like(params.W),
                        W_z=jnp.zeros_like(params.W_z), b=jnp.full_like(params.b, 0.5))
    carry, _ = cell.step(p, rnnlab.CoRNNCarry(y=y0, z=z0), jnp.zeros(2))
    z1 = -0.2 + dt * (np.tanh(0.5) - gamma * 0.1 - epsilon * -0.2)
    np.testing.assert_allclose(np.asarray(carry.z), z1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(carry.y), 0.1 + dt * z1, rtol=1e-5)


@pytest.mark.parametrize("setting", SETTINGS)
def test_uncoupled_oscillators_lose_gradient_at_the_closed_form_rate(x64, setting):
    """With W = W_z = 0 each unit is a damped oscillator driven by a constant, and the step
    is linear in (y, z): from the update, d(y_t, z_t)/d(y_{t-1}, z_{t-1}) =
    [[1 - dt^2 gamma, dt (1 - dt eps)], [-dt gamma, 1 - dt eps]] per unit. The Lyapunov
    exponents are the logs of its eigenvalues' moduli, each H times: at the adding
    script's values max|eig| = 0.724, so a gradient loses ~1e-35 over T/2 = 250 steps and
    only the coupling through W, W_z can carry the first marker at T = 500 (docs/cells.md)."""
    dt, gamma, eps = (SETTINGS[setting][k] for k in ("dt", "gamma", "epsilon"))
    M = np.array([[1 - dt**2 * gamma, dt * (1 - dt * eps)], [-dt * gamma, 1 - dt * eps]])
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(M))))[::-1]
    H, T = 3, 600
    cell = rnnlab.cornn(H, **SETTINGS[setting], param_dtype=jnp.float64)
    p = cell.init(jax.random.key(0), 2)
    p = p._replace(W=jnp.zeros_like(p.W), W_z=jnp.zeros_like(p.W_z), b=jnp.full(H, 0.3))
    xs = jax.random.normal(jax.random.key(1), (T, 2), jnp.float64)
    lam = np.asarray(rnnlab.diagnostics.lyapunov_exponents(cell, p, xs, 2 * H, transient=100,
                                                           key=jax.random.key(2)))
    np.testing.assert_allclose(lam, np.repeat(expected, H), rtol=1e-6, atol=1e-6)
    if setting == "adding":
        np.testing.assert_allclose(np.exp(lam[0]), 0.7245, atol=5e-4)
