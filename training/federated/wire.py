"""What travels between the Meerkat server and its clients, and the checks on it.

Downlink (server -> client, in a Flower ``FitIns`` / ``EvaluateIns``): the config holds
``round`` (the round to train, or the number of rounds to sync for an evaluation) and ``first``
(the first round the client has not applied yet); the tensors are, for every round ``j`` in
``[first, round)``, that round's projected gradients of all clients (float32 ``[clients,
local_steps]``, little-endian) and its active mask (uint8 ``[clients]``). With them the client
replays every client's path and averages, exactly as the server does (the virtual path), so no
weight ever travels.

Uplink (client -> server, in a ``FitRes``): one tensor, the client's ``local_steps`` float32
projected gradients; the metrics name the client and the round.

:func:`check_reply` is the server's gate: a reply for another round, from another client, of
the wrong length or with a non-finite value raises :class:`RefusedReply` and is never averaged.
"""

from __future__ import annotations

import numpy as np

SCALAR = np.dtype("<f4")


class RefusedReply(ValueError):
    """A client's reply that the server does not average in (the message says why)."""


def encode_rounds(gs: list[np.ndarray], active: list[np.ndarray]) -> list[bytes]:
    """Tensors of the catch-up log: per round ``gs [clients, steps]`` then ``active [clients]``."""
    tensors = []
    for g, a in zip(gs, active, strict=True):
        tensors.append(np.ascontiguousarray(g, SCALAR).tobytes())
        tensors.append(np.ascontiguousarray(a, np.uint8).tobytes())
    return tensors


def decode_rounds(
    tensors: list[bytes], *, clients: int, local_steps: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inverse of :func:`encode_rounds`: ``[(gs float32 [clients, steps], active bool
    [clients]), ...]``; raises ValueError on a malformed log."""
    if len(tensors) % 2:
        raise ValueError(f"a catch-up log has two tensors per round, got {len(tensors)}")
    out = []
    for g, a in zip(tensors[::2], tensors[1::2]):
        if len(g) != clients * local_steps * SCALAR.itemsize or len(a) != clients:
            raise ValueError(f"round tensors of {len(g)} and {len(a)} bytes do not fit")
        gs = np.frombuffer(g, SCALAR).reshape(clients, local_steps).astype(np.float32)
        out.append((gs, np.frombuffer(a, np.uint8).astype(bool)))
    return out


def encode_reply(gs: np.ndarray) -> list[bytes]:
    """The uplink tensor: ``gs`` float32 ``[local_steps]``."""
    return [np.ascontiguousarray(gs, SCALAR).tobytes()]


def check_reply(
    tensors: list[bytes],
    metrics: dict,
    *,
    client: int,
    round_: int,
    local_steps: int,
    max_abs: float | None = None,
) -> np.ndarray:
    """Validates a client's reply; returns its float32 ``[local_steps]`` projected gradients.

    Args:
      tensors: the reply's tensors (one expected).
      metrics: the reply's metrics (``client`` and ``round`` must match).
      client: the client the server sent this round's instruction to.
      round_: the current round.
      local_steps: the number of scalars expected.
      max_abs: optional bound on ``|g|`` (a lying client can send finite nonsense).

    Raises:
      RefusedReply: stale or future round, another client's index, wrong length, non-finite
        values or values beyond ``max_abs``.
    """
    if metrics.get("round") != round_:
        raise RefusedReply(f"reply for round {metrics.get('round')!r}, expected {round_}")
    if metrics.get("client") != client:
        raise RefusedReply(f"reply from client {metrics.get('client')!r}, expected {client}")
    if len(tensors) != 1:
        raise RefusedReply(f"expected one tensor, got {len(tensors)}")
    if len(tensors[0]) != local_steps * SCALAR.itemsize:
        raise RefusedReply(
            f"expected {local_steps} float32 scalars ({local_steps * 4} bytes), "
            f"got {len(tensors[0])} bytes"
        )
    gs = np.frombuffer(tensors[0], SCALAR).astype(np.float32)
    if not np.all(np.isfinite(gs)):
        raise RefusedReply("non-finite projected gradient")
    if max_abs is not None and np.max(np.abs(gs)) > max_abs:
        raise RefusedReply(f"|g| = {np.max(np.abs(gs)):.3g} exceeds {max_abs:g}")
    return gs
