"""A Meerkat client for Flower: its own data shard, the frozen base, scalars in and out.

The client holds the server parameters of the last round it synced to. A fit instruction brings
the rounds it missed (every client's projected gradients and the active mask per round, see
:mod:`training.federated.wire`); the client replays them with the server's own program
(:attr:`training.meerkat.MeerkatPrograms.server`, the virtual path), runs its ``local_steps``
masked MeZO steps on its batches of the round and returns only the projected gradients. A
client that restarts syncs from round 0 the same way (it reports ``synced_round`` in its
properties), so it rejoins bit for bit where the others are.
"""

from __future__ import annotations

import hashlib
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from flwr.client import Client
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    Status,
)

from training.federated import wire
from training.federated.task import Task, apply_round, masked_values, merge_values

LIES = ("nan", "length", "stale")


def params_digest(params) -> str:
    """sha256 of the parameters' bytes, leaf by leaf (equal digests: equal bits)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class MeerkatClient(Client):
    """Client ``index`` of a Meerkat run over Flower.

    Args:
      task: the built task (the same spec as the server's).
      index: this client's number k (its data shard and its step keys).
      lie: ``(kind, round)``: in that round send a malformed reply instead (``"nan"``: a NaN
        scalar, ``"length"``: one scalar too many, ``"stale"``: claim the previous round), to
        test the server's refusal.
      crash_round: crash in the middle of that round's fit (after the instruction came).
      crash: how: ``"kill"`` this process (SIGKILL), or ``"raise"`` a RuntimeError, which
        makes Flower's client drop the connection and return (a client thread in a test).
    """

    def __init__(
        self,
        task: Task,
        index: int,
        *,
        lie: tuple[str, int] | None = None,
        crash_round: int | None = None,
        crash: str = "kill",
    ):
        if not 0 <= index < task.spec.clients:
            raise ValueError(f"client index {index} not in [0, {task.spec.clients})")
        if lie is not None and lie[0] not in LIES:
            raise ValueError(f"lie must be one of {LIES}, got {lie[0]!r}")
        if crash not in ("kill", "raise"):
            raise ValueError(f"crash must be 'kill' or 'raise', got {crash!r}")
        self.task, self.index, self.lie = task, index, lie
        self.crash_round, self.crash = crash_round, crash
        self.programs = task.programs()
        x, y = task.client_data(index)
        self.batches = (jnp.asarray(x), jnp.asarray(y))
        self.params = task.params
        self.synced = 0  # rounds applied to self.params

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        return GetPropertiesRes(
            status=Status(Code.OK, ""),
            properties={"client": self.index, "synced_round": self.synced},
        )

    def _sync(self, config, tensors) -> None:
        first, upto = int(config["first"]), int(config["round"])
        if first != self.synced:
            raise ValueError(f"catch-up starts at round {first}, this client is at {self.synced}")
        rounds = wire.decode_rounds(
            tensors, clients=self.programs.num_clients, local_steps=self.programs.local_steps
        )
        if len(rounds) != upto - first:
            raise ValueError(f"catch-up to round {upto} from {first} has {len(rounds)} rounds")
        for j, (gs, active) in enumerate(rounds, start=first):
            self.params = apply_round(self.programs, self.params, gs, j, active)
        self.synced = upto

    def _sync_dense(self, config, tensors) -> None:
        """Dense baseline: the tensor (if any) is the averaged masked values of the last round."""
        if tensors:
            values = np.frombuffer(tensors[0], wire.SCALAR).astype(np.float32)
            self.params = merge_values(self.task.params, self.task.mask, values)
        self.synced = int(config["round"])

    def fit(self, ins: FitIns) -> FitRes:
        round_ = int(ins.config["round"])
        dense = self.task.spec.exchange == "dense"
        try:
            if dense:
                self._sync_dense(ins.config, ins.parameters.tensors)
            else:
                self._sync(ins.config, ins.parameters.tensors)
        except ValueError as err:  # out of sync: say so; the server refuses the reply
            return FitRes(Status(Code.OK, str(err)), Parameters([], "meerkat"), 0, {})
        batches = jax.tree.map(lambda a: a[round_], self.batches)
        if self.crash_round == round_:  # mid-round: after the instruction arrived
            if self.crash == "raise":
                raise RuntimeError(f"client {self.index} crashes in round {round_} (testing)")
            os.kill(os.getpid(), signal.SIGKILL)
        final, gs, losses = self.programs.client(self.params, batches, round_, self.index)
        gs = np.asarray(gs, np.float32)
        if dense:  # the baseline sends its trained masked values instead of the scalars
            gs = masked_values(final, self.task.mask)
        claimed = round_
        if self.lie is not None and self.lie[1] == round_:
            if self.lie[0] == "nan":
                gs = gs.copy()
                gs[0] = np.nan
            elif self.lie[0] == "length":
                gs = np.append(gs, np.float32(0.0))
            else:
                claimed = round_ - 1
        metrics = {"client": self.index, "round": claimed, "loss": float(np.mean(losses))}
        steps, batch = self.programs.local_steps, self.task.spec.batch
        return FitRes(
            Status(Code.OK, ""),
            Parameters(wire.encode_reply(gs), "meerkat"),
            steps * batch,
            metrics,
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """Syncs to the final round, then reports accuracy on the held-out set and a digest."""
        try:
            if self.task.spec.exchange == "dense":
                self._sync_dense(ins.config, ins.parameters.tensors)
            else:
                self._sync(ins.config, ins.parameters.tensors)
        except ValueError as err:
            return EvaluateRes(Status(Code.OK, str(err)), float("nan"), 0, {})
        x, y = self.task.test
        loss = float(self.task.loss_fn(self.params, (jnp.asarray(x), jnp.asarray(y))))
        metrics = {
            "client": self.index,
            "accuracy": self.task.accuracy_fn(self.params, self.task.test),
            "digest": params_digest(self.params),
        }
        return EvaluateRes(Status(Code.OK, ""), loss, len(y), metrics)
