"""Server and client processes of one Meerkat federation, on one machine or several.

``python -m training.federated server`` and ``... client`` start one process each (on
separate machines: give the server a reachable ``--address`` and the clients ``--server``);
``... local`` starts a server and K clients on 127.0.0.1 and prints the rounds. Every process
rebuilds the task from the same spec flags; every wait is bounded (``--max-seconds`` kills a
process that outlives it) and :func:`run_local` kills whatever it started before returning.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from training.federated.task import TaskSpec, build_task


def add_spec_args(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TaskSpec` field (``--local-steps``, ``--split``...)."""
    for field in dataclasses.fields(TaskSpec):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "early_stop":
            parser.add_argument(flag, default=None, help="Meerkat-vp: WINDOW,REL_TOL,MIN_ROUNDS")
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)


def spec_from_args(args: argparse.Namespace) -> TaskSpec:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TaskSpec)}
    if kw["early_stop"] is not None:
        w, tol, m = kw["early_stop"].split(",")
        kw["early_stop"] = (int(w), float(tol), int(m))
    return TaskSpec(**kw)


def spec_to_argv(spec: TaskSpec) -> list[str]:
    argv = []
    for field in dataclasses.fields(TaskSpec):
        value = getattr(spec, field.name)
        if value is None:
            continue
        if field.name == "early_stop":
            value = ",".join(str(v) for v in value)
        argv += ["--" + field.name.replace("_", "-"), str(value)]
    return argv


def _watchdog(seconds: float) -> None:
    """Ends this process after ``seconds`` whatever it is doing (no run outlives its bound)."""
    timer = threading.Timer(seconds, lambda: os._exit(124))
    timer.daemon = True
    timer.start()


def _write_atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _certificates(args) -> tuple[bytes, bytes, bytes] | None:
    files = (args.ca_cert, args.cert, args.key)
    if not any(files):
        return None
    if not all(files):
        raise SystemExit("TLS needs --ca-cert, --cert and --key together")
    return tuple(Path(f).read_bytes() for f in files)


