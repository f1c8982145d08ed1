"""Weight conversion: rnnlab computes what flax.linen's cells and (a numpy
transcription of) PyTorch's documented equations compute, and conversions
round-trip."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import B, F, H, T, close, equal
from flax import linen as nn

import rnnlab
from rnnlab import convert

GATES = {"lstm": 4, "gru": 3, "elman": 1}


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(1).standard_normal((T, B, F)).astype(np.float32)


# ------------------------------------------------------------------------------ flax

FLAX_CASES = {
    "lstm": (nn.LSTMCell, rnnlab.lstm),
    "optimized-lstm": (nn.OptimizedLSTMCell, rnnlab.lstm),
    "gru": (nn.GRUCell, rnnlab.gru),
    "elman": (nn.SimpleCell, rnnlab.elman),
}


def _randomise(shapes, seed):
    """Every leaf random (flax initialises biases at zero, which would hide bugs).

    numpy, not jax.random: one compilation fewer per leaf shape.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.mark.parametrize("case", list(FLAX_CASES))
def test_flax_cells_equal_rnnlab(case, xs):
    flax_cell, factory = FLAX_CASES[case]
    kind = case.removeprefix("optimized-")
    flax_rnn = nn.RNN(flax_cell(H), time_major=True, return_carry=True)
    shapes = jax.eval_shape(flax_rnn.init, jax.random.key(0), xs)["params"]["cell"]
    flax_params = _randomise(shapes, seed=0)

    @jax.jit
    def both(flax_params):
        flax_out = flax_rnn.apply({"params": {"cell": flax_params}}, xs)
        return flax_out, rnnlab.scan(factory(H), convert.from_flax(flax_params, kind), xs)

    (flax_carry, flax_ys), (carry, ys) = both(flax_params)
    close(ys, flax_ys)
    close(carry, rnnlab.LSTMCarry(*flax_carry) if kind == "lstm" else flax_carry)

    # flax -> rnnlab -> flax is the identity; a variables dict is accepted too.
    params = convert.from_flax(flax_params, kind)
    equal(convert.to_flax(params, kind), flax_params)
    equal(convert.from_flax({"params": flax_params}, kind), params)


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_rnnlab_to_flax_and_back(kind, xs):
    flax_cell, factory = FLAX_CASES[kind]
    # rnnlab params with every entry random, including the GRU's r, z blocks
    # of b_h, which flax lacks (they fold into flax's ir, iz biases).
    cell = factory(H)
    params = _randomise(jax.eval_shape(lambda k: cell.init(k, F), jax.random.key(0)), seed=1)
    flax_params = convert.to_flax(params, kind)
    back = convert.from_flax(flax_params, kind)

    @jax.jit
    def outputs(params, flax_params, back):
        flax_ys = nn.RNN(flax_cell(H), time_major=True).apply({"params": {"cell": flax_params}}, xs)
        return flax_ys, rnnlab.scan(cell, params, xs)[1], rnnlab.scan(cell, back, xs)[1]

    flax_ys, ys, back_ys = outputs(params, flax_params, back)
    close(ys, flax_ys)
    close(back_ys, flax_ys)
    if kind != "gru":
        equal(back, params)


# ----------------------------------------------------------------------------- torch


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def torch_reference(sd, kind, xs, *, num_layers=1, reverse=False, nonlinearity="tanh"):
    """PyTorch's documented nn.LSTM / nn.GRU / nn.RNN equations in float64 numpy.

    W_ih [G*H, in], W_hh [G*H, H] as PyTorch stores them (so ``x @ W_ih.T``):
      LSTM: i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh); c' = σ(f) c + σ(i) tanh(g);
            h' = σ(o) tanh(c')
      GRU:  r = σ(W_ir x + b_ir + W_hr h + b_hr); z = σ(W_iz x + b_iz + W_hz h + b_hz);
            n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h' = (1 - z) n + z h
      RNN:  h' = act(W_ih x + b_ih + W_hh h + b_hh)
    Returns the last layer's outputs [T, B, H] and its final (h, c).
    """
    xs = np.asarray(xs, np.float64)
    suffix = "_reverse" if reverse else ""
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    for layer in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            np.asarray(sd[f"{n}_l{layer}{suffix}"], np.float64)
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        hid = w_hh.shape[1]
        h = np.zeros(xs.shape[1:-1] + (hid,))
        c = np.zeros_like(h)
        ys = np.zeros(xs.shape[:-1] + (hid,))
        for t in reversed(range(len(xs))) if reverse else range(len(xs)):
            gi = xs[t] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            if kind == "lstm":
                i, f, g, o = np.split(gi + gh, 4, axis=-1)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
            elif kind == "gru":
                (i_r, i_z, i_n), (h_r, h_z, h_n) = np.split(gi, 3, -1), np.split(gh, 3, -1)
                r, z = _sigmoid(i_r + h_r), _sigmoid(i_z + h_z)
                n = np.tanh(i_n + r * h_n)
                h = (1.0 - z) * n + z * h
            else:
                h = act(gi + gh)
            ys[t] = h
        xs = ys
    return xs, (h, c)


