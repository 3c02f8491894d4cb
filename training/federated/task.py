"""The federated task every process of a run rebuilds from the same :class:`TaskSpec`.

Server and clients never exchange data or weights: each process builds the model, the mask, the
pre-training gradient and every client's batches from the spec's seeds (a client then uses only
its own shard). The task is a small MLP classifier on Gaussian clusters (the same shape of
problem as the Meerkat tests), large enough to train and small enough to start in seconds; the
split is IID or Dirichlet non-IID (:func:`training.meerkat.dirichlet_split`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from training import meerkat
from training.masks import gradient_mask
from training.perturb import Perturbation, mask_leaves

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything that defines a run; the same spec must reach every process.

    Attributes:
      clients: K.
      rounds: federated rounds.
      local_steps: local ZO steps per client per round (the synchronisation period).
      batch: examples per local step.
      classes, dim, hidden: the cluster task and the MLP (``dim -> hidden -> classes``).
      examples: training examples (split among the clients); as many again are held out.
      split: ``"iid"`` or ``"dirichlet"``.
      alpha: Dirichlet concentration for ``split="dirichlet"``.
      density: mask density for ``mode="sparse"`` (Meerkat's static gradient mask).
      mode: ``"sparse"`` (Meerkat) or ``"full"`` (full-parameter federated ZO baseline).
      eps, learning_rate: MeZO's ε and the local SGD step.
      distribution: z distribution (``"normal"`` or ``"rademacher"``).
      seed: data, split and root key.
      early_stop: Meerkat-vp ``(window, rel_tol, min_rounds)`` or None.
      exchange: ``"scalars"`` (Meerkat: projected gradients up, every client's scalars down)
        or ``"dense"`` (the baseline a Flower user would otherwise run: each client sends its
        trained masked values as float32, the server averages them and sends them back).
    """

    clients: int = 2
    rounds: int = 2
    local_steps: int = 4
    batch: int = 16
    classes: int = 4
    dim: int = 8
    hidden: int = 16
    examples: int = 800
    split: str = "dirichlet"
    alpha: float = 0.3
    density: float = 0.3
    mode: str = "sparse"
    eps: float = 1e-3
    learning_rate: float = 0.5
    distribution: str = "normal"
    seed: int = 0
    early_stop: tuple[int, float, int] | None = None
    exchange: str = "scalars"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        fields = json.loads(text)
        if fields.get("early_stop") is not None:
            fields["early_stop"] = tuple(fields["early_stop"])
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown task fields {sorted(unknown)}")
        return cls(**fields)


