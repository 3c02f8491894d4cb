"""Optax chains for zeroth-order training: MeZO's SGD and ZO-Adam, built from optax parts.

Both take the ZO estimate ``g·z`` as the gradient. Everything else (schedules, clipping, decay)
is plain Optax, so any other chain works with :func:`training.mezo_step` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from training.masks import decay_mask

PyTree = Any


def _chain(
    core: optax.GradientTransformation,
    *,
    weight_decay: float,
    decay_mask_fn: PyTree | Callable[[PyTree], PyTree] | None,
    max_norm: float | None,
) -> optax.GradientTransformation:
    parts = []
    if max_norm is not None:
        parts.append(optax.clip_by_global_norm(max_norm))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask_fn))
    parts.append(core)
    return optax.chain(*parts)


def zo_sgd(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 0.0,
    decay_mask_fn: PyTree | Callable[[PyTree], PyTree] | None = decay_mask,
    max_norm: float | None = None,
    momentum: float | None = None,
) -> optax.GradientTransformation:
    """MeZO's update ``θ ← θ - η(g·z + λθ)``, with optional clipping and momentum.

    ``optax.chain([clip_by_global_norm(max_norm)], add_decayed_weights(λ, mask), sgd(η))``.

    Args:
      learning_rate: η, a float or an Optax schedule (MeZO full fine-tuning: 1e-6…1e-7).
      weight_decay: λ (0 disables the term).
      decay_mask_fn: which leaves decay; default :func:`training.decay_mask` (no decay on
        biases and norms). ``None`` decays everything.
      max_norm: clip ``g·z`` to this global norm first (``None``: no clipping).
      momentum: heavy-ball momentum for ``optax.sgd`` (``None``: plain SGD, no state).
    """
    return _chain(
        optax.sgd(learning_rate, momentum=momentum),
        weight_decay=weight_decay,
        decay_mask_fn=decay_mask_fn,
        max_norm=max_norm,
    )


def zo_adam(
    learning_rate: float | optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay_mask_fn: PyTree | Callable[[PyTree], PyTree] | None = decay_mask,
    max_norm: float | None = None,
) -> optax.GradientTransformation:
    """ZO-Adam: ``optax.adam`` on the estimate ``g·z`` (decoupled decay as in AdamW).

    Costs two parameter-sized states (first and second moments), unlike :func:`zo_sgd`.

    Args:
      learning_rate: a float or an Optax schedule.
      b1, b2, eps: Adam's constants (optax defaults).
      weight_decay: decoupled weight decay λ (applied after Adam's scaling, as AdamW).
      decay_mask_fn: which leaves decay (default: matrices only).
      max_norm: clip ``g·z`` to this global norm first.
    """
    parts = []
    if max_norm is not None:
        parts.append(optax.clip_by_global_norm(max_norm))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask_fn))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
