"""Run slotlock services as real processes, the way operators deploy them, and wait until they
report SERVING. Used by `slotlock dev`, the benchmarks and the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slotlock.client import ClientSecurity, open_sync_channel

# Runs in the child after exec (never between fork and exec, where running Python in a process
# with gRPC threads can crash): ask Linux to SIGTERM the child when its parent dies, so a killed
# `slotlock dev` or test run never leaves services behind, then run the module as `python -m`.
_BOOTSTRAP = """
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)
module = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class ServiceProcess:
    """``python -m <module>`` with ``env`` added to this process's environment. It can be
    stopped and started again (same module, environment and log file, appended to)."""

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        *,
        name: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.module = module
        self.name = name or module
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ServiceProcess:
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), self.module],
            env={**os.environ, **self.env},
            stdout=self._log if self._log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
        )
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def listens_on(self, port: int) -> bool | None:
        """Whether this process or one of its children (a replica's workers) listens on TCP
        ``port``; None where that cannot be told (no Linux /proc)."""
        listening = _listening_inodes(port)
        if listening is None:
            return None
        return any(not listening.isdisjoint(_socket_inodes(pid)) for pid in _process_tree(self.pid))

    def _answer_is_ours(self, port: int) -> bool:
        """A ready answer counts only from our own process: another stack (or anything else)
        already on the port answers too, before our process has failed to bind it."""
        return self.listens_on(port) is not False

    def wait_serving(
        self, address: str, timeout: float = 30.0, security: ClientSecurity | None = None
    ) -> None:
        """Wait until the gRPC health service at ``address`` reports SERVING (health is open to
        every caller; ``security`` matters for its TLS) and the port is this process's."""
        port = int(address.rsplit(":", 1)[1])
        foreign = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited with code {self.returncode}")
            # A new channel per probe: one channel refused while the server starts sits in
            # reconnect backoff (1 s, then longer), which timed the client's backoff, not the
            # service (``slotlock bench rebuild`` reported ~1 s for a 0.35 s start).
            with (
                open_sync_channel(address, security) as channel,
                contextlib.suppress(grpc.RpcError),
            ):
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    if self._answer_is_ours(port):
                        return
                    foreign = True
            time.sleep(0.05)
        if foreign:
            raise TimeoutError(f"another process answers at {address}, not {self.name}")
        raise TimeoutError(f"{self.name} not SERVING at {address} after {timeout:.0f}s")

    def wait_http_ok(self, url: str, timeout: float = 30.0) -> None:
        """Wait until ``url`` answers 200 (the gateway's readiness: it has no gRPC health) from
        this process."""
        port = urllib.parse.urlsplit(url).port or 80
        foreign = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited with code {self.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    if self._answer_is_ours(port):
                        return
                    foreign = True
            time.sleep(0.05)
        if foreign:
            raise TimeoutError(f"another process answers {url}, not {self.name}")
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout:.0f}s")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of this process's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


# -- who listens on a port (Linux /proc; no psutil at run time) ----------------------------------


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port`` (IPv4 and IPv6); None without /proc."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes if found_table else None


def _process_tree(pid: int) -> Iterator[int]:
    yield pid
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                yield from _process_tree(int(child))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes
