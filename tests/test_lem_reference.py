"""LEM against a numpy transcription of the authors' PyTorch code (tk-rusch/LEM, commit
833da6b, src/adding/network.py, the same cell as the other tasks' network.py), in its
conventions:

* ``LEMCell``: ``inp2hid = Linear(ninp, 4 nhid)`` chunked ``(i_dt1, i_dt2, i_z, i_y)``,
  ``hid2hid = Linear(nhid, 3 nhid)`` chunked ``(h_dt1, h_dt2, h_y)``, ``transform_z =
  Linear(nhid, nhid)``; ``ms_dt_bar = dt sigmoid(i_dt1 + h_dt1)``, ``ms_dt = dt
  sigmoid(i_dt2 + h_dt2)``, ``z = (1 - ms_dt) z + ms_dt tanh(i_y + h_y)``, ``y = (1 -
  ms_dt_bar) y + ms_dt_bar tanh(transform_z(z) + i_z)``;
* ``reset_parameters``: every weight and bias uniform in ``+-1/sqrt(nhid)``;
* ``LEM.forward``: zero initial states, the loop over ``input [T, batch, ninp]``;
* src/adding/adding_task.py's defaults: ``nhid 128, batch 50, lr 0.0026, dt 0.0242``.

Mapping (the code's names differ from the paper's, not its equations): the code's
``i_dt2``/``h_dt2`` gate z, which is our first block (``dt1`` in the docstring); its
``i_dt1``/``h_dt1`` gate y (our second); its ``i_y``/``h_y`` feed z (our third); its
``i_z`` feeds y (our fourth). The code's three biases enter rnnlab's one ``b`` summed
(``transform_z.bias`` into the y block). rnnlab's ``lem`` defaults to lecun_normal weights
and a zero bias; the registry's ``lem-adding`` is the adding script's setting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab
from rnnlab import registry

H, F, S, B = 5, 3, 12, 4


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lem_reference(p, x, dt):
    """LEM.forward without the classifier: x [T, B, ninp] -> every y [T, B, H], final (y, z)."""
    y = np.zeros((x.shape[1], p["transform_z.weight"].shape[0]))
    z = np.zeros_like(y)
    ys = []
    for t in range(x.shape[0]):
        i_dt1, i_dt2, i_z, i_y = np.split(x[t] @ p["inp2hid.weight"].T + p["inp2hid.bias"], 4, 1)
        h_dt1, h_dt2, h_y = np.split(y @ p["hid2hid.weight"].T + p["hid2hid.bias"], 3, 1)
        ms_dt_bar = dt * _sigmoid(i_dt1 + h_dt1)
        ms_dt = dt * _sigmoid(i_dt2 + h_dt2)
        z = (1.0 - ms_dt) * z + ms_dt * np.tanh(i_y + h_y)
        y = (1.0 - ms_dt_bar) * y + ms_dt_bar * np.tanh(
            z @ p["transform_z.weight"].T + p["transform_z.bias"] + i_z)
        ys.append(y)
    return np.stack(ys), y, z


def _code_init(rng, scale=1.0):
    """reset_parameters (uniform +-1/sqrt(nhid)), times ``scale``."""
    bound = scale / np.sqrt(H)
    shapes = {"inp2hid.weight": (4 * H, F), "inp2hid.bias": (4 * H,),
              "hid2hid.weight": (3 * H, H), "hid2hid.bias": (3 * H,),
              "transform_z.weight": (H, H), "transform_z.bias": (H,)}
    return {k: rng.uniform(-bound, bound, s) for k, s in shapes.items()}


def _from_code(p):
    i_dt1, i_dt2, i_z, i_y = np.split(p["inp2hid.weight"].T, 4, 1)
    bi_dt1, bi_dt2, bi_z, bi_y = np.split(p["inp2hid.bias"], 4)
    h_dt1, h_dt2, h_y = np.split(p["hid2hid.weight"].T, 3, 1)
    bh_dt1, bh_dt2, bh_y = np.split(p["hid2hid.bias"], 3)
    return rnnlab.LEMParams(
        V=jnp.asarray(np.concatenate([i_dt2, i_dt1, i_y, i_z], 1)),
        W=jnp.asarray(np.concatenate([h_dt2, h_dt1, h_y], 1)),
        W_y=jnp.asarray(p["transform_z.weight"].T),
        b=jnp.asarray(np.concatenate([bi_dt2 + bh_dt2, bi_dt1 + bh_dt1, bi_y + bh_y,
                                      bi_z + p["transform_z.bias"]])),
    )


@pytest.mark.parametrize("dt", [1.0, 0.0242, 0.5])
def test_lem_equals_the_authors_code(x64, dt):
    del x64
    rng = np.random.default_rng(0)
    p = _code_init(rng, scale=8.0)  # past the init's scale: gates away from 1/2, tanh bent
    x = rng.normal(size=(S, B, F))
    want_ys, want_y, want_z = lem_reference(p, x, dt)

    carry, ys = rnnlab.scan(rnnlab.lem(H, dt=dt, param_dtype=jnp.float64), _from_code(p),
                            jnp.asarray(x))
    assert float(np.max(np.abs(want_ys))) > 1e-2
    np.testing.assert_allclose(np.asarray(ys), want_ys, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(carry.y), want_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(carry.z), want_z, rtol=1e-12, atol=1e-14)


def test_lem_gates_are_not_interchangeable(x64):
    """Mapping the code's i_dt1 to our first block (the names' reading) gives other outputs:
    the equality test pins which step size gates which state."""
    del x64
    rng = np.random.default_rng(1)
    p = _code_init(rng, scale=8.0)
    x = rng.normal(size=(S, B, F))
    want_ys, _, _ = lem_reference(p, x, 1.0)
    ours = _from_code(p)
    V, W, b = (np.split(np.asarray(a), n, axis=-1) for a, n in ((ours.V, 4), (ours.W, 3),
                                                                   (ours.b, 4)))
    by_names = ours._replace(V=jnp.asarray(np.concatenate([V[1], V[0], V[2], V[3]], -1)),
                             W=jnp.asarray(np.concatenate([W[1], W[0], W[2]], -1)),
                             b=jnp.asarray(np.concatenate([b[1], b[0], b[2], b[3]])))
    _, ys = rnnlab.scan(rnnlab.lem(H, param_dtype=jnp.float64), by_names, jnp.asarray(x))
    assert np.max(np.abs(np.asarray(ys) - want_ys)) > 1e-6


def test_lem_adding_entry_is_the_adding_scripts_setting():
    """lem-adding: dt = 0.0242 and weights uniform in +-1/sqrt(nhid) (biases zero)."""
    hidden = 128
    cell = registry.get("lem-adding", hidden)
    params = cell.init(jax.random.key(0), 2)
    bound = hidden**-0.5
    for name in ("V", "W", "W_y"):
        w = np.asarray(getattr(params, name))
        assert np.max(np.abs(w)) <= bound, name
        # uniform on [-bound, bound]: variance bound^2 / 3, and both ends reached
        np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.1, err_msg=name)
        assert np.max(np.abs(w)) > 0.95 * bound, name
    assert not np.any(np.asarray(params.b))
    # dt: one step from zero with a huge input drives both gates to dt
    p = params._replace(b=jnp.full_like(params.b, 50.0))
    carry, _ = cell.step(p, cell.initial_carry(p), jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(carry.z), 0.0242 * np.tanh(50.0), rtol=1e-5)
