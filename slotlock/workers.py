"""One replica as several processes sharing its port (``SLOTLOCK_WORKERS``), for the two
services and the gateway.

A Python process spends most of a call's CPU in gRPC itself (the reservation service's holds,
the availability service's writes to thousands of watch streams) or in the kernel's sends (the
gateway's Server-Sent Events), so one process per core is how a replica uses the machine. The
parent claims the port (:func:`slotlock.grpc_server.claim_port`: another replica or service on it
fails to start), starts the workers, and each binds the same port with SO_REUSEPORT; the kernel
spreads connections over them. Each worker is a whole service with its own health, its own
metrics endpoint (the metrics port + n; Prometheus adds them up) and its own drain; in ``ps`` the
parent reads ``<service> N workers :PORT`` and each worker ``<service> worker i/N :PORT``. SIGTERM
or SIGINT to the parent drains every worker; a worker that dies stops the others (the supervisor
restarts the replica, not half of it).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

from slotlock.grpc_server import claim_port
from slotlock.process_title import set_title
from slotlock.settings import Telemetry


class WorkerSettings(Protocol):
    """What the runner needs of a service's settings (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def workers(self) -> int: ...

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def drain_delay_s(self) -> float: ...

    @property
    def shutdown_grace_s(self) -> float: ...


S = TypeVar("S", bound=WorkerSettings)

# ``run_one(settings, title)``: run one worker until SIGTERM (a module-level function: the
# workers are spawned, so it is pickled by name).
RunOne = Callable[[S, str], None]


def run_workers(service: str, settings: S, run_one: RunOne[S]) -> int:
    """Start ``settings.workers`` processes each running ``run_one``; stop them all on
    SIGTERM/SIGINT or when one dies. The exit code says whether every worker ended cleanly."""
    try:  # the workers share the port with SO_REUSEPORT: no other replica may join them
        claim = claim_port(settings.host, settings.port)
    except OSError as error:
        print(f"{service}: cannot start: {error}", file=sys.stderr)
        return 1
    count = settings.workers
    set_title(service, settings.port, f"{count} workers")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker,
            args=(run_one, worker_settings(settings, n), f"worker {n + 1}/{count}"),
            name=f"{service}-worker-{n}",
        )
        for n in range(count)
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.start()
    while not stopping and all(worker.is_alive() for worker in workers):
        time.sleep(0.2)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:  # each drains: NOT_SERVING, then its calls in flight finish
        worker.join(settings.drain_delay_s + settings.shutdown_grace_s + 10)
    claim.close()
    return 0 if stopping and all(w.exitcode in (0, -signal.SIGTERM) for w in workers) else 1


def worker_settings(settings: S, n: int) -> S:
    """Worker ``n`` serves its own metrics on the metrics port + n (each process counts its
    own calls and streams; Prometheus adds them up)."""
    port = settings.telemetry.metrics_port
    if not port:
        return settings
    return replace(settings, telemetry=replace(settings.telemetry, metrics_port=port + n))


def _worker(run_one: RunOne[S], settings: S, title: str) -> None:
    if sys.platform == "linux":  # a worker never outlives its parent
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    run_one(settings, title)
