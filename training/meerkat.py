"""Meerkat-style federated sparse zeroth-order fine-tuning, simulated on one machine.

Meerkat (arXiv 2506.03337): all clients train the same static sparse mask with masked MeZO
steps and send back only their projected gradients, one float32 per local step; the server
knows every seed, so it replays each client's path (the "virtual path") and averages the
results every ``local_steps`` steps (the synchronisation frequency). GradIP, the inner product
between the pre-training gradient on the mask and a client's ZO update, tracks how far each
client drifts: it converges for extremely non-IID clients and oscillates for IID ones.

Simulation here (:func:`federated_mezo`):

- round ``r``, client ``k``, local step ``t`` uses ``key = fold_in(fold_in(fold_in(root_key, r),
  k), t)``; clients run in parallel (``jax.vmap`` over clients of a ``lax.scan`` over steps),
  each a masked ZO-SGD step ``θ ← θ - η·g·z`` from the round's server parameters;
  ``sequential_clients=True`` runs them one after another instead (``lax.map``: the memory of
  one client, for full-parameter runs of a large model);
- the server rebuilds every client's parameters from its ``g`` values alone
  (:func:`virtual_paths`) and averages them;
  ``server_replay=False`` averages the clients' own final parameters instead (the same numbers
  up to float32 rounding, at half the cost of a simulated round);
- communication is counted in bytes: uplink ``4·local_steps`` per client per round, downlink
  every client's scalars to every client (so each client can rebuild the average itself), next to
  what sending the masked weights densely would cost.

Meerkat-vp (``early_stop=EarlyStop(...)``): a client whose GradIP trajectory has converged stops
training and communicating; the server averages the active clients only.

The jitted client, server and GradIP programs come from :func:`meerkat_programs`, which
:mod:`training.federated` runs in a Flower server and its client processes: the same bits as
here, over the network.

Data: :func:`dirichlet_split` gives the usual non-IID label split (small ``alpha``: each client
sees few classes; large: close to IID).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.masks import mask_count
from training.mezo import mezo_value_and_grad, zo_directional, zo_update
from training.perturb import Perturbation, as_perturbation

PyTree = Any
Array = jax.Array

BYTES_PER_SCALAR = 4  # one float32 projected gradient per local step


def dirichlet_split(
    labels: np.ndarray, num_clients: int, alpha: float, *, seed: int = 0, min_size: int = 1
) -> list[np.ndarray]:
    """Non-IID split of example indices: per class, client shares ~ Dirichlet(alpha).

    Args:
      labels: integer class label per example, shape ``[n]``.
      num_clients: K.
      alpha: Dirichlet concentration (0.1: extremely non-IID; 100: about IID).
      seed: numpy seed (the split is deterministic given it).
      min_size: redraw until every client has at least this many examples.

    Returns:
      K sorted index arrays that partition ``range(n)``.
    """
    labels = np.asarray(labels)
    if num_clients < 1 or alpha <= 0:
        raise ValueError(f"need num_clients >= 1 and alpha > 0, got {num_clients}, {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, np.int64)) for p in parts]
    raise ValueError(f"could not give every client {min_size} examples; lower min_size")


def client_key(root_key: Array, round_: int | Array, client: int | Array, step: int | Array):
    """Key of a client's local step: ``fold_in(fold_in(fold_in(root_key, round), client), step)``."""
    return jax.random.fold_in(
        jax.random.fold_in(jax.random.fold_in(root_key, round_), client), step
    )


class EarlyStop(NamedTuple):
    """Meerkat-vp: stop a client once its GradIP trajectory has converged.

    GradIP settles for clients whose data is far from the pre-training distribution (extreme
    non-IID) and keeps oscillating for the others; a settled client has little left to add, so
    it stops training and communicating. Client ``k`` stops after round ``r`` (``r + 1 >=
    min_rounds``) when the last ``window`` GradIP values have a standard deviation of at most
    ``rel_tol`` times the mean magnitude of all its GradIP values so far.

    Attributes:
      window: GradIP values (rounds) the convergence test looks at.
      rel_tol: how flat the window must be, relative to the client's typical |GradIP|.
      min_rounds: rounds every client trains before it may stop.
    """

    window: int = 3
    rel_tol: float = 0.1
    min_rounds: int = 3


