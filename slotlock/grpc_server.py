"""gRPC server options both services use."""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

import grpc

from slotlock.auth import AuthInterceptor, AuthSettings
from slotlock.grpc_errors import ErrorInterceptor, InterceptorChain, RequestCheckInterceptor
from slotlock.settings import Reader, SettingsError
from slotlock.tls import ServerTLS

log = logging.getLogger(__name__)

SERVER_OPTIONS: list[tuple[str, int]] = [
    # Find dead peers (watchers above all) within ~30 s; clients may ping every 10 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_concurrent_streams", 100_000),
    # grpc.aio takes calls from the core one at a time; in a burst the core's queue of calls not
    # yet taken (soft 1000 / hard 3000 by default) overflows and it sheds new calls as CANCELLED,
    # before any handler runs. Seen with 5,000 watchers connecting at once, and with CreateHold at
    # 1,000/s over 20 events. Deadlines still bound how long a queued call waits.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


@dataclass(frozen=True)
class ServerSecurity:
    """Who may call a server and over what: the same settings for both services.

    The defaults authenticate nobody, and a server refuses to start with them: tests and
    ``slotlock dev`` configure a key; production reads ``SLOTLOCK_AUTH_*`` and ``SLOTLOCK_TLS_*``
    (``read``), where plain text and "no authentication" must each be asked for by name."""

    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: ServerTLS = field(default_factory=ServerTLS)
    reflection: bool = True  # grpcurl and friends can list and call the RPCs without protos

    @classmethod
    def read(cls, read: Reader) -> ServerSecurity:
        """Read and check; fails closed with one line unless TLS and authentication are set up
        or explicitly waived."""
        security = cls(
            auth=AuthSettings.read(read).check(),
            tls=ServerTLS.read(read),
            reflection=read.flag("SLOTLOCK_REFLECTION", True),
        )
        plaintext_ok = read.flag("SLOTLOCK_INSECURE_PLAINTEXT", False)
        if not security.tls.enabled and not plaintext_ok:
            raise SettingsError(
                "no TLS certificate: set SLOTLOCK_TLS_CERT_FILE and SLOTLOCK_TLS_KEY_FILE, or "
                "SLOTLOCK_INSECURE_PLAINTEXT=true where the network itself is private"
            )
        if security.auth.client_cert_roles and not security.tls.client_ca_file:
            raise SettingsError(
                "SLOTLOCK_TLS_CLIENT_ROLES needs SLOTLOCK_TLS_CLIENT_CA_FILE (client "
                "certificates are only checked with mutual TLS)"
            )
        return security


def create_server(security: ServerSecurity, *, reuse_port: bool = False) -> grpc.aio.Server:
    """A grpc.aio server with slotlock's options and interceptors, outermost first: every call
    observed and its errors mapped once (request id, metrics, span, one log line for a
    failure); the caller authenticated and checked against the role table; the request checked
    against the contract's bounds. Raises ``SettingsError`` when ``security`` authenticates
    nobody (fail closed).

    grpcio sets SO_REUSEPORT on Linux unless told not to, so a second service started on a taken
    port would bind "fine" and take half the calls: off unless ``reuse_port``, which only one
    replica's own workers use, behind the port their parent holds (:func:`claim_port`)."""
    return grpc.aio.server(
        options=[*SERVER_OPTIONS, ("grpc.so_reuseport", int(reuse_port))],
        interceptors=[
            InterceptorChain(
                ErrorInterceptor(),
                AuthInterceptor(security.auth, reflection=security.reflection),
                RequestCheckInterceptor(),
            )
        ],
    )


def add_port(server: grpc.aio.Server, host: str, port: int, security: ServerSecurity) -> int:
    """Listen on ``host:port`` with TLS when configured; returns the port bound. Raises OSError
    naming the address and the reason when it cannot be bound (grpc.aio says only "Failed to
    bind")."""
    address = f"{host}:{port}"
    try:
        if security.tls.enabled:
            return int(server.add_secure_port(address, security.tls.credentials()))
        log.warning(
            "serving plain text on %s: credentials and bookings cross the network unencrypted",
            address,
        )
        return int(server.add_insecure_port(address))
    except RuntimeError:
        _bind(host, port, reuse_address=True).close()  # as grpc binds, to learn why (OSError)
        raise OSError(errno.EADDRINUSE, f"cannot listen on {address}") from None


def claim_port(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` for one replica's workers: OSError if anything is bound there (another
    service, or another replica's claim), else a bound socket that only sockets of this user with
    SO_REUSEPORT (the workers' servers, ``reuse_port=True``) can share. Keep it open while the
    workers run. (Two replicas claiming in the same microsecond could still both succeed.)"""
    _bind(host, port, reuse_address=True).close()  # refused while anything else holds the port
    # Without SO_REUSEADDR, so that the check above fails for the next replica while we hold it.
    return shared_socket(host, port)


def shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT: one worker's share of the port its
    replica's parent claimed (:func:`claim_port`), for a server that takes a bound socket."""
    return _bind(host, port, reuse_port=True)


def _bind(
    host: str, port: int, *, reuse_address: bool = False, reuse_port: bool = False
) -> socket.socket:
    """A TCP socket bound to ``host:port``; OSError "cannot listen on <address>: <why>"."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock
