"""The Meerkat server on Flower: a strategy that assigns seeds, replays and averages.

:class:`MeerkatStrategy` is a ``flwr.server.strategy.Strategy`` run by Flower's own ``Server``
(rounds, client proxies, concurrent fit with failures collected, round timeout) over Flower's
gRPC transport (the bidirectional-stream Fleet API of ``flwr.server.start_server``, served here
by :func:`serve` so that the bytes of every message can be counted). Per round it

1. learns which client index each new connection holds (``get_properties``: ``client``,
   ``synced_round``; a restarted client reports 0 and is sent every round it missed),
2. sends every active client the round number and the scalars of the rounds it has not
   applied (:mod:`training.federated.wire`),
3. checks every reply (:func:`training.federated.wire.check_reply`: round, client, length,
   finite) and refuses bad ones, which count as absent,
4. replays every received client's path from its scalars and averages them
   (:attr:`training.meerkat.MeerkatPrograms.server`, the program ``federated_mezo`` runs),
   computes GradIP per client and applies Meerkat-vp early stopping
   (:func:`training.meerkat.converged`).

A client that fails mid-round (killed, disconnected, timed out) is absent from that round's
average and the round goes on with the others; the clients learn the round's active mask with
its scalars, so every replica stays bit-identical to the server's parameters.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    GetPropertiesIns,
    Parameters,
)
from flwr.proto.transport_pb2_grpc import add_FlowerServiceServicer_to_server
from flwr.server import Server, SimpleClientManager
from flwr.server.strategy import Strategy
from flwr.server.superlink.fleet.grpc_bidi.flower_service_servicer import (
    FlowerServiceServicer,
)
from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH, generic_create_grpc_server

from training import meerkat
from training.federated import wire
from training.federated.client import params_digest
from training.federated.task import Task, apply_round, masked_values, merge_values

GRPC_PREFIX_BYTES = 5  # gRPC's length-prefixed message framing: 1 flag byte + 4 length bytes


class ByteCounter:
    """Thread-safe totals of gRPC message bytes, per direction (protobuf + 5-byte prefix)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.uplink = self.downlink = 0
        self.uplink_messages = self.downlink_messages = 0

    def add(self, *, uplink: int = 0, downlink: int = 0) -> None:
        with self._lock:
            self.uplink += uplink
            self.downlink += downlink
            self.uplink_messages += uplink > 0
            self.downlink_messages += downlink > 0

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.uplink, self.downlink


class CountingServicer(FlowerServiceServicer):
    """Flower's bidirectional-stream servicer, counting the bytes of every message it moves."""

    def __init__(self, client_manager, counter: ByteCounter):
        super().__init__(client_manager)
        self.counter = counter

    def Join(self, request_iterator, context) -> Iterator:  # noqa: N802 (gRPC method name)
        counter = self.counter

        def counted(requests):
            for message in requests:
                counter.add(uplink=message.ByteSize() + GRPC_PREFIX_BYTES)
                yield message

        for message in super().Join(counted(request_iterator), context):
            counter.add(downlink=message.ByteSize() + GRPC_PREFIX_BYTES)
            yield message


@dataclasses.dataclass
class RoundRecord:
    """One round as the server saw it.

    Attributes:
      round: the round number (0-based).
      projected_grads: float32 ``[clients, local_steps]`` (zeros for absent clients).
      active: bool ``[clients]``, the clients averaged in.
      sent: bool ``[clients]``, the clients given an instruction.
      refused: ``{client: reason}`` for replies that failed :func:`wire.check_reply`.
      failures: replies lost to errors (killed client, timeout).
      gradip: float32 ``[clients]``.
      uplink_bytes, downlink_bytes: gRPC message bytes of the round, measured.
      seconds: wall time of the round (instructions out to average done).
      accuracy: held-out accuracy of the averaged parameters.
    """

    round: int
    projected_grads: np.ndarray
    active: np.ndarray
    sent: np.ndarray
    refused: dict[int, str]
    failures: int
    gradip: np.ndarray | None
    uplink_bytes: int
    downlink_bytes: int
    seconds: float
    accuracy: float


