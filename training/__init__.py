"""Zeroth-order (MeZO) fine-tuning for JAX, on any pytree of float parameters.

The package knows nothing about how weights are stored: it perturbs and updates a pytree of
floating-point arrays (for a Flax NNX model, the ``nnx.Param`` state from ``nnx.split``) and
calls the user's ``loss_fn(params, batch)``.

- :func:`mezo_value_and_grad`, :func:`zo_gradient`: the two-point estimate and ``g·z``.
- :func:`mezo_step`: a jitted, donated, memory-lean step through any Optax chain
  (:func:`zo_sgd`, :func:`zo_adam`), optionally perturbing the parameters in place
  (``in_place=True``: the forward pass's memory, with a rounding drift); :func:`fit` runs it and
  logs ``(step, g)``; :func:`replay` rebuilds the trained parameters bit for bit from that log.
- Masks (:mod:`training.masks`): train only a sparse subset (by magnitude, at random, or by
  squared gradient on calibration data), :class:`MaskedEntries` (a mask's entries as small
  dense vectors over the frozen parameters) and the weight-decay mask.
- :func:`choose_learning_rate` (:mod:`training.tuning`): one run per learning rate, the best
  on a held-out score kept.
- :mod:`training.perturb`: the definition of z (Gaussian, or Rademacher with
  ``distribution="rademacher"``), regenerated from a key, leaf by leaf; :class:`Perturbation`
  (distribution, chunk size, mask) is that definition as one object, passed whole to the
  estimate, the update and the replay so that they cannot disagree.
- :mod:`training.meerkat`: federated sparse ZO (Meerkat) simulated with ``jax.vmap`` clients.
- :mod:`training.federated`: the same programs over Flower's gRPC transport, a server and K
  client processes (the ``federated`` extra; not imported here).
- :mod:`training.valuation` (LinFiK: exact, forward-only, ground truth), :mod:`training.alinfik`
  (the student), :mod:`training.rephrase` (OAT-Rephrase prompt and judge),
  :mod:`training.tasks.sentences` (the sentence task).
"""

from training import meerkat
from training.masks import (
    DEFAULT_DENSITY,
    MaskedEntries,
    decay_mask,
    gradient_mask,
    magnitude_mask,
    mask_count,
    mean_squared_gradient,
    random_mask,
    top_k_mask,
)
from training.mezo import (
    CPU_LEAN_COMPILER_OPTIONS,
    fit,
    lean_compiler_options,
    mezo_step,
    mezo_value_and_grad,
    replay,
    restore_outside_mask,
    step_key,
    zo_directional,
    zo_gradient,
    zo_update,
)
from training.optimizers import zo_adam, zo_sgd
from training.perturb import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DISTRIBUTION,
    DISTRIBUTIONS,
    Perturbation,
    perturb,
    perturbation,
)
from training.tuning import LearningRateChoice, choose_learning_rate

__all__ = [
    "CPU_LEAN_COMPILER_OPTIONS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DENSITY",
    "DEFAULT_DISTRIBUTION",
    "DISTRIBUTIONS",
    "LearningRateChoice",
    "MaskedEntries",
    "Perturbation",
    "choose_learning_rate",
    "decay_mask",
    "fit",
    "gradient_mask",
    "lean_compiler_options",
    "magnitude_mask",
    "meerkat",
    "mask_count",
    "mean_squared_gradient",
    "mezo_step",
    "mezo_value_and_grad",
    "perturb",
    "perturbation",
    "random_mask",
    "replay",
    "restore_outside_mask",
    "step_key",
    "top_k_mask",
    "zo_adam",
    "zo_directional",
    "zo_gradient",
    "zo_sgd",
    "zo_update",
]
