"""ALinFiK (arXiv 2503.01052): a small student that predicts LinFiK values from the sample alone.

Exact LinFiK (:func:`training.valuation.linfik`) costs a forward-mode pass of the LLM per
sample. ALinFiK computes it on a sampled subset only, trains a small regressor from a cheap
representation of each sample (here: any fixed feature vector, e.g. a MiniLM sentence
embedding) to those values, and scores the whole pool with the regressor; the scoring cost no
longer depends on the LLM's size.

The student is an MLP (ReLU hidden layers) trained with Adam on the mean squared error of
standardised targets (features and targets are standardised with the training subset's
statistics, kept in :class:`Student`). ``target="rank"`` regresses the targets' normal scores
(ranks mapped through the normal quantile) instead: LinFiK values are heavy-tailed and
selection only needs their order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.valuation import ranks

PyTree = Any


class Student(NamedTuple):
    """A trained student.

    Attributes:
      params: the MLP: a list of ``{"w": float32[d_in, d_out], "b": float32[d_out]}``.
      x_mean, x_std: float32 ``[D]`` feature standardisation.
      y_mean, y_std: target standardisation (predictions are returned in target units).
      losses: the training loss per step.
    """

    params: list[dict[str, jax.Array]]
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    losses: list[float]


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """He-initialised layers ``sizes[0] -> ... -> sizes[-1]``."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = jax.random.normal(jax.random.fold_in(key, i), (d_in, d_out)) * math.sqrt(2 / d_in)
        layers.append({"w": w.astype(jnp.float32), "b": jnp.zeros((d_out,), jnp.float32)})
    return layers


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The MLP on ``x`` ``[B, D]``: float32 ``[B]``."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return (x @ params[-1]["w"] + params[-1]["b"])[:, 0]


def normal_scores(y: np.ndarray) -> np.ndarray:
    """Ranks of ``y`` mapped to standard normal quantiles (Blom's offsets), float64 ``[N]``."""
    from statistics import NormalDist

    q = (ranks(y) + 1 - 0.375) / (len(y) + 0.25)
    inv = NormalDist().inv_cdf
    return np.array([inv(p) for p in q])


def train_student(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    hidden: Sequence[int] = (256,),
    steps: int = 500,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    batch: int | None = None,
    target: str = "value",
    seed: int = 0,
) -> Student:
    """Fits the student to ``(features, targets)``.

    Args:
      features: float ``[N, D]``, one row per sample (e.g. MiniLM embeddings).
      targets: float ``[N]``, the LinFiK values of those samples.
      hidden: hidden layer widths.
      steps: Adam steps.
      learning_rate, weight_decay: of ``optax.adamw``.
      batch: rows per step (default: all, full-batch).
      target: ``"value"`` (regress the standardised values) or ``"rank"`` (their normal scores).
      seed: initialisation and batch sampling.

    Returns:
      A :class:`Student`; :func:`predict` scores new samples.
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(targets, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need features [N, D] and targets [N], got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 training samples")
    if target not in ("value", "rank"):
        raise ValueError(f"target must be 'value' or 'rank', got {target!r}")
    if target == "rank":
        y = normal_scores(y)
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    y_mean, y_std = float(y.mean()), float(y.std() + 1e-12)
    xs = jnp.asarray((x - x_mean) / x_std)
    ys = jnp.asarray((y - y_mean) / y_std, jnp.float32)
    key = jax.random.key(seed)
    params = init_mlp(key, [x.shape[1], *hidden, 1])
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    n, b = x.shape[0], batch or x.shape[0]

    @jax.jit
    def step(params, state, k):
        idx = jax.random.choice(k, n, (b,), replace=False) if b < n else jnp.arange(n)

        def loss(p):
            return jnp.mean((mlp(p, xs[idx]) - ys[idx]) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state, losses = tx.init(params), []
    for t in range(steps):
        params, state, value = step(params, state, jax.random.fold_in(key, 1_000_000 + t))
        losses.append(float(value))
    if target == "rank":  # predictions are normal scores; keep them unitless
        y_mean, y_std = 0.0, 1.0
    return Student(params, x_mean, x_std, y_mean, y_std, losses)


def predict(student: Student, features: np.ndarray) -> np.ndarray:
    """The student's values for ``features`` ``[N, D]``: float64 ``[N]`` (in target units)."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[1] != student.x_mean.shape[0]:
        raise ValueError(f"need features [N, {student.x_mean.shape[0]}], got {x.shape}")
    out = jax.jit(mlp)(student.params, jnp.asarray((x - student.x_mean) / student.x_std))
    return np.asarray(out, np.float64) * student.y_std + student.y_mean


__all__ = ["Student", "init_mlp", "mlp", "normal_scores", "predict", "train_student"]