def converged(history: np.ndarray, rule: EarlyStop) -> np.ndarray:
    """Which clients' GradIP trajectories (``history``: float ``[rounds, clients]``) converged."""
    history = np.asarray(history, np.float64)
    rounds = history.shape[0]
    if rounds < max(rule.min_rounds, rule.window, 1):
        return np.zeros(history.shape[1], bool)
    recent = history[-rule.window :]
    scale = np.abs(history).mean(axis=0)
    return recent.std(axis=0) <= rule.rel_tol * np.maximum(scale, np.finfo(np.float32).tiny)


class RoundLog(NamedTuple):
    """What one federated round produced.

    Attributes:
      projected_grads: float32 ``[clients, local_steps]``, all that clients send.
      losses: float32 ``[clients, local_steps]``, the clients' training losses (not sent).
      gradip: float32 ``[clients]``, mean over local steps of ``g_t·⟨∇L_pre ⊙ mask, z_t⟩``
        (``None`` without a pre-training gradient).
      client_params: the clients' own parameters at the end of the round, stacked on a
        ``[clients]`` axis (only with ``keep_client_params=True``; for checking the replay).
      active: bool ``[clients]``, the clients that trained and communicated this round (all,
        unless Meerkat-vp stopped some).
    """

    projected_grads: np.ndarray
    losses: np.ndarray
    gradip: np.ndarray | None
    client_params: PyTree | None = None
    active: np.ndarray | None = None


class FederatedResult(NamedTuple):
    """Outcome of :func:`federated_mezo`.

    Attributes:
      params: the server parameters after the last round.
      rounds: one :class:`RoundLog` per round.
      uplink_bytes: total bytes clients sent (4 per local step per active client).
      downlink_bytes: total bytes the server sent (every active client's scalars to every
        active client).
      dense_bytes: what sending the masked weights (float32) both ways would have cost.
    """

    params: PyTree
    rounds: list[RoundLog]
    uplink_bytes: int
    downlink_bytes: int
    dense_bytes: int


class MeerkatPrograms(NamedTuple):
    """The jitted programs of one Meerkat configuration, shared by every transport.

    :func:`federated_mezo` runs them in one process; :mod:`training.federated` runs the same
    functions in a Flower server and its client processes, which is what makes both give the
    same bits (a client alone runs :attr:`client`, which equals one client of
    ``run_clients`` under ``sequential_clients=True``).

    Attributes:
      run_clients: ``(theta, batches [clients, steps, ...], round) -> (finals, gs, losses)``:
        every client's local round (``finals`` stacked on ``[clients]``, ``gs`` and ``losses``
        float32 ``[clients, steps]``).
      client: ``(theta, batches [steps, ...], round, client) -> (final, gs [steps],
        losses [steps])``: one client's local round.
      server: ``(theta, gs [clients, steps], round, active bool [clients]) -> theta``: replay
        every client's path from its scalars and average the active ones (the virtual path).
      gradip: ``(gs [clients, steps], round) -> float32 [clients]`` (None without
        ``pretrain_grad``).
      average: ``(finals, active) -> theta``: average of the clients' own parameters.
      num_clients: K.
      local_steps: steps per client per round.
    """

    run_clients: Callable
    client: Callable
    server: Callable
    gradip: Callable | None
    average: Callable
    num_clients: int
    local_steps: int