class MeerkatStrategy(Strategy):
    """Flower strategy of Meerkat.

    Args:
      task: the built task (same spec as the clients').
      counter: where :class:`CountingServicer` counts bytes (None: no byte counts).
      join_timeout: seconds to wait for all K clients before round 0.
      rejoin_timeout: seconds to wait, before each later round, for missing clients.
      request_timeout: timeout of the ``get_properties`` call to a new connection.
      max_abs: optional bound on ``|g|`` in replies.
    """

    def __init__(
        self,
        task: Task,
        *,
        counter: ByteCounter | None = None,
        join_timeout: float = 60.0,
        rejoin_timeout: float = 0.0,
        request_timeout: float = 30.0,
        max_abs: float | None = None,
    ):
        self.task, self.counter = task, counter
        self.programs = task.programs()
        self.K, self.T = self.programs.num_clients, self.programs.local_steps
        self.params = task.params
        self.dense = task.spec.exchange == "dense"
        self.width = len(masked_values(task.params, task.mask)) if self.dense else self.T
        self.join_timeout, self.rejoin_timeout = join_timeout, rejoin_timeout
        self.request_timeout, self.max_abs = request_timeout, max_abs
        self.enabled = np.ones(self.K, bool)  # Meerkat-vp: clients not stopped
        self.gs_log: list[np.ndarray] = []
        self.active_log: list[np.ndarray] = []
        self.history: list[np.ndarray] = []
        self.records: list[RoundRecord] = []
        self.evaluation: dict[int, dict] = {}
        self._index: dict[str, int] = {}  # proxy cid -> client index
        self._synced: dict[str, int] = {}  # proxy cid -> rounds the client has applied
        self._sent: dict[str, int] = {}
        self._start: tuple[float, int, int] = (0.0, 0, 0)

    # -- bookkeeping --------------------------------------------------------------------------

    def _bytes(self) -> tuple[int, int]:
        return (0, 0) if self.counter is None else self.counter.snapshot()

    def _discover(self, client_manager, server_round: int) -> dict[int, object]:
        """Maps the connected proxies to client indices (one proxy per index)."""
        proxies = client_manager.all()
        for cid in list(self._index):
            if cid not in proxies:  # disconnected
                del self._index[cid]
                self._synced.pop(cid, None)
        for cid, proxy in proxies.items():
            if cid in self._index:
                continue
            try:
                res = proxy.get_properties(
                    GetPropertiesIns({}), timeout=self.request_timeout, group_id=server_round
                )
                k, synced = int(res.properties["client"]), int(res.properties["synced_round"])
            except Exception:  # noqa: BLE001 (a broken newcomer is simply not used)
                continue
            if 0 <= k < self.K and k not in self._index.values() and synced <= len(self.gs_log):
                self._index[cid], self._synced[cid] = k, synced
        return {k: proxies[cid] for cid, k in self._index.items()}

    def _forget(self, cid: str) -> None:
        self._index.pop(cid, None)
        self._synced.pop(cid, None)

    def _catch_up(self, cid: str, upto: int) -> tuple[Parameters, dict]:
        first = self._synced[cid]
        if self.dense:  # the baseline: the current averaged masked values, whole
            tensors = [] if upto == 0 else [masked_values(self.params, self.task.mask).tobytes()]
            return Parameters(tensors, "meerkat-dense"), {"round": upto, "first": first}
        tensors = wire.encode_rounds(self.gs_log[first:upto], self.active_log[first:upto])
        return Parameters(tensors, "meerkat"), {"round": upto, "first": first}

    # -- Strategy interface -------------------------------------------------------------------

    def initialize_parameters(self, client_manager):
        return Parameters([], "meerkat")  # the model never travels

    def configure_fit(self, server_round, parameters, client_manager):
        r = server_round - 1
        if r != len(self.gs_log) or not self.enabled.any():
            return []  # all clients stopped (Meerkat-vp): nothing left to run
        self._start = (time.perf_counter(), *self._bytes())
        if r == 0:
            client_manager.wait_for(self.K, timeout=self.join_timeout)
        elif self.rejoin_timeout > 0:
            client_manager.wait_for(self.K, timeout=self.rejoin_timeout)
        by_index = self._discover(client_manager, server_round)
        self._sent = {}
        instructions = []
        for k, proxy in sorted(by_index.items()):
            if not self.enabled[k]:
                continue
            parameters, config = self._catch_up(proxy.cid, r)
            self._sent[proxy.cid] = k
            instructions.append((proxy, FitIns(parameters, config)))
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        r = server_round - 1
        gs = np.zeros((self.K, self.width), np.float32)
        received = np.zeros(self.K, bool)
        refused: dict[int, str] = {}
        answered = set()
        for proxy, res in results:
            answered.add(proxy.cid)
            k = self._sent.get(proxy.cid)
            if k is None:
                continue
            try:
                gs[k] = wire.check_reply(
                    res.parameters.tensors,
                    res.metrics,
                    client=k,
                    round_=r,
                    local_steps=self.width,
                    max_abs=self.max_abs,
                )
            except wire.RefusedReply as err:
                refused[k] = str(err) if not res.status.message else res.status.message
                self._forget(proxy.cid)  # re-learn its state from get_properties next round
                continue
            received[k] = True
            self._synced[proxy.cid] = r
        for cid in set(self._sent) - answered:
            self._forget(cid)  # failed: killed, disconnected or timed out
        sent = np.zeros(self.K, bool)
        sent[list(self._sent.values())] = True
        active = self.enabled & received
        gradip = None
        if self.dense:  # average the clients' own parameters (federated_mezo, no replay)
            if active.any():
                finals = [merge_values(self.task.params, self.task.mask, g) for g in gs]
                stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *finals)
                self.params = self.programs.average(stacked, jnp.asarray(active))
        else:
            if self.programs.gradip is not None:
                gradip = np.asarray(self.programs.gradip(jnp.asarray(gs), r))
            self.params = apply_round(self.programs, self.params, gs, r, active)
        self.gs_log.append(gs)
        self.active_log.append(active)
        up, down = self._bytes()
        t0, up0, down0 = self._start
        self.records.append(
            RoundRecord(
                round=r,
                projected_grads=gs,
                active=active,
                sent=sent,
                refused=refused,
                failures=len(failures),
                gradip=gradip,
                uplink_bytes=up - up0,
                downlink_bytes=down - down0,
                seconds=time.perf_counter() - t0,
                accuracy=self.task.accuracy_fn(self.params, self.task.test),
            )
        )
        if self.task.early_stop is not None and gradip is not None:
            self.history.append(np.where(self.enabled, gradip, np.nan))
            trajectory = np.nan_to_num(np.stack(self.history))
            self.enabled &= ~meerkat.converged(trajectory, self.task.early_stop)
        return None, {"received": int(received.sum()), "refused": len(refused)}

    def configure_evaluate(self, server_round, parameters, client_manager):
        """After the last round only: every connected client syncs and reports."""
        if server_round != self.task.spec.rounds:
            return []
        by_index = self._discover(client_manager, server_round)
        upto = len(self.gs_log)
        instructions = []
        for _, proxy in sorted(by_index.items()):
            parameters, config = self._catch_up(proxy.cid, upto)
            instructions.append((proxy, EvaluateIns(parameters, config)))
        return instructions

    def aggregate_evaluate(self, server_round, results, failures):
        digest = params_digest(self.params)
        for _, res in results:
            if "client" in res.metrics:
                k = int(res.metrics["client"])
                self.evaluation[k] = {
                    "accuracy": float(res.metrics["accuracy"]),
                    "in_sync": res.metrics["digest"] == digest,
                }
        return None, {"in_sync": sum(e["in_sync"] for e in self.evaluation.values())}

    def evaluate(self, server_round, parameters):
        return None


