"""The role table, token checks and security settings, without a server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from slotlock import auth, errors
from slotlock.auth import AuthSettings, TokenVerifier
from slotlock.grpc_server import ServerSecurity, create_server
from slotlock.identity import ADMIN, BOOKING, READER, ROLES
from slotlock.settings import Reader, SettingsError
from slotlock_cli.certs import DevCA, signing_key
from tests.support import SECURE_ENV, TEST_JWT_SECRET

R = "/slotlock.v1.ReservationService/"
A = "/slotlock.v1.AvailabilityService/"
# Issue 9's table, written out: the contract must say exactly this.
EXPECTED = {
    R + "UpsertEvent": {ADMIN},
    R + "RefundReservation": {ADMIN},
    R + "ExpireStaleHolds": {ADMIN},
    R + "ListReservations": {ADMIN},
    R + "GetReservation": {ADMIN, BOOKING},
    R + "CreateHold": {ADMIN, BOOKING},
    R + "RecordPaymentAttempt": {ADMIN, BOOKING},
    R + "ConfirmHold": {ADMIN, BOOKING},
    R + "ReleaseHold": {ADMIN, BOOKING},
    # Issue 12: the hold token proves the holder for ExtendHold; the history is for operators.
    R + "ExtendHold": {ADMIN, BOOKING},
    R + "ListChanges": {ADMIN},
    R + "GetEvent": {ADMIN, READER},
    R + "ListEvents": {ADMIN, READER},
    A + "GetEventAvailability": {ADMIN, READER},
    A + "ListAvailability": {ADMIN, READER},
    A + "WatchAvailability": {ADMIN, READER},
}


def test_the_contract_declares_the_role_table() -> None:
    table = auth.role_table()
    assert {method: set(roles) for method, roles in table.items()} == EXPECTED
    # Every RPC has roles, only known ones, and an admin may call every RPC.
    assert all(roles and roles <= ROLES and ADMIN in roles for roles in table.values())


def test_a_token_names_its_caller() -> None:
    verifier = TokenVerifier(AuthSettings(jwt_secret=TEST_JWT_SECRET))
    caller = verifier.verify(auth.mint_token(TEST_JWT_SECRET, [BOOKING, READER], "gateway"))
    assert caller.subject == "gateway" and caller.roles == {BOOKING, READER}
    assert not caller.is_admin


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"sub": "x", "roles": [ADMIN], "aud": "slotlock"}, "lacks the 'exp' claim"),
        ({"sub": "x", "aud": "slotlock", "exp": 2**40}, "lacks the 'roles' claim"),
        ({"roles": [ADMIN], "aud": "slotlock", "exp": 2**40}, "lacks the 'sub' claim"),
        ({"sub": "x", "roles": "admin", "aud": "slotlock", "exp": 2**40}, "list of names"),
        ({"sub": "x", "roles": [ADMIN], "aud": "other", "exp": 2**40}, "not meant for"),
        ({"sub": "x", "roles": [ADMIN], "aud": "slotlock", "exp": 1}, "has expired"),
    ],
)
def test_bad_claims_are_unauthenticated(claims: dict[str, object], words: str) -> None:
    verifier = TokenVerifier(AuthSettings(jwt_secret=TEST_JWT_SECRET))
    token = jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")
    with pytest.raises(errors.Unauthenticated, match=words):
        verifier.verify(token)


def test_public_key_tokens_and_no_algorithm_confusion(tmp_path: Path) -> None:
    private, public = signing_key(tmp_path)
    verifier = TokenVerifier(AuthSettings(jwt_public_key_file=str(public)))
    token = auth.mint_token(private.read_bytes(), [ADMIN], "ops", ttl=timedelta(minutes=5))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verifier.verify(token).is_admin
    # The public key is public: a token "signed" with it as an HMAC secret must not pass.
    forged = jwt.encode(
        {"sub": "x", "roles": [ADMIN], "aud": "slotlock", "exp": 2**40},
        "not-the-key-but-long-enough-for-hs256-0123",
        algorithm="HS256",
    )
    with pytest.raises(errors.Unauthenticated, match="must be signed with ES256"):
        verifier.verify(forged)


def test_security_settings_fail_closed() -> None:
    with pytest.raises(SettingsError, match="no way to authenticate callers"):
        ServerSecurity.read(Reader({}))
    with pytest.raises(SettingsError, match="no TLS certificate"):
        ServerSecurity.read(Reader({"SLOTLOCK_AUTH_JWT_SECRET": TEST_JWT_SECRET}))
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        ServerSecurity.read(Reader({**SECURE_ENV, "SLOTLOCK_AUTH_JWT_SECRET": "short"}))
    with pytest.raises(SettingsError, match="no way to authenticate callers"):
        create_server(ServerSecurity())  # built in code, the same refusal
    secured = ServerSecurity.read(Reader(SECURE_ENV))
    assert secured.auth.jwt_secret == TEST_JWT_SECRET and not secured.tls.enabled
    assert ServerSecurity.read(
        Reader({"SLOTLOCK_INSECURE_NO_AUTH": "true", "SLOTLOCK_INSECURE_PLAINTEXT": "1"})
    ).auth.insecure_no_auth


def test_tls_and_client_certificate_settings(tmp_path: Path) -> None:
    ca = DevCA.create(tmp_path)
    server = ca.server_cert()
    env = {
        "SLOTLOCK_TLS_CERT_FILE": str(server.cert_file),
        "SLOTLOCK_TLS_KEY_FILE": str(server.key_file),
        "SLOTLOCK_TLS_CLIENT_CA_FILE": str(ca.cert_file),
        "SLOTLOCK_TLS_CLIENT_ROLES": "gateway=booking+reader; ops.example.com=admin",
    }
    security = ServerSecurity.read(Reader(env))
    assert security.tls.enabled and security.tls.client_ca_file == str(ca.cert_file)
    assert dict(security.auth.client_cert_roles) == {
        "gateway": {BOOKING, READER},
        "ops.example.com": {ADMIN},
    }
    with pytest.raises(SettingsError, match="must be 'IDENTITY=ROLE"):
        ServerSecurity.read(Reader({**env, "SLOTLOCK_TLS_CLIENT_ROLES": "gateway=root"}))
    with pytest.raises(SettingsError, match="must be set together"):
        ServerSecurity.read(Reader({**SECURE_ENV, "SLOTLOCK_TLS_CERT_FILE": str(server.cert_file)}))
    with pytest.raises(SettingsError, match="must be a readable file"):
        ServerSecurity.read(Reader({**SECURE_ENV, "SLOTLOCK_TLS_CERT_FILE": "/nope.pem"}))
