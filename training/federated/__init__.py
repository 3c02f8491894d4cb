"""Meerkat federated zeroth-order fine-tuning on a real federated engine: Flower (``flwr``).

The in-process simulation :func:`training.meerkat.federated_mezo` and this package run the same
jitted programs (:func:`training.meerkat.meerkat_programs`); here a Flower server
(:class:`MeerkatStrategy`, :func:`serve`) and K client processes (:class:`MeerkatClient`,
:func:`run_client`) exchange seeds and scalars over Flower's gRPC transport, and the final model
equals the simulation's (``sequential_clients=True``) bit for bit.

- :mod:`training.federated.task`: the task every process rebuilds from one :class:`TaskSpec`.
- :mod:`training.federated.wire`: the message layout and the server's reply checks.
- :mod:`training.federated.client`, :mod:`training.federated.server`: the Flower client and
  strategy; :mod:`training.federated.launch`: server and client processes on one machine
  (``python -m training.federated local``).

Flower's telemetry is switched off (``FLWR_TELEMETRY_ENABLED=0``) before ``flwr`` is imported:
nothing leaves the machine but the federation's own traffic. Needs the ``federated`` extra.
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from training.federated.task import Task, TaskSpec, apply_round, build_task  # noqa: E402

__all__ = ["Task", "TaskSpec", "apply_round", "build_task"]
