"""uRNN against a numpy transcription of the original Theano code's unitary product
(Arjovsky, Shah & Bengio; amarshah/complex_RNN, models.py: times_diag, do_fft,
times_reflection, vec_permutation, times_unitary, and the modReLU step), kept in its
convention: real arrays [Re | Im] of width 2N, the FFT divided by sqrt(N).

One sign convention differs and is mapped here: its times_reflection computes
h - 2 conj(v) (v^T h) / |v|^2, the reflection along conj(v), so rnnlab's (v_re, v_im) is
its (v_re, -v_im); its times_diag multiplies by exp(+i theta) as rnnlab does. Its modReLU
divides by |z| + 1e-5, a transcription option here (eps); rnnlab divides by |z| exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab


def times_diag(x, n, diag):
    d = np.concatenate([diag, -diag])
    swap = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    return x * np.cos(d) + (x * np.sin(d))[:, swap]


def do_fft(x, n, inverse=False):
    z = x[:, :n] + 1j * x[:, n:]
    z = (np.fft.ifft(z, axis=1) * n if inverse else np.fft.fft(z, axis=1)) / np.sqrt(n)
    return np.concatenate([z.real, z.imag], axis=1)


def times_reflection(x, n, reflection):
    re, im = x[:, :n], x[:, n:]
    r_re, r_im = reflection[:n], reflection[n:]
    vstarv = np.sum(reflection**2)
    a = np.outer(re @ r_re - im @ r_im, r_re)
    b = np.outer(re @ r_im + im @ r_re, r_im)
    c = np.outer(re @ r_re - im @ r_im, r_im)
    d = np.outer(re @ r_im + im @ r_re, r_re)
    out = x.copy()
    out[:, :n] -= 2.0 / vstarv * (a + b)
    out[:, n:] -= 2.0 / vstarv * (d - c)
    return out


def times_unitary(x, n, theta, reflection, permute):
    permute_long = np.concatenate([permute, permute + n])
    x = times_diag(x, n, theta[0])
    x = do_fft(x, n)
    x = times_reflection(x, n, reflection[0])
    x = x[:, permute_long]
    x = times_diag(x, n, theta[1])
    x = do_fft(x, n, inverse=True)
    x = times_reflection(x, n, reflection[1])
    return times_diag(x, n, theta[2])


def reference_urnn(p, xs, permute, eps):
    n = p["b"].shape[0]
    h = np.zeros((xs.shape[1], 2 * n))
    ys = []
    for x in xs:
        lin = times_unitary(h, n, p["theta"], p["reflection"], permute) + x @ p["V"]
        modulus = np.sqrt(lin[:, :n] ** 2 + lin[:, n:] ** 2)
        rescale = np.maximum(modulus + p["b"], 0.0) / (modulus + eps)
        h = lin * np.tile(rescale, [1, 2])
        ys.append(h @ p["U"] + p["b_o"])
    return np.stack(ys)


@pytest.mark.parametrize("seed", [0, 3])
def test_urnn_equals_the_original_theano_code(x64, seed):
    N, F, T, B = 6, 2, 5, 3
    cell = rnnlab.urnn(N, permutation_seed=seed, bias_scale=0.3, param_dtype=jnp.float64)
    p = cell.init(jax.random.key(seed), F)
    xs = jax.random.normal(jax.random.key(9), (T, B, F), jnp.float64)
    _, ys = rnnlab.scan(cell, p, xs)
    q = {k: np.asarray(v) for k, v in p._asdict().items()}
    ref = {"theta": q["theta"],
           "reflection": np.concatenate([q["v_re"], -q["v_im"]], axis=1),  # [2, 2N]
           "V": np.concatenate([q["V_re"], q["V_im"]], axis=1),
           "b": q["b"], "U": q["U"], "b_o": q["b_o"]}
    permute = np.random.default_rng(seed).permutation(N)  # how rnnlab draws its Pi
    want = reference_urnn(ref, np.asarray(xs), permute, eps=0.0)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-11, atol=1e-13)
    # The original's 1e-5 in the modReLU moves outputs by about 1e-5 relative, no more.
    loose = reference_urnn(ref, np.asarray(xs), permute, eps=1e-5)
    np.testing.assert_allclose(np.asarray(ys), loose, rtol=1e-3, atol=1e-4)