def serve(
    strategy: MeerkatStrategy,
    address: str = "127.0.0.1:0",
    *,
    round_timeout: float | None = 120.0,
    certificates: tuple[bytes, bytes, bytes] | None = None,
    on_bound=None,
) -> MeerkatStrategy:
    """Runs the federation on Flower's gRPC Fleet API at ``address``; returns ``strategy``.

    Args:
      strategy: the :class:`MeerkatStrategy` (its ``counter`` is filled by the servicer).
      address: ``host:port`` to bind (port 0: any free port).
      round_timeout: seconds a round waits for replies (late replies are failures).
      certificates: ``(ca_cert, server_cert, server_key)`` PEM bytes for TLS (Flower's
        ``start_server`` argument); None: insecure.
      on_bound: called with the bound ``host:port`` once the server listens (e.g. to tell the
        clients where to connect).
    """
    if strategy.counter is None:
        strategy.counter = ByteCounter()
    client_manager = SimpleClientManager()
    server = Server(client_manager=client_manager, strategy=strategy)
    servicer = CountingServicer(client_manager, strategy.counter)
    grpc_server = generic_create_grpc_server(
        servicer_and_add_fn=(servicer, add_FlowerServiceServicer_to_server),
        server_address=address,
        max_message_length=GRPC_MAX_MESSAGE_LENGTH,
        certificates=certificates,
    )
    grpc_server.start()
    try:
        if on_bound is not None:
            on_bound(grpc_server.bound_address)
        server.fit(num_rounds=strategy.task.spec.rounds, timeout=round_timeout)
        server.disconnect_all_clients(timeout=round_timeout)
    finally:
        grpc_server.stop(grace=1)
    return strategy
