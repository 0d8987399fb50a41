"""TLS for slotlock's gRPC servers and clients: certificate files named by settings, read once.

A server with a certificate and key serves TLS only; with a client CA as well it requires every
client to show a certificate signed by that CA (mutual TLS), whose identity ``slotlock.auth``
maps to roles. A client with a CA file verifies the server against it (and shows its own
certificate when it has one); without one it speaks plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from slotlock.settings import Reader, SettingsError


def _read_file(read: Reader, name: str) -> str:
    path = read.text(name, "")
    if path and not Path(path).is_file():
        raise SettingsError(f"{name} must be a readable file, not {path!r}")
    return path


@dataclass(frozen=True)
class ServerTLS:
    cert_file: str = ""  # PEM certificate chain of the server
    key_file: str = ""  # PEM private key of that certificate
    client_ca_file: str = ""  # require client certificates signed by this CA (mutual TLS)

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def credentials(self) -> grpc.ServerCredentials:
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        client_ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    @classmethod
    def read(cls, read: Reader) -> ServerTLS:
        tls = cls(
            cert_file=_read_file(read, "SLOTLOCK_TLS_CERT_FILE"),
            key_file=_read_file(read, "SLOTLOCK_TLS_KEY_FILE"),
            client_ca_file=_read_file(read, "SLOTLOCK_TLS_CLIENT_CA_FILE"),
        )
        if bool(tls.cert_file) != bool(tls.key_file):
            raise SettingsError(
                "SLOTLOCK_TLS_CERT_FILE and SLOTLOCK_TLS_KEY_FILE must be set together"
            )
        if tls.client_ca_file and not tls.cert_file:
            raise SettingsError(
                "SLOTLOCK_TLS_CLIENT_CA_FILE needs SLOTLOCK_TLS_CERT_FILE and "
                "SLOTLOCK_TLS_KEY_FILE (mutual TLS is TLS first)"
            )
        return tls


@dataclass(frozen=True)
class ClientTLS:
    ca_file: str = ""  # verify the services' certificates against this CA; "" = plain text
    cert_file: str = ""  # this client's certificate, for services that require one (mTLS)
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.enabled:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca_file).read_bytes(),
            private_key=Path(self.key_file).read_bytes() if self.key_file else None,
            certificate_chain=Path(self.cert_file).read_bytes() if self.cert_file else None,
        )

    @classmethod
    def read(cls, read: Reader) -> ClientTLS:
        tls = cls(
            ca_file=_read_file(read, "SLOTLOCK_TLS_CA_FILE"),
            cert_file=_read_file(read, "SLOTLOCK_TLS_CLIENT_CERT_FILE"),
            key_file=_read_file(read, "SLOTLOCK_TLS_CLIENT_KEY_FILE"),
        )
        if bool(tls.cert_file) != bool(tls.key_file):
            raise SettingsError(
                "SLOTLOCK_TLS_CLIENT_CERT_FILE and SLOTLOCK_TLS_CLIENT_KEY_FILE must be set "
                "together"
            )
        if tls.cert_file and not tls.ca_file:
            raise SettingsError("SLOTLOCK_TLS_CLIENT_CERT_FILE needs SLOTLOCK_TLS_CA_FILE")
        return tls
