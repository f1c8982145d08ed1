"""sLSTM against a numpy transcription of the xLSTM reference's vanilla cell (NX-AI/xlstm,
xlstm/blocks/slstm/src/vanilla/slstm.py: slstm_forward and slstm_forward_pointwise), in its
conventions: gates ordered (i, f, z, o), per-head recurrent kernels R [K, D, 4D], states
(y, c, n, m), the stabiliser's first step m = i_raw while n is all zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnlab

OURS_OF_REF = [1, 2, 0, 3]  # reference gate j (i, f, z, o) is our block OURS_OF_REF[j] (z, i, f, o)


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def reference_slstm(Wx, R, b, num_heads):
    """Wx [S, B, 4H] input projections; R [K, D, 4D]; b [4H]. Returns y [S, B, H]."""
    S, B, G = Wx.shape
    H = G // 4
    y, c, n, m = (np.zeros((B, H)) for _ in range(4))
    out = []
    for t in range(S):
        Ry = (y.reshape(B, num_heads, 1, -1) @ R[None]).reshape(B, num_heads, 4, -1)
        Ry = Ry.transpose(0, 2, 1, 3).reshape(B, -1)
        raw = Wx[t] + Ry + b
        iraw, fraw, zraw, oraw = np.moveaxis(raw.reshape(B, 4, -1), 1, 0)
        logfplusm = m + _logsigmoid(fraw)
        mnew = iraw if np.all(n == 0.0) else np.maximum(iraw, logfplusm)
        igate = np.minimum(np.exp(iraw - mnew), 1.0)
        fgate = np.minimum(np.exp(logfplusm - mnew), 1.0)
        c = fgate * c + igate * np.tanh(zraw)
        n = fgate * n + igate
        y = 1 / (1 + np.exp(-oraw)) * c / n
        m = mnew
        out.append(y)
    return np.stack(out)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_slstm_equals_the_xlstm_reference_cell(x64, num_heads):
    """Outputs agree at every step; the carries' c, n, m may differ by a common scale at the
    first step (the reference starts m at i_raw, rnnlab at max(log f, i_raw) from m = 0),
    which the stabiliser cancels in h = o c / n."""
    H, F, S, B = 4, 3, 9, 2
    cell = rnnlab.slstm(H, num_heads=num_heads, param_dtype=jnp.float64)
    p = cell.init(jax.random.key(0), F)
    p = p._replace(b=0.5 * jax.random.normal(jax.random.key(3), p.b.shape, jnp.float64))
    xs = jax.random.normal(jax.random.key(1), (S, B, F), jnp.float64)
    _, ys = rnnlab.scan(cell, p, xs)

    D = H // num_heads
    W = np.asarray(p.W_x).reshape(F, 4, H)[:, OURS_OF_REF].reshape(F, 4 * H)
    b = np.asarray(p.b).reshape(4, H)[OURS_OF_REF].reshape(4 * H)
    R_ours = np.asarray(p.R)  # [4 gates (z, i, f, o), K, D, D]
    R_ref = np.concatenate([R_ours[OURS_OF_REF[j]] for j in range(4)], axis=-1)  # [K, D, 4D]
    assert R_ref.shape == (num_heads, D, 4 * D)
    want = reference_slstm(np.asarray(xs) @ W, R_ref, b, num_heads)
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-14)
