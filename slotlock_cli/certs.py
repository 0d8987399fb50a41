"""Throwaway keys and certificates for `slotlock dev` and the tests: a CA made at start, a server
certificate for this machine, client certificates for mutual TLS, and a token-signing key.

Nothing here is for production: keys are written unencrypted (files only their user can read)
and the CA lives as long as the folder it was written to.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slotlock import auth
from slotlock.client import ClientSecurity
from slotlock.identity import ADMIN
from slotlock.tls import ClientTLS

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_FOR = timedelta(days=30)


@dataclass(frozen=True)
class CertFiles:
    cert_file: Path
    key_file: Path


def _private_file(path: Path, data: bytes) -> Path:
    """Write ``data`` readable by its owner only (0600), whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class DevCA:
    """A certificate authority that exists for one run (``DevCA.create(folder)``)."""

    def __init__(self, folder: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.folder = folder
        self._key = key
        self._cert = cert
        self.cert_file = folder / "ca.pem"

    @classmethod
    def create(cls, folder: Path, name: str = "slotlock dev CA") -> DevCA:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(folder, key, cert)
        ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(
        self, name: str, common_name: str, alt_names: Sequence[str] = (), *, server: bool
    ) -> CertFiles:
        """A certificate for a server (``alt_names``: the host names and addresses clients dial)
        or a client (its identity: the CN, and any ``alt_names`` as SANs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(_san(alt_names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.folder / f"{name}.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return CertFiles(cert_file, _private_file(self.folder / f"{name}-key.pem", _key_pem(key)))

    def server_cert(self, name: str = "server", hosts: Sequence[str] = LOCAL_NAMES) -> CertFiles:
        return self.issue(name, hosts[0], hosts, server=True)

    def client_cert(self, identity: str) -> CertFiles:
        return self.issue(f"client-{identity}", identity, server=False)


def signing_key(folder: Path) -> tuple[Path, Path]:
    """A fresh ES256 key pair for signing tokens: (private key file, public key file). The
    services get only the public one; whoever mints tokens holds the private one."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = _private_file(folder / "token-signing-key.pem", _key_pem(key))
    public = folder / "token-signing-key.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


class DevSecurity:
    """What a local system (``System``: `slotlock dev`, the e2e tests, the benchmarks) needs to
    run as production does: a token-signing key pair (services get the public key; tokens are
    minted here) and, with ``tls``, a throwaway CA and a certificate for this machine."""

    def __init__(self, folder: Path, *, tls: bool = True) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.private_key_file, self.public_key_file = signing_key(folder)
        self.ca = DevCA.create(folder) if tls else None
        self.server = self.ca.server_cert() if self.ca is not None else None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def server_env(self) -> dict[str, str]:
        """The variables a service needs to check callers (and serve TLS)."""
        env = {"SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE": str(self.public_key_file)}
        if self.server is not None:
            env["SLOTLOCK_TLS_CERT_FILE"] = str(self.server.cert_file)
            env["SLOTLOCK_TLS_KEY_FILE"] = str(self.server.key_file)
        else:
            env["SLOTLOCK_INSECURE_PLAINTEXT"] = "true"
        return env

    def token(
        self, *roles: str, subject: str = "slotlock-dev", ttl: timedelta = timedelta(hours=12)
    ) -> str:
        """A token with ``roles`` (admin when none given)."""
        return auth.mint_token(
            self.private_key_file.read_bytes(), roles or (ADMIN,), subject, ttl=ttl
        )

    def client_tls(self) -> ClientTLS:
        return ClientTLS(ca_file=str(self.ca.cert_file)) if self.ca is not None else ClientTLS()

    def client_security(self, *roles: str, subject: str = "slotlock-dev") -> ClientSecurity:
        return ClientSecurity(token=self.token(*roles, subject=subject), tls=self.client_tls())

    def client_env(self, *roles: str, subject: str = "slotlock-dev") -> dict[str, str]:
        """``SLOTLOCK_TOKEN`` (and ``SLOTLOCK_TLS_CA_FILE``) for a client with ``roles``."""
        env = {"SLOTLOCK_TOKEN": self.token(*roles, subject=subject)}
        if self.ca is not None:
            env["SLOTLOCK_TLS_CA_FILE"] = str(self.ca.cert_file)
        return env
