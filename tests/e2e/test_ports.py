"""Ports and process names as an operator meets them (issue 10, item 10): `slotlock dev` stops
with the failing service's log when a port is taken (it used to take another stack's page for its
own and print its address), a service on a taken port refuses to start in one line, a replica's
workers share their port with nobody else, and every service is named in `ps`."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest

from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.system import System, create_database, drop_database
from tests.support import SECURE_ENV

PYTHON = sys.executable
HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(150)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLOCK_")}
    return {**env, **extra}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


@pytest.fixture
def grpc_holder() -> Iterator[int]:
    """A port held by a gRPC server with grpcio's defaults (SO_REUSEPORT on), as another stack
    or an older slotlock would hold it."""
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    yield port
    server.stop(0)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"another stack's page")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def page_holder() -> Iterator[int]:
    """A port answering 200 to every GET: another stack's gateway, /livez included."""
    server = http.server.ThreadingHTTPServer((HOST, 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def title_of(process: psutil.Process) -> str:
    """What `ps` shows for it (setproctitle pads the rest of the old command line)."""
    return " ".join(process.cmdline()).strip()


def one_line(stderr: str, prefix: str) -> str:
    """The service's own line (grpc's C core may log its bind failure too)."""
    (line,) = [line for line in stderr.splitlines() if line.startswith(prefix)]
    return line


def test_availability_service_on_a_taken_port_refuses_in_one_line(grpc_holder: int) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "availability_service"],
        env=clean_env(**SECURE_ENV, SLOTLOCK_AVAILABILITY_PORT=str(grpc_holder)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr, "slotlock-availability:")
    assert f"cannot listen on {HOST}:{grpc_holder}: Address already in use" in line


def test_reservation_workers_refuse_a_port_someone_else_shares(grpc_holder: int) -> None:
    # The holder has SO_REUSEPORT on: workers of this user could have joined it silently.
    done = subprocess.run(
        [PYTHON, "-m", "reservation_service"],
        env=clean_env(
            **SECURE_ENV, SLOTLOCK_WORKERS="2", SLOTLOCK_RESERVATION_PORT=str(grpc_holder)
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr, "slotlock-reservation:")
    assert f"cannot listen on {HOST}:{grpc_holder}: Address already in use" in line


def test_services_carry_readable_names_and_a_second_replica_refuses(
    stack: DevStack, feed: Feed, tmp_path: Path
) -> None:
    with System(
        stack,
        feed,
        log_dir=tmp_path / "logs",
        gateway=True,
        extra_env={"SLOTLOCK_WORKERS": "2"},
    ) as system:
        ports = {name: system.service(name).port for name in system.services}
        titles: dict[str, str] = {}
        worker_titles: list[str] = []
        for name in ("reservation", "availability", "gateway"):
            service = system.service(name)
            assert service.process.listens_on(service.port)
            process = psutil.Process(service.process.pid)
            titles[name] = title_of(process)
            if name == "reservation":
                workers = process.children(recursive=True)
                worker_titles = sorted(title_of(worker) for worker in workers)
        port = ports["reservation"]
        assert titles["reservation"] == f"slotlock-reservation 2 workers :{port}"
        assert [t for t in worker_titles if t.startswith("slotlock-")] == [
            f"slotlock-reservation worker 1/2 :{port}",
            f"slotlock-reservation worker 2/2 :{port}",
        ]
        # SLOTLOCK_WORKERS applies to every service and the gateway alike.
        assert titles["availability"] == f"slotlock-availability 2 workers :{ports['availability']}"
        assert titles["gateway"] == f"slotlock-gateway 2 workers :{ports['gateway']}"

        # A second replica (two workers too) on the first one's port does not join it.
        second = system.add_service("reservation", port=port)
        with pytest.raises(RuntimeError, match="Address already in use"):
            system.start_service(second, timeout=30)
        assert system.service(second).process.returncode == 1


def test_slotlock_dev_stops_with_the_log_tail_when_a_port_is_taken(
    stack: DevStack, page_holder: int, tmp_path: Path
) -> None:
    database = f"slotlock_dev_{uuid.uuid4().hex[:10]}"
    database_url = create_database(stack.database_url, database)
    tag = uuid.uuid4().hex[:10]
    ports = [free_port(), free_port()]
    out_path = tmp_path / "dev.out"
    started = time.monotonic()
    try:
        with out_path.open("w") as out:
            done = subprocess.run(
                [
                    PYTHON,
                    "-m",
                    "slotlock_cli.main",
                    "dev",
                    "--no-seed",
                    "--database-url",
                    database_url,
                    "--nats-url",
                    stack.nats_url,
                    "--reservation-port",
                    str(ports[0]),
                    "--availability-port",
                    str(ports[1]),
                    "--gateway-port",
                    str(page_holder),
                ],
                # The services inherit these: a stream of this test's own on the shared NATS.
                env=clean_env(
                    TMPDIR=str(tmp_path),
                    SLOTLOCK_STREAM=f"T_{tag}",
                    SLOTLOCK_SUBJECT_PREFIX=f"t{tag}.event",
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
    finally:
        drop_database(stack.database_url, database)
    printed = out_path.read_text()
    assert done.returncode == 1, printed
    assert time.monotonic() - started < 120
    assert "slotlock is running" not in printed
    assert "slotlock dev: could not start (logs in " in printed, printed
    assert "gateway exited with code" in printed, printed
    assert "address already in use" in printed.lower(), printed  # the gateway's own log line
    assert f"{page_holder}" in printed
    # Nothing left running: the other services' ports are free and no slotlock process remains.
    assert all(port_is_free(port) for port in ports), printed
    ours = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(f":{port}" in " ".join(p.info["cmdline"] or ()) for port in ports)
    ]
    assert not ours
