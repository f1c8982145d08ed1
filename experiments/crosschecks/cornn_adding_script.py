"""The coRNN authors' adding-problem script, written again in plain JAX, without rnnlab.

A cross-check of rnnlab's own pipeline (``rnnlab.cornn`` + ``rnnlab.train`` +
``rnnlab.tasks.adding``) in the ``cornn-adding`` setting: if both train alike over many
seeds, a run that stays on the adding plateau is the setting's doing, not rnnlab's.

Transcribed from tk-rusch/coRNN ``adding/adding_task.py``, ``model.py`` and ``utils.py``:
one ``nn.Linear(2 + 2H, H)`` over ``cat(x, z, y)``, ``z += dt (tanh(.) - gamma y - eps z)``,
``y += dt z``, a ``Linear(H, 1)`` readout of the last ``y``, torch's default draws
(weights and biases uniform in +-1/sqrt(fan-in)), Adam, MSE, a fresh batch every step
and the test MSE on 1000 fresh sequences every 100 steps. The random streams are JAX's,
so a seed here is not the same draw as rnnlab's seed of the same number.

    python experiments/crosschecks/cornn_adding_script.py --seq-len 100 --steps 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import optax


def torch_linear(key, fan_in: int, fan_out: int):
    """nn.Linear's default draw: weight and bias uniform in +-1/sqrt(fan_in)."""
    k_w, k_b = jax.random.split(key)
    bound = fan_in**-0.5
    return (jax.random.uniform(k_w, (fan_in, fan_out), minval=-bound, maxval=bound),
            jax.random.uniform(k_b, (fan_out,), minval=-bound, maxval=bound))


def adding_batch(key, T: int, n: int):
    """utils.get_batch: values U[0, 1), one marker in [0, T/2), one in [T/2, T)."""
    k_v, k_1, k_2 = jax.random.split(key, 3)
    values = jax.random.uniform(k_v, (T, n))
    first = jax.random.randint(k_1, (n,), 0, T // 2)
    second = jax.random.randint(k_2, (n,), T // 2, T)
    markers = jax.nn.one_hot(first, T).T + jax.nn.one_hot(second, T).T
    return jnp.stack([values, markers], -1), (values * markers).sum(0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default, meaning in [("--seq-len", 100, "T"), ("--steps", 3000, "training steps"),
                                   ("--seed", 0, "PRNG seed"), ("--hidden-size", 128, "H")]:
        parser.add_argument(flag, type=int, default=default, metavar="INT",
                            help=f"{meaning} (default: {default})")
    parser.add_argument("--out", metavar="FILE", help="write the test MSEs to this JSON file")
    args = parser.parse_args(argv)
    # T >= 2: each half of the sequence holds one marker.
    for flag, least in (("seq_len", 2), ("steps", 1), ("hidden_size", 1)):
        if getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} must be at least {least}; "
                         f"received {getattr(args, flag)}")
    T, H, batch, lr, dt, gamma, eps = args.seq_len, args.hidden_size, 50, 0.02, 0.06, 66.0, 15.0

    key, k_cell, k_out = jax.random.split(jax.random.key(args.seed), 3)
    params = {"i2h": torch_linear(k_cell, 2 + 2 * H, H), "out": torch_linear(k_out, H, 1)}

    def model(p, x):  # x [T, B, 2] -> [B]
        W, b = p["i2h"]

        def step(carry, x_t):
            y, z = carry
            z = z + dt * (jnp.tanh(jnp.concatenate([x_t, z, y], 1) @ W + b) - gamma * y - eps * z)
            return (y + dt * z, z), None

        zeros = jnp.zeros((x.shape[1], H))
        (y, _), _ = jax.lax.scan(step, (zeros, zeros), x)
        return (y @ p["out"][0] + p["out"][1])[:, 0]

    def loss(p, x, target):
        return jnp.mean((model(p, x) - target) ** 2)

    optimizer = optax.adam(lr)

    @jax.jit
    def train_step(p, state, k):
        value, grads = jax.value_and_grad(loss)(p, *adding_batch(k, T, batch))
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    test = jax.jit(lambda p, k: loss(p, *adding_batch(k, T, 1000)))
    state, log, start = optimizer.init(params), [], time.time()
    for i in range(1, args.steps + 1):
        key, k_train, k_test = jax.random.split(key, 3)
        params, state, _ = train_step(params, state, k_train)
        if i % 100 == 0:
            log.append({"step": i, "test_mse": float(test(params, k_test))})
            print(f"step {i}: test MSE {log[-1]['test_mse']:.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
            json.dump({"config": vars(args), "log": log}, f, indent=1)
        os.replace(f.name, args.out)


if __name__ == "__main__":
    main()
