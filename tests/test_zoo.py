"""The gradient-stable cell zoo against the papers' equations.

Each cell's step is transcribed here in float64 numpy from its paper (column or row
vectors as the paper writes them; dense matrices where the code uses FFTs or blocks),
and compared over several steps with non-zero biases. The registry-parametrised tests
(tests/test_cells.py and the others) add scan == Python loop, lengths, reverse, jit
and float64 finite differences for every registered entry; here: the variants the
registry does not set, the parallel form against the sequential one, the closed-form
decay bounds, unitarity, and the options' errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import B, F, H, T, close, loop, random_carry
from jax.test_util import check_grads

import rnnlab


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


def _ln(a, g, b=0.0, eps=1e-5):
    mu = a.mean(-1, keepdims=True)
    var = ((a - mu) ** 2).mean(-1, keepdims=True)
    return g * (a - mu) / np.sqrt(var + eps) + b


# ----------------------------------------------------------------------------- numpy oracles
# One function per paper: (params as float64 numpy, carry, x [B, F]) -> (carry, y).


def np_indrnn(p, h, x, u_max=None):  # Li et al. 2018, eq. 2
    u = p.u if u_max is None else np.clip(p.u, -u_max, u_max)
    h = np.maximum(x @ p.W_x + u * h + p.b, 0)
    return h, h


def np_antisymmetric(p, h, x, eps=0.1, gamma=0.01, gated=False):  # Chang et al. eqs. 11-12
    M = p.W - p.W.T - gamma * np.eye(len(p.W))
    if not gated:
        h = h + eps * np.tanh(h @ M + x @ p.V + p.b)
        return h, h
    Vh, Vz = np.split(p.V, 2, axis=1)
    bh, bz = np.split(p.b, 2)
    z = _sig(h @ M + x @ Vz + bz)
    h = h + eps * z * np.tanh(h @ M + x @ Vh + bh)
    return h, h


def np_cornn(p, carry, x, dt=0.042, gamma=2.7, eps=4.7):  # Rusch & Mishra eq. 3, columns
    y, z = carry
    W, Wz, V = p.W.T, p.W_z.T, p.V.T
    z = z + dt * (np.tanh((W @ y.T + Wz @ z.T + V @ x.T).T + p.b) - gamma * y - eps * z)
    y = y + dt * z
    return (y, z), y


def np_lem(p, carry, x, dt=1.0):  # Rusch et al. 2022 eq. 3
    y, z = carry
    H_ = len(p.W_y)
    V1, V2, Vz, Vy = np.split(p.V, 4, axis=1)
    b1, b2, bz, by = np.split(p.b, 4)
    W1, W2, Wz = np.split(p.W, 3, axis=1)
    dt_n = dt * _sig(y @ W1 + x @ V1 + b1)
    dt_bar = dt * _sig(y @ W2 + x @ V2 + b2)
    z = (1 - dt_n) * z + dt_n * np.tanh(y @ Wz + x @ Vz + bz)
    y = (1 - dt_bar) * y + dt_bar * np.tanh(z @ p.W_y + x @ Vy + by)
    assert y.shape[-1] == H_
    return (y, z), y


def np_lipschitz(p, h, x, beta=0.75, ga=0.001, gw=0.001, eps=0.03):  # Erichson et al. eq. 6
    def struct(M, g):
        return (1 - beta) * (M + M.T) + beta * (M - M.T) - g * np.eye(len(M))

    A, W = struct(p.M_A, ga), struct(p.M_W, gw)
    h = (h.T + eps * A @ h.T + eps * np.tanh(W @ h.T + p.U.T @ x.T + p.b[:, None])).T
    return h, h


def np_urnn(p, h, x, seed=0):  # Arjovsky et al. eq. 6, as dense matrices
    N = h.shape[-1]
    j = np.arange(N)
    Fm = np.exp(-2j * np.pi * np.outer(j, j) / N) / np.sqrt(N)
    Pm = np.eye(N)[np.random.default_rng(seed).permutation(N)]
    D = [np.diag(np.exp(1j * p.theta[k])) for k in range(3)]

    def R(k):
        v = (p.v_re[k] + 1j * p.v_im[k])[:, None]
        return np.eye(N) - 2 * (v @ v.conj().T) / np.sum(np.abs(v) ** 2)

    W = D[2] @ R(1) @ Fm.conj().T @ D[1] @ Pm @ R(0) @ Fm @ D[0]
    z = (W @ h.T).T + x @ (p.V_re + 1j * p.V_im)
    mod = np.abs(z)
    h = np.where(mod + p.b >= 0, (mod + p.b) * z / np.where(mod > 0, mod, 1), 0)
    return h, np.concatenate([h.real, h.imag], -1) @ p.U + p.b_o


def np_slstm(p, carry, x, exp_forget=False):  # Beck et al. eqs. 8-17
    c, n, m, h = carry
    _, K, D, _ = p.R.shape
    Rfull = np.zeros((4, K * D, K * D))
    for g in range(4):
        for k in range(K):
            Rfull[g, k * D:(k + 1) * D, k * D:(k + 1) * D] = p.R[g, k]
    pre = [x @ w + h @ Rfull[g] + b for g, (w, b) in
           enumerate(zip(np.split(p.W_x, 4, 1), np.split(p.b, 4), strict=True))]
    zt, it, ft, ot = pre
    logf = ft if exp_forget else np.log(_sig(ft))
    m_new = np.maximum(logf + m, it)
    i_ = np.exp(it - m_new)
    f_ = np.exp(logf + m - m_new)
    c = f_ * c + i_ * np.tanh(zt)
    n = f_ * n + i_
    h = _sig(ot) * c / n
    return (c, n, m_new, h), h


def np_lnlstm(p, carry, x):  # Ba et al. eqs. 20-22
    c, h = carry
    z = _ln(h @ p.W_h, p.gain_h) + _ln(x @ p.W_x, p.gain_x) + p.b
    i, f, g, o = np.split(z, 4, -1)
    c = _sig(f) * c + _sig(i) * np.tanh(g)
    h = _sig(o) * np.tanh(_ln(c, p.gain_c, p.bias_c))
    return (c, h), h


def np_rglru(p, h, x, c=8.0):  # De et al. 2024 eqs. 1-4
    r = _sig(x @ p.W_a + p.b_a)
    i = _sig(x @ p.W_i + p.b_i)
    a = _sig(p.Lambda) ** (c * r)
    h = a * h + np.sqrt(1 - a**2) * (i * (x @ p.W_u))
    return h, h


def np_s6(p, h, x):  # Gu & Dao 2023, Algorithm 2 with ZOH for A and Euler for B
    Hc, N = p.A_log.shape
    u = x @ p.W_in
    delta = _softplus(u @ p.W_dt + p.b_dt)
    Bt, Ct = u @ p.W_B, u @ p.W_C
    A = -np.exp(p.A_log)
    hs = h.reshape(-1, Hc, N)
    out_h = np.empty_like(hs)
    y = np.empty((hs.shape[0], Hc))
    for b in range(hs.shape[0]):
        for d in range(Hc):
            for k in range(N):
                out_h[b, d, k] = (np.exp(delta[b, d] * A[d, k]) * hs[b, d, k]
                                  + delta[b, d] * Bt[b, k] * u[b, d])
            y[b, d] = np.dot(Ct[b], out_h[b, d]) + p.D[d] * u[b, d]
    return out_h.reshape(h.shape), y


# name -> (factory, numpy oracle)
ORACLES = {
    "indrnn": (rnnlab.indrnn, np_indrnn),
    "indrnn-clip": (functools.partial(rnnlab.indrnn, recurrent_max=0.5),
                    functools.partial(np_indrnn, u_max=0.5)),
    "indrnn-tanh": (functools.partial(rnnlab.indrnn, nonlinearity="tanh"),
                    lambda p, h, x: (np.tanh(x @ p.W_x + p.u * h + p.b),) * 2),
    "antisymmetric": (rnnlab.antisymmetric, np_antisymmetric),
    "antisymmetric-gated": (functools.partial(rnnlab.antisymmetric, gated=True),
                            functools.partial(np_antisymmetric, gated=True)),
    "antisymmetric-eps1": (functools.partial(rnnlab.antisymmetric, epsilon=1.0, gamma=0.5),
                           functools.partial(np_antisymmetric, eps=1.0, gamma=0.5)),
    "cornn": (rnnlab.cornn, np_cornn),
    "cornn-fast": (functools.partial(rnnlab.cornn, dt=0.5, gamma=1.0, epsilon=0.3),
                   functools.partial(np_cornn, dt=0.5, gamma=1.0, eps=0.3)),
    "lem": (rnnlab.lem, np_lem),
    "lem-dt0.3": (functools.partial(rnnlab.lem, dt=0.3), functools.partial(np_lem, dt=0.3)),
    "lipschitz": (rnnlab.lipschitz, np_lipschitz),
    "lipschitz-b0.2": (functools.partial(rnnlab.lipschitz, beta=0.2, epsilon=0.5,
                                         recurrent_std=1.0),
                       functools.partial(np_lipschitz, beta=0.2, eps=0.5)),
    "urnn": (rnnlab.urnn, np_urnn),
    "urnn-seed3": (functools.partial(rnnlab.urnn, permutation_seed=3, bias_scale=0.5),
                   functools.partial(np_urnn, seed=3)),
    "slstm": (rnnlab.slstm, np_slstm),
    "slstm-heads-exp": (functools.partial(rnnlab.slstm, num_heads=2, forget_gate="exp"),
                        functools.partial(np_slstm, exp_forget=True)),
    "lnlstm": (rnnlab.lnlstm, np_lnlstm),
    "rglru": (rnnlab.rglru, np_rglru),
    "s6": (functools.partial(rnnlab.s6, state_size=3), np_s6),
}


def _np_tree(tree):
    def one(a):
        a = np.asarray(a)
        return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)

    tree = tuple(tree) if isinstance(tree, tuple) else tree
    return jax.tree.map(one, tree)


def _setup(name, dtype=jnp.float32, seed=0):
    k_params, k_xs, k_carry = jax.random.split(jax.random.key(seed), 3)
    cell = ORACLES[name][0](H, param_dtype=dtype)
    params = cell.init(k_params, F)
    # Non-zero biases and gains off 1, so that every parameter's placement is tested.
    params = jax.tree.map(
        lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), params)
    xs = jax.random.normal(k_xs, (T, B, F), dtype)
    carry = random_carry(cell, params, (B,), k_carry)
    if name.startswith("slstm"):  # n > 0 is the state's invariant after the first step
        carry = carry._replace(n=jnp.abs(carry.n) + 0.5)
    return cell, params, xs, carry


@pytest.mark.parametrize("name", ORACLES)
def test_step_matches_paper_equations(name):
    cell, params, xs, carry = _setup(name)
    oracle = ORACLES[name][1]
    p_np = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    c_np = _np_tree(carry)
    step = jax.jit(cell.step)
    for t in range(T):
        carry, y = step(params, carry, xs[t])
        c_np, y_np = oracle(p_np, c_np, np.asarray(xs[t], np.float64))
        close(_np_tree(y), y_np, tol=2e-5)
    close(_np_tree(carry), c_np, tol=2e-5)


@pytest.mark.slow  # the registered entries get this in tests/test_cells.py
@pytest.mark.parametrize("name", [n for n in ORACLES if n not in rnnlab.registry.names()])
def test_variants_scan_equals_python_loop(name):
    cell, params, xs, carry = _setup(name)
    got = jax.jit(lambda p, x, c: rnnlab.scan(cell, p, x, carry=c))(params, xs, carry)
    close(got, loop(cell, params, xs, carry))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slstm-heads-exp", "lipschitz-b0.2", "urnn-seed3"])
def test_variants_gradients_float64(name, x64):
    del x64
    cell, params, xs, carry = _setup(name, jnp.float64)

    def loss(params, xs):
        c, ys = rnnlab.scan(cell, params, xs, carry=carry)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.abs(c) ** 2) for c in jax.tree.leaves(c))

    check_grads(jax.jit(loss), (params, xs), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["rglru", pytest.param("s6", marks=pytest.mark.slow)])
def test_parallel_equals_sequential_values_and_gradients(name):
    cell, params, xs, carry = _setup(name)
    lengths = jnp.array([T, 2, 0])

    def run(mode):
        def loss(p, x, c):
            c, ys = rnnlab.scan(cell, p, x, carry=c, lengths=lengths, reverse=True, mode=mode)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(c**2), (c, ys)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, xs, carry)

    close(run("parallel"), run("sequential"), tol=1e-4)
    assert rnnlab.has_parallel_form(cell)


def _carry_jacobian_norms(cell, params, xs, h0):
    """||d h_k / d h_0||_2 for k = 1..T (one sequence)."""
    def final(h, k):
        return rnnlab.scan(cell, params, xs[:k], carry=h)[0]

    return [float(jnp.linalg.norm(jax.jacfwd(final)(h0, k), 2)) for k in range(1, T + 1)]


@pytest.mark.parametrize("name", ["indrnn", "indrnn-clip", "rglru",
                                  pytest.param("s6", marks=pytest.mark.slow)])
def test_decay_bound_holds(name):
    entry = rnnlab.registry.entry(name)
    cell = rnnlab.registry.get(name, H)
    params = cell.init(jax.random.key(1), F)
    if name.startswith("indrnn"):  # u beyond the clip; positive u and bias keep the ReLUs active
        params = params._replace(u=jnp.linspace(0.2, 1.3, H), b=params.b + 3.0)
    xs = jax.random.normal(jax.random.key(2), (T, F))
    h0 = random_carry(cell, params, (), jax.random.key(3))
    r = float(entry.decay_bound(params))
    norms = _carry_jacobian_norms(cell, params, xs, h0)
    for k, norm in enumerate(norms, start=1):
        assert norm <= r**k * (1 + 1e-5), (k, norm, r)
    if name.startswith("indrnn"):  # attained: every unit active, Jacobian diag(u~)^k
        close(np.array(norms), r ** np.arange(1, T + 1), tol=1e-4)


def test_indrnn_clip_and_init_range():
    cell = rnnlab.indrnn(64, recurrent_max=0.8, recurrent_min=0.5)
    p = cell.init(jax.random.key(0), F)
    assert jnp.all((p.u >= 0.5) & (p.u <= 0.8))
    # The clip holds in the step whatever the optimiser does to u.
    p = p._replace(u=jnp.full((64,), 3.0), b=jnp.full((64,), 1.0), W_x=jnp.zeros_like(p.W_x))
    h, _ = cell.step(p, jnp.ones(64), jnp.zeros(F))
    close(h, jnp.full(64, 1.8))


def test_urnn_recurrence_is_unitary():
    cell = rnnlab.urnn(8)
    p = cell.init(jax.random.key(0), F)
    from rnnlab.cells.urnn import unitary_apply

    perm = np.random.default_rng(0).permutation(8)
    W = jax.vmap(lambda e: unitary_apply(p, e, perm))(jnp.eye(8, dtype=jnp.complex64))
    close(W @ W.conj().T, jnp.eye(8, dtype=jnp.complex64), tol=1e-5)


def test_antisymmetric_and_lipschitz_structure():
    from rnnlab.cells.antisymmetric import recurrent_matrix
    from rnnlab.cells.lipschitz import structured

    M = jax.random.normal(jax.random.key(0), (H, H))
    A = recurrent_matrix(rnnlab.AntisymmetricParams(V=None, W=M, b=None), 0.0)
    close(A, -A.T)
    # beta = 1: antisymmetric minus gamma I; eigenvalues with real part -gamma.
    eig = np.linalg.eigvals(np.asarray(structured(M, 1.0, 0.3)))
    close(eig.real, np.full(H, -0.3), tol=1e-5)


def test_rglru_init_range_and_slstm_stabiliser_overflow():
    p = rnnlab.rglru(256, a_min=0.5, a_max=0.6).init(jax.random.key(0), F)
    ac = jax.nn.sigmoid(p.Lambda) ** 8
    assert jnp.all((ac >= 0.5 - 1e-5) & (ac <= 0.6 + 1e-5))
    # Input-gate pre-activations far beyond exp's float32 range: the stabiliser keeps h finite.
    cell = rnnlab.slstm(H)
    p = cell.init(jax.random.key(0), F)
    p = p._replace(b=p.b.at[H:2 * H].set(500.0))
    _, ys = rnnlab.scan(cell, p, jnp.ones((20, F)))
    assert jnp.all(jnp.isfinite(ys)) and jnp.all(jnp.abs(ys) <= 1)


@pytest.mark.parametrize("factory, kwargs, match", [
    (rnnlab.indrnn, dict(recurrent_max=0.0), "recurrent_max"),
    (rnnlab.indrnn, dict(recurrent_min=2.0), "recurrent_min"),
    (rnnlab.indrnn, dict(nonlinearity="gelu"), "nonlinearity"),
    (rnnlab.antisymmetric, dict(epsilon=0.0), "epsilon"),
    (rnnlab.antisymmetric, dict(gamma=-1.0), "gamma"),
    (rnnlab.cornn, dict(dt=0.0), "dt"),
    (rnnlab.lem, dict(dt=1.5), "dt"),
    (rnnlab.lipschitz, dict(beta=2.0), "beta"),
    (rnnlab.slstm, dict(num_heads=3), "num_heads"),
    (rnnlab.slstm, dict(forget_gate="relu"), "forget_gate"),
    (rnnlab.lnlstm, dict(eps=0.0), "eps"),
    (rnnlab.rglru, dict(a_min=0.9, a_max=0.5), "a_min"),
    (rnnlab.s6, dict(state_size=0), "state_size"),
    (rnnlab.s6, dict(dt_min=0.2), "dt_min"),
])
def test_bad_options_name_the_argument(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(H, **kwargs)