def meerkat_programs(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    *,
    num_clients: int,
    local_steps: int,
    eps: float,
    learning_rate: float,
    root_key: Array,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    pretrain_grad: PyTree | None = None,
    chunk_size: int | None = None,
    sequential_clients: bool = False,
    distribution: str | None = None,
) -> MeerkatPrograms:
    """Builds the jitted client, server and GradIP programs of :func:`federated_mezo`.

    Args are those of :func:`federated_mezo`; ``params`` only gives the optimizer state's
    structure (plain SGD: empty). Returns a :class:`MeerkatPrograms`.
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    grad_fn = mezo_value_and_grad(loss_fn, eps=eps, perturbation=pz)
    tx = optax.sgd(learning_rate)  # stateless: one init state serves every client and step
    update, sgd_state = zo_update(tx, perturbation=pz), tx.init(params)

    def local_path(theta, batches, round_, client):
        def body(p, xs):
            t, batch = xs
            key = client_key(root_key, round_, client, t)
            loss, g = grad_fn(p, batch, key)
            key, g = jax.lax.optimization_barrier((key, g))
            p, _ = update(p, sgd_state, g, key)
            return p, (g, loss)

        steps = jnp.arange(local_steps, dtype=jnp.uint32)
        return jax.lax.scan(body, theta, (steps, batches))

    def replay_path(theta, gs, round_, client):
        def body(p, xs):
            t, g = xs
            p, _ = update(p, sgd_state, g, client_key(root_key, round_, client, t))
            return p, None

        steps = jnp.arange(local_steps, dtype=jnp.uint32)
        return jax.lax.scan(body, theta, (steps, gs))[0]

    clients = jnp.arange(num_clients, dtype=jnp.uint32)

    def over_clients(fn, theta, per_client, round_):
        """``fn(theta, per_client[k], round_, k)`` for every client k, stacked on axis 0."""
        if sequential_clients:
            return jax.lax.map(lambda xs: fn(theta, xs[0], round_, xs[1]), (per_client, clients))
        return jax.vmap(fn, in_axes=(None, 0, None, 0))(theta, per_client, round_, clients)

    @jax.jit
    def run_clients(theta, batches, round_):
        final, (gs, losses) = over_clients(local_path, theta, batches, round_)
        return final, gs, losses

    @jax.jit
    def one_client(theta, batches, round_, client):
        final, (gs, losses) = local_path(
            theta, batches, jnp.asarray(round_), jnp.asarray(client, jnp.uint32)
        )
        return final, gs, losses

    def weighted_average(paths, active):
        weights = active.astype(jnp.float32) / jnp.maximum(active.sum(), 1)

        def average(x):
            w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
            return jnp.sum(x.astype(jnp.float32) * w, axis=0).astype(x.dtype)

        return jax.tree.map(average, paths)

    @jax.jit
    def server(theta, gs, round_, active):
        return weighted_average(over_clients(replay_path, theta, gs, round_), active)

    gradip = None
    if pretrain_grad is not None:

        @jax.jit
        def gradip(gs, round_):
            def per_client(g_row, client):
                keys = jax.vmap(lambda t: client_key(root_key, round_, client, t))(
                    jnp.arange(local_steps, dtype=jnp.uint32)
                )
                dots = jax.lax.map(
                    lambda k: zo_directional(pretrain_grad, k, perturbation=pz), keys
                )
                return jnp.mean(g_row * dots)

            return jax.vmap(per_client)(gs, clients)

    return MeerkatPrograms(
        run_clients=run_clients,
        client=one_client,
        server=server,
        gradip=gradip,
        average=jax.jit(weighted_average),
        num_clients=int(num_clients),
        local_steps=int(local_steps),
    )


def federated_mezo(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    client_batches: Any,
    *,
    eps: float,
    learning_rate: float,
    root_key: Array,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    pretrain_grad: PyTree | None = None,
    chunk_size: int | None = None,
    keep_client_params: bool = False,
    early_stop: EarlyStop | None = None,
    server_replay: bool = True,
    sequential_clients: bool = False,
    distribution: str | None = None,
    on_round: Callable[[int, PyTree, int], None] | None = None,
) -> FederatedResult:
    """Simulates Meerkat: K clients, masked ZO-SGD locally, scalar uplink, server replay.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: initial (pre-trained) parameters, shared by all clients.
      client_batches: a pytree of arrays with leading axes ``[rounds, clients, local_steps]``
        (then the batch's own axes): client ``k``'s batch for local step ``t`` of round ``r``.
      eps: perturbation scale ε.
      learning_rate: η of the local ZO-SGD steps.
      root_key: step keys come from :func:`client_key`.
      perturbation: the definition of z, a :class:`training.Perturbation`, whose ``mask`` is
        the static trainable mask (e.g. :func:`training.gradient_mask`); clients, server and
        GradIP all draw z from it.
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.
      pretrain_grad: ``jax.grad`` of the pre-training loss at ``params`` (for GradIP), or None.
      keep_client_params: store each round's client parameters in its :class:`RoundLog`.
      early_stop: Meerkat-vp; stopped clients neither train, send nor count in the average
        (needs ``pretrain_grad``).
      server_replay: rebuild each client's parameters from its scalars (the protocol). With
        False the simulation averages the clients' own final parameters instead: the same
        numbers up to float32 rounding (XLA compiles the vmapped client and replay scans
        differently; a few ulps) without a second pass over every client's z, which halves
        the cost of a full-parameter run. Communication is counted the same way.
      sequential_clients: run the clients one after another (``lax.map``) instead of side by
        side (``jax.vmap``): the same steps, with the temporaries of one client at a time (a
        full-parameter run of K clients under ``vmap`` holds K perturbed copies of the model).
      on_round: called after every round as ``on_round(round, server_params, bytes)`` with the
        bytes communicated so far (uplink + downlink), e.g. to trace accuracy against bytes.

    Returns:
      A :class:`FederatedResult`.
    """
    leading = {np.shape(x)[:3] for x in jax.tree.leaves(client_batches)}
    if len(leading) != 1 or len(next(iter(leading))) != 3:
        raise ValueError(f"client_batches leaves need [rounds, clients, steps, ...], got {leading}")
    num_rounds, num_clients, local_steps = next(iter(leading))
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    programs = meerkat_programs(
        loss_fn,
        params,
        num_clients=num_clients,
        local_steps=local_steps,
        eps=eps,
        learning_rate=learning_rate,
        root_key=root_key,
        perturbation=pz,
        pretrain_grad=pretrain_grad,
        sequential_clients=sequential_clients,
    )
    run_clients, server, gradip = programs.run_clients, programs.server, programs.gradip
    average_finals = programs.average

    if early_stop is not None and pretrain_grad is None:
        raise ValueError("early_stop (Meerkat-vp) needs pretrain_grad for GradIP")
    rounds, history = [], []
    active = np.ones(num_clients, bool)
    uplink = downlink = dense = 0
    for r in range(num_rounds):
        if not active.any():
            break
        batches_r = jax.tree.map(lambda x, r=r: x[r], client_batches)
        # Stopped clients are simulated with the others (vmap) but never sent or averaged.
        finals, gs, losses = run_clients(params, batches_r, r)  # only gs leave the clients
        gs = jnp.where(jnp.asarray(active)[:, None], gs, 0.0)
        ip = None if pretrain_grad is None else np.asarray(gradip(gs, r))
        if server_replay:
            params = server(params, gs, r, jnp.asarray(active))
        else:
            params = average_finals(finals, jnp.asarray(active))
        kept = finals if keep_client_params else None
        rounds.append(RoundLog(np.asarray(gs), np.asarray(losses), ip, kept, active.copy()))
        n_active = int(active.sum())
        uplink += BYTES_PER_SCALAR * local_steps * n_active
        downlink += BYTES_PER_SCALAR * local_steps * n_active * n_active
        dense += 2 * 4 * mask_count(pz.mask, params) * n_active
        if on_round is not None:
            on_round(r, params, uplink + downlink)
        if early_stop is not None:
            history.append(np.where(active, ip, np.nan))
            trajectory = np.stack(history)
            active &= ~converged(np.nan_to_num(trajectory), early_stop)

    return FederatedResult(
        params=params,
        rounds=rounds,
        uplink_bytes=uplink,
        downlink_bytes=downlink,
        dense_bytes=dense,
    )


def virtual_paths(
    params: PyTree,
    projected_grads: np.ndarray,
    *,
    round_: int,
    learning_rate: float,
    root_key: Array,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> PyTree:
    """The server's replay of one round: every client's parameters from its scalars alone.

    Args:
      params: the server parameters at the start of the round.
      projected_grads: ``[clients, local_steps]`` from :class:`RoundLog`.
      round_: the round number (part of the keys).
      learning_rate, root_key, perturbation (or mask, chunk_size, distribution): as in
        :func:`federated_mezo`.

    Returns:
      A pytree like ``params`` with a leading ``[clients]`` axis.
    """
    tx = optax.sgd(learning_rate)
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    update, sgd_state = zo_update(tx, perturbation=pz), tx.init(params)
    num_clients, local_steps = np.shape(projected_grads)

    def path(gs, client):
        def body(p, xs):
            t, g = xs
            p, _ = update(p, sgd_state, g, client_key(root_key, round_, client, t))
            return p, None

        return jax.lax.scan(body, params, (jnp.arange(local_steps, dtype=jnp.uint32), gs))[0]

    return jax.jit(jax.vmap(path))(
        jnp.asarray(projected_grads, jnp.float32), jnp.arange(num_clients, dtype=jnp.uint32)
    )