@dataclasses.dataclass
class Task:
    """A built task.

    Attributes:
      spec: the :class:`TaskSpec`.
      params: initial parameters (float32 pytree).
      loss_fn: ``loss_fn(params, (x [b, dim], y [b])) -> scalar``.
      accuracy_fn: ``accuracy_fn(params, (x, y)) -> float``.
      mask: the trainable mask (None for ``mode="full"``).
      pretrain_grad: gradient of the loss on the pre-training sample (for GradIP).
      client_batches: ``(x [rounds, clients, steps, batch, dim], y [rounds, clients, steps,
        batch])``, client ``k``'s batches at ``[:, k]``.
      test: held-out ``(x, y)``.
      early_stop: the :class:`training.meerkat.EarlyStop` rule or None.
    """

    spec: TaskSpec
    params: PyTree
    loss_fn: Callable
    accuracy_fn: Callable
    mask: PyTree | None
    pretrain_grad: PyTree
    client_batches: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    early_stop: meerkat.EarlyStop | None
    _programs: meerkat.MeerkatPrograms | None = dataclasses.field(default=None, repr=False)

    @property
    def root_key(self) -> jax.Array:
        return jax.random.key(self.spec.seed)

    @property
    def perturbation(self) -> Perturbation:
        """The z of every client, the server and GradIP: the spec's distribution, the mask."""
        return Perturbation(self.spec.distribution, mask=self.mask)

    def programs(self) -> meerkat.MeerkatPrograms:
        """The jitted client/server programs (one client per process: ``sequential``), built
        once per task (the clients and server of one process share them)."""
        if self._programs is not None:
            return self._programs
        s = self.spec
        self._programs = meerkat.meerkat_programs(
            self.loss_fn,
            self.params,
            num_clients=s.clients,
            local_steps=s.local_steps,
            eps=s.eps,
            learning_rate=s.learning_rate,
            root_key=self.root_key,
            perturbation=self.perturbation,
            pretrain_grad=self.pretrain_grad,
            sequential_clients=True,
        )
        return self._programs

    def warm_up(self) -> None:
        """Compiles every program a process of the run will call (so round times measure
        rounds, not the first call's compile)."""
        programs, s = self.programs(), self.spec
        x, y = self.client_data(0)
        jax.block_until_ready(programs.client(self.params, (x[0], y[0]), 0, 0))
        gs = jnp.zeros((s.clients, s.local_steps), jnp.float32)
        active = jnp.ones((s.clients,), bool)
        jax.block_until_ready(programs.server(self.params, gs, 0, active))
        if programs.gradip is not None:
            jax.block_until_ready(programs.gradip(gs, 0))
        stacked = jax.tree.map(lambda p: jnp.stack([p] * s.clients), self.params)
        jax.block_until_ready(programs.average(stacked, active))

    def client_data(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``client``'s batches, ``[rounds, steps, batch, ...]``."""
        x, y = self.client_batches
        return x[:, client], y[:, client]

    def federated_mezo(self, **kw) -> meerkat.FederatedResult:
        """The in-process simulation of the same run (``sequential_clients=True``)."""
        s = self.spec
        return meerkat.federated_mezo(
            self.loss_fn,
            self.params,
            tuple(jnp.asarray(a) for a in self.client_batches),
            eps=s.eps,
            learning_rate=s.learning_rate,
            root_key=self.root_key,
            perturbation=self.perturbation,
            pretrain_grad=self.pretrain_grad,
            early_stop=self.early_stop,
            sequential_clients=True,
            **kw,
        )


def build_task(spec: TaskSpec) -> Task:
    """Builds :class:`Task` from ``spec``, deterministically (same spec, same bits)."""
    if spec.clients < 1 or spec.rounds < 1 or spec.local_steps < 1 or spec.batch < 1:
        raise ValueError(f"clients, rounds, local_steps and batch must be >= 1: {spec}")
    if spec.split not in ("iid", "dirichlet"):
        raise ValueError(f"split must be 'iid' or 'dirichlet', got {spec.split!r}")
    if spec.exchange not in ("scalars", "dense"):
        raise ValueError(f"exchange must be 'scalars' or 'dense', got {spec.exchange!r}")
    if spec.mode not in ("sparse", "full"):
        raise ValueError(f"mode must be 'sparse' or 'full', got {spec.mode!r}")
    rng = np.random.default_rng(spec.seed)
    centers = rng.normal(size=(spec.classes, spec.dim)) * 2.0
    n = spec.examples
    labels = rng.integers(0, spec.classes, size=2 * n).astype(np.int32)
    x = (centers[labels] + rng.normal(size=(2 * n, spec.dim))).astype(np.float32)
    train_x, train_y, test = x[:n], labels[:n], (x[n:], labels[n:])
    init = np.random.default_rng(spec.seed + 1)
    params = {
        "w1": jnp.asarray(init.normal(size=(spec.dim, spec.hidden)) / np.sqrt(spec.dim), "f4"),
        "b1": jnp.zeros((spec.hidden,), jnp.float32),
        "w2": jnp.asarray(init.normal(size=(spec.hidden, spec.classes)) * 0.1, "f4"),
        "b2": jnp.zeros((spec.classes,), jnp.float32),
    }

    def logits(p, xb):
        return jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p, batch):
        xb, yb = batch
        logp = jax.nn.log_softmax(logits(p, xb))
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    correct = jax.jit(lambda p, xb, yb: jnp.mean(jnp.argmax(logits(p, xb), -1) == yb))

    def accuracy_fn(p, data):
        return float(correct(p, jnp.asarray(data[0]), jnp.asarray(data[1])))

    if spec.split == "iid":
        order = np.random.default_rng(spec.seed + 2).permutation(n)
        parts = [np.sort(p) for p in np.array_split(order, spec.clients)]
    else:
        parts = meerkat.dirichlet_split(
            train_y, spec.clients, spec.alpha, seed=spec.seed, min_size=spec.batch
        )
    pick = np.random.default_rng(spec.seed + 3)
    shape = (spec.rounds, spec.local_steps, spec.batch)
    idx = np.stack([pick.choice(parts[k], shape) for k in range(spec.clients)], axis=1)
    pretrain = (jnp.asarray(train_x[:200]), jnp.asarray(train_y[:200]))
    mask = None
    if spec.mode == "sparse":
        mask = gradient_mask(loss_fn, params, [pretrain], density=spec.density)
    rule = None if spec.early_stop is None else meerkat.EarlyStop(*spec.early_stop)
    return Task(
        spec=spec,
        params=params,
        loss_fn=loss_fn,
        accuracy_fn=accuracy_fn,
        mask=mask,
        pretrain_grad=jax.grad(loss_fn)(params, pretrain),
        client_batches=(train_x[idx], train_y[idx]),
        test=test,
        early_stop=rule,
    )


def apply_round(programs: meerkat.MeerkatPrograms, params, gs, round_: int, active) -> PyTree:
    """The server step of a round, as server and clients run it: replay and average the active
    clients' paths; a round where nobody was averaged in leaves the parameters as they were."""
    active = np.asarray(active, bool)
    if not active.any():
        return params
    return programs.server(params, jnp.asarray(gs, jnp.float32), round_, jnp.asarray(active))


def masked_values(params: PyTree, mask: PyTree | None) -> np.ndarray:
    """The masked entries of ``params``, leaf by leaf, as one float32 vector (dense exchange)."""
    parts = []
    for leaf, m in zip(jax.tree.leaves(params), mask_leaves(mask, params)):
        leaf = np.asarray(leaf)
        if m is True:
            parts.append(leaf.reshape(-1))
        elif m is not False:
            parts.append(leaf[np.broadcast_to(np.asarray(m), leaf.shape)])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def merge_values(base: PyTree, mask: PyTree | None, values: np.ndarray) -> PyTree:
    """``base`` with its masked entries replaced by ``values`` (inverse of
    :func:`masked_values`; entries outside the mask are ``base``'s, bit for bit)."""
    leaves, treedef = jax.tree.flatten(base)
    out, at = [], 0
    for leaf, m in zip(leaves, mask_leaves(mask, base)):
        leaf = np.array(leaf)
        if m is True:
            leaf = values[at : at + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
            at += leaf.size
        elif m is not False:
            sel = np.broadcast_to(np.asarray(m), leaf.shape)
            n = int(sel.sum())
            leaf[sel] = values[at : at + n]
            at += n
        out.append(jnp.asarray(leaf))
    if at != len(values):
        raise ValueError(f"{len(values)} values for a mask of {at} entries")
    return jax.tree.unflatten(treedef, out)