def wait_for_server(address: str, timeout: float) -> None:
    """Polls ``host:port`` until it accepts a TCP connection (at most ``timeout`` seconds), so
    a client started with its server connects at once instead of in Flower's retry backoff."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # let Flower's own retries report it
            time.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the launcher passes it to server and clients)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_main(args: argparse.Namespace) -> int:
    from training.federated.server import MeerkatStrategy, serve

    _watchdog(args.max_seconds)
    task = build_task(spec_from_args(args))
    task.warm_up()
    strategy = MeerkatStrategy(
        task,
        join_timeout=args.join_timeout,
        rejoin_timeout=args.rejoin_timeout,
        max_abs=args.max_abs,
    )

    def on_bound(address):
        if args.address_file:
            _write_atomic(Path(args.address_file), lambda tmp: Path(tmp).write_text(address))
        print(f"meerkat server listening on {address}", flush=True)

    t0 = time.perf_counter()
    serve(
        strategy,
        args.address,
        round_timeout=args.round_timeout,
        certificates=_certificates(args),
        on_bound=on_bound,
    )
    wall = time.perf_counter() - t0
    if args.out:
        save_result(Path(args.out), strategy, wall)
    for rec in strategy.records:
        print(
            f"round {rec.round}: active {rec.active.astype(int).tolist()} "
            f"refused {rec.refused} failures {rec.failures} "
            f"up {rec.uplink_bytes} B down {rec.downlink_bytes} B "
            f"{rec.seconds:.2f} s acc {rec.accuracy:.3f}",
            flush=True,
        )
    return 0


def client_main(args: argparse.Namespace) -> int:
    from flwr.client import start_client

    from training.federated.client import MeerkatClient

    _watchdog(args.max_seconds)
    lie = None
    if args.lie:
        kind, round_ = args.lie.split(":")
        lie = (kind, int(round_))
    task = build_task(spec_from_args(args))
    task.warm_up()
    client = MeerkatClient(task, args.index, lie=lie, crash_round=args.crash_round)
    root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    wait_for_server(args.server, args.connect_timeout)
    start_client(
        server_address=args.server,
        client=client,
        root_certificates=root,
        insecure=root is None,
        transport="grpc-bidi",
        max_wait_time=args.connect_timeout,
    )
    return 0


class FederationResult(NamedTuple):
    """What the server process of a run saved.

    Attributes:
      params: the final server parameters (numpy leaves in ``jax.tree.leaves`` order).
      projected_grads: float32 ``[rounds, clients, local_steps]`` as averaged (0: absent).
      active: bool ``[rounds, clients]``.
      rounds: per-round dicts (``uplink_bytes``, ``downlink_bytes``, ``seconds``, ``refused``,
        ``failures``, ``accuracy``, ``gradip``, ``sent``).
      evaluation: ``{client: {"accuracy", "in_sync"}}`` from the final evaluation.
      wall_seconds: the server's whole run.
    """

    params: list[np.ndarray]
    projected_grads: np.ndarray
    active: np.ndarray
    rounds: list[dict[str, Any]]
    evaluation: dict[int, dict[str, Any]]
    wall_seconds: float


def save_result(path: Path, strategy, wall: float) -> None:
    rounds = [
        {
            "round": r.round,
            "uplink_bytes": r.uplink_bytes,
            "downlink_bytes": r.downlink_bytes,
            "seconds": r.seconds,
            "refused": {str(k): v for k, v in r.refused.items()},
            "failures": r.failures,
            "accuracy": r.accuracy,
            "sent": r.sent.tolist(),
            "gradip": None if r.gradip is None else [float(x) for x in r.gradip],
        }
        for r in strategy.records
    ]
    meta = {
        "rounds": rounds,
        "evaluation": {str(k): v for k, v in strategy.evaluation.items()},
        "wall_seconds": wall,
    }
    K, T = strategy.K, strategy.width
    arrays = {f"param_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(strategy.params))}
    arrays["projected_grads"] = np.asarray(strategy.gs_log, np.float32).reshape(-1, K, T)
    arrays["active"] = np.asarray(strategy.active_log, bool).reshape(-1, K)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _write_atomic(path, write)


def load_result(path: Path) -> FederationResult:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        n = sum(1 for name in z.files if name.startswith("param_"))
        params = [z[f"param_{i}"] for i in range(n)]
        gs, active = z["projected_grads"], z["active"]
    return FederationResult(
        params=params,
        projected_grads=gs,
        active=active,
        rounds=meta["rounds"],
        evaluation={int(k): v for k, v in meta["evaluation"].items()},
        wall_seconds=meta["wall_seconds"],
    )


def run_in_threads(
    task,
    *,
    client_options: dict[int, dict] | None = None,
    rejoin: Sequence[int] = (),
    timeout: float = 120.0,
    **strategy_kw,
):
    """One federation in this process: the server and K clients in threads, talking through
    Flower's gRPC transport on 127.0.0.1 (one jax import and one compile for all of them).

    Args:
      task: the built task.
      client_options: keyword arguments of :class:`MeerkatClient` per client index.
      rejoin: clients to start again, as new clients from round 0, once their first run ends
        (crashed: ``client_options={k: {"crash_round": r, "crash": "raise"}}``).
      timeout: bound on the run; raises RuntimeError past it.
      **strategy_kw: passed to :class:`MeerkatStrategy`.

    Returns:
      The :class:`MeerkatStrategy` after the run (``params``, ``records``, ``evaluation``).
    """
    from flwr.client import start_client

    from training.federated.client import MeerkatClient
    from training.federated.server import MeerkatStrategy, serve

    strategy = MeerkatStrategy(task, join_timeout=timeout, **strategy_kw)
    bound = threading.Event()
    address: list[str] = []
    errors: list[BaseException] = []

    def on_bound(addr):
        address.append(addr)
        bound.set()

    def server():
        try:
            serve(strategy, "127.0.0.1:0", round_timeout=timeout, on_bound=on_bound)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)
            bound.set()

    def client(k):
        kw = (client_options or {}).get(k, {})
        for attempt in range(1 + (k in rejoin)):
            with contextlib.suppress(RuntimeError):  # a crash="raise" client leaving
                start_client(
                    server_address=address[0],
                    client=MeerkatClient(task, k, **(kw if attempt == 0 else {})),
                    insecure=True,
                    transport="grpc-bidi",
                    max_wait_time=timeout,
                )

    threads = [threading.Thread(target=server, daemon=True)]
    threads[0].start()
    if not bound.wait(timeout) or errors:
        raise RuntimeError(f"server did not start: {errors}")
    for k in range(task.spec.clients):
        threads.append(threading.Thread(target=client, args=(k,), daemon=True))
        threads[-1].start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise RuntimeError(f"server failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"federation exceeded {timeout:.0f} s")
    return strategy


def _compilation_cache_env() -> dict[str, str]:
    """This process's persistent jax compilation cache settings, for its child processes
    (the server and every client compile the same programs: one compile serves them all)."""
    cache = getattr(jax.config, "jax_compilation_cache_dir", None)
    if not cache:
        return {}
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache)}
    for name in (
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    ):
        value = getattr(jax.config, name, None)
        if value is not None:
            env[name.upper()] = str(value)
    return env


def _module_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "training.federated", role]


def run_local(
    spec: TaskSpec,
    *,
    workdir: Path,
    client_args: dict[int, list[str]] | None = None,
    rejoin: Sequence[int] = (),
    timeout: float = 120.0,
    server_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log=None,
) -> FederationResult:
    """Runs a server and ``spec.clients`` client processes on 127.0.0.1; returns the result.

    Args:
      spec: the task.
      workdir: folder for the result and the processes' logs.
      client_args: extra flags per client index (e.g. ``["--crash-round", "1"]``).
      rejoin: clients to start again (plain) once their first process has exited.
      timeout: the whole federation's bound in seconds; every process is killed after it.
      server_args: extra server flags (``--rejoin-timeout 30``...).
      env: environment of the processes (default: this one's, telemetry off).
      log: called with each process's output file paths (debugging).

    Raises:
      RuntimeError: the server failed or the run exceeded ``timeout`` (logs in ``workdir``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.npz"
    out.unlink(missing_ok=True)
    env = dict(os.environ if env is None else env)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    root = str(Path(__file__).resolve().parents[2])  # the folder holding `training`
    env.update(_compilation_cache_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    bound = ["--max-seconds", str(timeout)]
    spec_argv = spec_to_argv(spec)
    procs: list[subprocess.Popen] = []
    files = []
    deadline = time.monotonic() + timeout

    def start(name, argv):
        f = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in finally)
        files.append(f)
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    def remaining():
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"federation exceeded {timeout:.0f} s; logs in {workdir}")
        return left

    try:
        address = f"127.0.0.1:{free_port()}"
        server = start(
            "server",
            _module_argv("server")
            + spec_argv
            + bound
            + ["--address", address, "--out", str(out), *server_args],
        )
        clients = {}
        for k in range(spec.clients):  # started with the server: they wait for its port
            argv = _module_argv("client") + spec_argv + bound + ["--server", address]
            argv += ["--index", str(k), *(client_args or {}).get(k, [])]
            clients[k] = start(f"client{k}", argv)
        pending = set(rejoin)
        while server.poll() is None:
            for k in list(pending):
                if clients[k].poll() is not None:
                    argv = _module_argv("client") + spec_argv + bound
                    argv += ["--server", address, "--index", str(k)]
                    clients[k] = start(f"client{k}-rejoined", argv)
                    pending.discard(k)
            time.sleep(0.05)
            remaining()
        if server.returncode != 0:
            raise RuntimeError(f"server exited with {server.returncode}; see {workdir}")
        for p in procs:  # clients leave when the server disconnects them
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=min(10.0, max(0.1, deadline - time.monotonic())))
        return load_result(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        for f in files:
            f.close()
        if log is not None:
            log(sorted(workdir.glob("*.log")))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.federated",
        description="Meerkat federated ZO fine-tuning over Flower (gRPC).",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_spec_args(common)
    common.add_argument("--max-seconds", type=float, default=3600.0, help="hard bound")
    common.add_argument("--ca-cert", help="TLS: CA certificate (PEM)")
    s = sub.add_parser("server", parents=[common], help="run the Flower server")
    s.add_argument("--address", default="127.0.0.1:8080", help="host:port to bind (port 0: any)")
    s.add_argument("--address-file", help="write the bound host:port here")
    s.add_argument("--out", help="save the result (.npz) here")
    s.add_argument("--cert", help="TLS: server certificate (PEM)")
    s.add_argument("--key", help="TLS: server private key (PEM)")
    s.add_argument("--join-timeout", type=float, default=120.0)
    s.add_argument("--rejoin-timeout", type=float, default=0.0)
    s.add_argument("--round-timeout", type=float, default=300.0)
    s.add_argument("--max-abs", type=float, default=None, help="refuse |g| above this")
    c = sub.add_parser("client", parents=[common], help="run one Flower client")
    c.add_argument("--server", required=True, help="the server's host:port")
    c.add_argument("--index", type=int, required=True, help="this client's number k")
    c.add_argument("--connect-timeout", type=float, default=60.0)
    c.add_argument("--lie", help="testing: KIND:ROUND with KIND in nan, length, stale")
    c.add_argument("--crash-round", type=int, default=None, help="testing: die in this round")
    loc = sub.add_parser("local", parents=[common], help="server + K clients on 127.0.0.1")
    loc.add_argument("--workdir", default=None, help="logs and result (default: a temp dir)")
    loc.add_argument("--crash", default=None, help="CLIENT:ROUND: kill that client mid-round")
    loc.add_argument("--rejoin", action="store_true", help="restart the crashed client")
    loc.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def local_main(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    client_args, rejoin, server_args = {}, (), []
    if args.crash:
        k, r = (int(v) for v in args.crash.split(":"))
        client_args[k] = ["--crash-round", str(r)]
        if args.rejoin:
            rejoin, server_args = (k,), ["--rejoin-timeout", "60"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="meerkat-flower-"))
    result = run_local(
        spec,
        workdir=workdir,
        client_args=client_args,
        rejoin=rejoin,
        timeout=args.timeout,
        server_args=server_args,
    )
    arithmetic = 4 * spec.local_steps * spec.clients
    print(f"{spec.clients} clients, {spec.rounds} rounds over Flower gRPC ({workdir})")
    print("round | active | uplink B on the wire (arithmetic) | downlink B | s | accuracy")
    for r, rec in enumerate(result.rounds):
        print(
            f"{r} | {result.active[r].astype(int).tolist()} | {rec['uplink_bytes']} "
            f"({arithmetic}) | {rec['downlink_bytes']} | {rec['seconds']:.2f} | "
            f"{rec['accuracy']:.3f}" + (f" refused {rec['refused']}" if rec["refused"] else "")
        )
    print(f"clients in sync with the server: {result.evaluation}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return {"server": server_main, "client": client_main, "local": local_main}[args.role](args)