def random_state_dict(kind, *, num_layers=1, bidirectional=False, seed=0, prefix=""):
    """What ``{k: v.numpy() for k, v in nn.<KIND>(F, H, num_layers).state_dict()}`` holds."""
    rng = np.random.default_rng(seed)
    G, sd = GATES[kind], {}
    for layer in range(num_layers):
        in_size = F if layer == 0 else H * (2 if bidirectional else 1)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            shapes = {
                "weight_ih": (G * H, in_size),
                "weight_hh": (G * H, H),
                "bias_ih": (G * H,),
                "bias_hh": (G * H,),
            }
            for name, shape in shapes.items():
                sd[f"{prefix}{name}_l{layer}{suffix}"] = (0.5 * rng.standard_normal(shape)).astype(
                    np.float32
                )
    return sd


TORCH_CASES = {
    "lstm": ("lstm", rnnlab.lstm, "tanh"),
    "gru": ("gru", rnnlab.gru, "tanh"),
    "rnn-tanh": ("elman", rnnlab.elman, "tanh"),
    "rnn-relu": ("elman", functools.partial(rnnlab.elman, nonlinearity="relu"), "relu"),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_two_layers_equal_reference(case, xs):
    kind, factory, nonlinearity = TORCH_CASES[case]
    sd = random_state_dict(kind, num_layers=2, prefix="rnn.")
    params = convert.from_torch_stack(sd, kind, prefix="rnn.")
    assert len(params) == 2
    cell = rnnlab.stack([factory(H), factory(H)])
    carry, ys = rnnlab.scan(cell, params, xs)
    ref_ys, (ref_h, ref_c) = torch_reference(
        sd_unprefixed(sd, "rnn."), kind, xs, num_layers=2, nonlinearity=nonlinearity
    )
    close(ys, ref_ys)
    top = carry[1]
    close(top.h if kind == "lstm" else top, ref_h)
    if kind == "lstm":
        close(top.c, ref_c)
    # Layer by layer gives the same params.
    equal(convert.from_torch(sd, kind, layer=1, prefix="rnn."), params[1])


def sd_unprefixed(sd, prefix):
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def test_torch_bidirectional_layer(xs):
    sd = random_state_dict("lstm", bidirectional=True)
    fw = convert.from_torch(sd, "lstm")
    bw = convert.from_torch(sd, "lstm", reverse=True)
    cell = rnnlab.lstm(H)
    _, ys = rnnlab.bidirectional(cell, cell, (fw, bw), xs)
    ref_fw, _ = torch_reference(sd, "lstm", xs)
    ref_bw, _ = torch_reference(sd, "lstm", xs, reverse=True)
    close(ys, np.concatenate([ref_fw, ref_bw], axis=-1))
    with pytest.raises(ValueError, match="bidirectional"):
        convert.from_torch_stack(sd, "lstm")


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_torch_round_trips(kind):
    sd = random_state_dict(kind, num_layers=2)
    params = convert.from_torch_stack(sd, kind)
    back = convert.to_torch_stack(params, kind)
    assert set(back) == set(sd)
    assert all(isinstance(v, np.ndarray) for v in back.values())
    for key, v in sd.items():
        if kind == "gru" or key.startswith("weight"):
            np.testing.assert_array_equal(back[key], v)
    if kind != "gru":  # one bias in rnnlab: all of it goes to bias_ih
        for layer in range(2):
            np.testing.assert_allclose(
                back[f"bias_ih_l{layer}"], sd[f"bias_ih_l{layer}"] + sd[f"bias_hh_l{layer}"]
            )
            np.testing.assert_array_equal(back[f"bias_hh_l{layer}"], 0.0)
    # rnnlab -> torch -> rnnlab is the identity.
    equal(convert.from_torch_stack(back, kind), params)
    one = convert.to_torch(params[0], kind, layer=3, reverse=True, prefix="m.")
    assert set(one) == {
        f"m.{n}_l3_reverse" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    equal(convert.from_torch(one, kind, layer=3, reverse=True, prefix="m."), params[0])


def test_torch_without_bias():
    sd = {k: v for k, v in random_state_dict("gru").items() if k.startswith("weight")}
    params = convert.from_torch(sd, "gru")
    equal((params.b_x, params.b_h), (np.zeros(3 * H), np.zeros(3 * H)))


# ---------------------------------------------------------------------------- errors


def test_errors():
    sd = random_state_dict("lstm")
    lstm_params = convert.from_torch(sd, "lstm")
    with pytest.raises(ValueError, match=r"kind must be one of .*received 'rnn'"):
        convert.from_torch(sd, "rnn")
    with pytest.raises(ValueError, match="kind must be one of"):
        convert.from_flax({}, "LSTMCell")
    with pytest.raises(ValueError, match="kind must be one of"):
        convert.to_torch(lstm_params, "transformer")
    with pytest.raises(ValueError, match=r"must hold key 'weight_hh_l1'"):
        convert.from_torch(sd, "lstm", layer=1)
    with pytest.raises(
        ValueError,
        match=r"must hold key 'weight_ih_l0_reverse'|"
        r"must hold key 'weight_hh_l0_reverse'",
    ):
        convert.from_torch(sd, "lstm", reverse=True)
    # An LSTM state dict read as a GRU: 4H rows where 3H are expected.
    with pytest.raises(
        ValueError,
        match=r"weight_hh_l0'\] must have shape \(12, 4\); "
        r"received shape \(16, 4\)",
    ):
        convert.from_torch(sd, "gru")
    bad = dict(sd, bias_hh_l0=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"bias_hh_l0'\] must have shape \(16,\)"):
        convert.from_torch(bad, "lstm")
    with pytest.raises(ValueError, match="both biases .* missing key 'bias_hh_l0'"):
        convert.from_torch({k: v for k, v in sd.items() if k != "bias_hh_l0"}, "lstm")
    with pytest.raises(ValueError, match="proj_size"):
        convert.from_torch(dict(sd, weight_hr_l0=np.zeros((2, H))), "lstm")
    with pytest.raises(ValueError, match="layer must be a non-negative int"):
        convert.from_torch(sd, "lstm", layer=-1)
    with pytest.raises(ValueError, match="must hold key 'weight_ih_l0'"):
        convert.from_torch_stack({}, "gru")

    flax_params = convert.to_flax(lstm_params, "lstm")
    with pytest.raises(ValueError, match=r"GRUCell params .* missing \('ir',"):
        convert.from_flax(flax_params, "gru")
    del flax_params["hg"]["bias"]
    with pytest.raises(ValueError, match=r"flax_params\['hg'\] must hold key 'bias'"):
        convert.from_flax(flax_params, "lstm")
    flax_params["hg"]["bias"] = jnp.zeros(H + 1)
    with pytest.raises(
        ValueError,
        match=r"\['hg'\]\['bias'\] must have shape \(4,\); "
        r"received shape \(5,\)",
    ):
        convert.from_flax(flax_params, "lstm")

    with pytest.raises(ValueError, match=r"params must be GRUParams .* received LSTMParams"):
        convert.to_flax(lstm_params, "gru")
    with pytest.raises(ValueError, match=r"params.b must have shape \(16,\)"):
        convert.to_torch(lstm_params._replace(b=jnp.zeros(3)), "lstm")
    with pytest.raises(ValueError, match=r"params.W_h must have shape \(H, 1\*H\)"):
        convert.to_flax(rnnlab.ElmanParams(lstm_params.W_x, lstm_params.W_h, jnp.zeros(4)), "elman")
    with pytest.raises(ValueError, match="tuple of per-layer params"):
        convert.to_torch_stack(lstm_params, "lstm")
