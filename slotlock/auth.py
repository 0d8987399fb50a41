"""Who may call what: one server interceptor on both services, reading the contract's role table.

A caller proves who it is with a signed bearer token (``authorization: Bearer <JWT>``, verified
with a configured public key or shared HS256 key; claims ``sub``, ``roles``, ``exp`` and ``aud``)
or, with mutual TLS, with its client certificate, whose identity (a SAN or the CN) maps to roles
in the settings. A token, when sent, is the credential; the certificate is used otherwise.

- no credential, or a bad, expired or foreign one: UNAUTHENTICATED, saying which;
- a valid credential without a role the RPC lists: PERMISSION_DENIED, naming both;
- health and reflection are open (load balancers and grpcurl need them; reflection can be
  switched off); an RPC of no known service is refused (fail closed).

The role table is ``(slotlock.v1.access)`` on each RPC in ``protos/`` (read by ``role_table``).
The caller reaches the use cases as a plain ``slotlock.identity.Caller`` (``current_caller``),
for rules finer than "may call this RPC" (GetReservation's hold token, for one).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from slotlock import errors, grpc_errors, identity
from slotlock.identity import Caller
from slotlock.settings import Reader, SettingsError
from slotlock.v1 import access_pb2, availability_pb2, reservation_pb2

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "slotlock"
MIN_SECRET_BYTES = 32
# Open to every caller: probes and tools must reach them without a credential.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
REFLECTION_SERVICES = OPEN_SERVICES[1:]
# Clock skew tolerated on ``exp``: the issuer's clock and ours are not the same clock.
LEEWAY_S = 30

NO_CREDENTIALS = (
    "no credentials: call with an 'authorization: Bearer <token>' header "
    "(a token signed for slotlock that lists your roles) or a client certificate"
)


# ---- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthSettings:
    """How a server checks callers. Nothing configured means no caller can be verified, which
    a server refuses to start with unless ``insecure_no_auth`` says so on purpose."""

    # A shared key (HS256): every issuer and every service knows it.
    jwt_secret: str = ""
    # A PEM public key (RSA: RS256, EC: ES256/384/512, Ed25519/Ed448: EdDSA): only the issuer
    # holds the private key.
    jwt_public_key_file: str = ""
    audience: str = DEFAULT_AUDIENCE
    # Mutual TLS: (certificate identity, roles) pairs; the identity is a SAN or the CN.
    client_cert_roles: tuple[tuple[str, frozenset[str]], ...] = ()
    # A caller without a credential is an admin: for a closed test network only.
    insecure_no_auth: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file or self.client_cert_roles)

    def check(self) -> AuthSettings:
        """Raise ``SettingsError`` (one line) for settings a server must not start with."""
        if self.jwt_secret and self.jwt_public_key_file:
            raise SettingsError(
                "set SLOTLOCK_AUTH_JWT_SECRET or SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE, not both"
            )
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"SLOTLOCK_AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes "
                f"(a random value), not {len(self.jwt_secret.encode())} bytes"
            )
        if not self.configured and not self.insecure_no_auth:
            raise SettingsError(
                "no way to authenticate callers: set SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE or "
                "SLOTLOCK_AUTH_JWT_SECRET (or SLOTLOCK_TLS_CLIENT_CA_FILE with "
                "SLOTLOCK_TLS_CLIENT_ROLES), or SLOTLOCK_INSECURE_NO_AUTH=true on a closed "
                "test network"
            )
        return self

    @classmethod
    def read(cls, read: Reader) -> AuthSettings:
        key_file = read.text("SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE", "")
        if key_file:
            try:
                load_public_key(key_file)
            except (OSError, ValueError) as error:
                raise SettingsError(
                    "SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE must be a readable PEM public key "
                    f"(RSA, EC or Ed25519), not {key_file!r} ({error})"
                ) from None
        return cls(
            jwt_secret=read.text("SLOTLOCK_AUTH_JWT_SECRET", ""),
            jwt_public_key_file=key_file,
            audience=read.text("SLOTLOCK_AUTH_AUDIENCE", DEFAULT_AUDIENCE),
            client_cert_roles=parse_client_roles(read),
            insecure_no_auth=read.flag("SLOTLOCK_INSECURE_NO_AUTH", False),
        )


def parse_client_roles(read: Reader) -> tuple[tuple[str, frozenset[str]], ...]:
    """``SLOTLOCK_TLS_CLIENT_ROLES="gateway=booking+reader; ops.example.com=admin"``."""
    name = "SLOTLOCK_TLS_CLIENT_ROLES"
    raw = read.raw(name)
    if raw is None:
        return ()
    pairs = []
    for entry in filter(None, (part.strip() for part in raw.split(";"))):
        who, sep, listed = entry.rpartition("=")
        roles = frozenset(filter(None, (role.strip() for role in listed.split("+"))))
        unknown = roles - identity.ROLES
        if not sep or not who.strip() or not roles or unknown:
            raise SettingsError(
                f"{name} must be 'IDENTITY=ROLE[+ROLE]; ...' with roles from "
                f"{', '.join(sorted(identity.ROLES))}, not {raw!r}"
            )
        pairs.append((who.strip(), roles))
    return tuple(pairs)


def load_public_key(path: str) -> Any:
    return serialization.load_pem_public_key(Path(path).read_bytes())


def algorithms_for(key: Any) -> list[str]:
    """The signature algorithms a public key can verify; never HS256 (a public key used as an
    HMAC secret would let anyone who has it sign tokens)."""
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return [by_curve[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ValueError(f"unsupported key type {type(key).__name__}")


# ---- tokens --------------------------------------------------------------------------------------


def mint_token(
    key: str | bytes | Any,
    roles: Sequence[str],
    subject: str,
    *,
    audience: str = DEFAULT_AUDIENCE,
    ttl: timedelta = timedelta(hours=12),
    algorithm: str | None = None,
) -> str:
    """A signed token for ``subject`` with ``roles``: HS256 with a shared secret (``str``), or
    the algorithm of a private key (a PEM ``bytes`` or a key object). For `slotlock dev`, tests
    and operators without an identity provider."""
    signing_key: Any = (
        serialization.load_pem_private_key(key, password=None) if isinstance(key, bytes) else key
    )
    if algorithm is None:
        algorithm = (
            "HS256" if isinstance(signing_key, str) else algorithms_for(signing_key.public_key())[0]
        )
    now = int(time.time())
    claims = {
        "sub": subject,
        "roles": list(roles),
        "aud": audience,
        "iat": now,
        "exp": now + int(ttl.total_seconds()),
    }
    return jwt.encode(claims, signing_key, algorithm=algorithm)


class TokenVerifier:
    """Checks bearer tokens. Verified tokens are remembered until they expire (a gateway sends
    the same token on every call; a signature check per call would be wasted CPU)."""

    CACHE_SIZE = 4096

    def __init__(self, settings: AuthSettings) -> None:
        self._audience = settings.audience
        self._key: Any
        if settings.jwt_public_key_file:
            self._key = load_public_key(settings.jwt_public_key_file)
            self._algorithms = algorithms_for(self._key)
        else:
            self._key = settings.jwt_secret.encode()
            self._algorithms = ["HS256"]
        self._verified: dict[str, tuple[Caller, float]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def verify(self, token: str) -> Caller:
        """The caller a token names, or ``errors.Unauthenticated`` saying what is wrong."""
        known = self._verified.get(token)
        if known is not None and known[1] > time.time() - LEEWAY_S:
            return known[0]
        if not self.enabled:
            raise errors.Unauthenticated("bearer tokens are not accepted by this service")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "roles"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated("the bearer token has expired") from None
        except jwt.InvalidAudienceError:
            raise errors.Unauthenticated(
                f"the bearer token is not meant for this service (its audience must be "
                f"{self._audience!r})"
            ) from None
        except jwt.MissingRequiredClaimError as error:
            raise errors.Unauthenticated(
                f"the bearer token lacks the {error.claim!r} claim"
            ) from None
        except jwt.InvalidSignatureError:
            raise errors.Unauthenticated("the bearer token's signature is not valid") from None
        except jwt.InvalidAlgorithmError:
            raise errors.Unauthenticated(
                f"the bearer token must be signed with {' or '.join(self._algorithms)}"
            ) from None
        except jwt.InvalidTokenError as error:
            raise errors.Unauthenticated(f"the bearer token is not valid: {error}") from None
        roles = claims["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise errors.Unauthenticated("the bearer token's 'roles' claim must be a list of names")
        caller = Caller(subject=str(claims["sub"]), roles=frozenset(roles))
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (caller, float(claims["exp"]))
        return caller


# ---- the role table --------------------------------------------------------------------------


@functools.cache
def role_table() -> Mapping[str, frozenset[str]]:
    """``/slotlock.v1.Service/Method`` -> the roles that may call it, from the contract."""
    table: dict[str, frozenset[str]] = {}
    for file in (reservation_pb2.DESCRIPTOR, availability_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                access: access_pb2.Access = method.GetOptions().Extensions[access_pb2.access]
                table[f"/{service.full_name}/{method.name}"] = frozenset(access.roles)
    return table


# ---- the caller of the current call --------------------------------------------------------------

# Set by the interceptor in the task that runs the call (grpc.aio runs each call in a task of its
# own, so a value never leaks into another call).
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("slotlock_caller")
_NOBODY = Caller(subject="unauthenticated", roles=frozenset())


def current_caller() -> Caller:
    """The caller of the RPC being handled; a caller with no roles outside one (fail closed)."""
    return _CALLER.get(_NOBODY)


# ---- the interceptor ---------------------------------------------------------------------------

Context: TypeAlias = grpc.aio.ServicerContext
Behaviour = Callable[..., Any]


class AuthInterceptor(grpc_errors.WrappingInterceptor):
    """Authenticates every call and checks the role table before the handler and before the
    request checks (a stranger learns nothing about a request's fields). Installed inside the
    error interceptor, which answers, counts and logs its refusals like any other."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        reflection: bool = True,
        table: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        super().__init__()
        settings.check()
        self._settings = settings
        self._table = role_table() if table is None else table
        self._reflection = reflection
        self._tokens = TokenVerifier(settings)
        self._cert_roles = dict(settings.client_cert_roles)
        if settings.insecure_no_auth:
            log.warning(
                "SLOTLOCK_INSECURE_NO_AUTH is set: a caller without credentials may do everything"
            )

    def hides(self, method: str) -> bool:
        return not self._reflection and method.startswith(REFLECTION_SERVICES)

    def wraps(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return not method.startswith(OPEN_SERVICES)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return self._wrap(handler, method, self._table.get(method, frozenset()))

    def admit(
        self,
        method: str,
        roles: frozenset[str],
        metadata: Sequence[tuple[str, Any]],
        context: Context,
    ) -> Caller:
        """The caller of one call, if it may call ``method``; else ``Unauthenticated`` or
        ``PermissionDenied``. The call's TLS auth context is read from ``context`` only when a
        certificate could name the caller (a call with a bearer token does not need it)."""
        caller = self.authenticate(metadata, context)
        if not roles & caller.roles:
            needs = " or ".join(sorted(roles)) if roles else "a role no caller has"
            has = ", ".join(sorted(caller.roles)) or "none"
            raise errors.PermissionDenied(
                f"{caller.subject} may not call {method.rsplit('/', 1)[-1]}: it needs the role "
                f"{needs} (roles held: {has})"
            )
        return caller

    def authenticate(self, metadata: Sequence[tuple[str, Any]], context: Context) -> Caller:
        header = next((str(value) for key, value in metadata if key == "authorization"), None)
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated("the authorization header must be 'Bearer <token>'")
            return self._tokens.verify(token.strip())
        certified = self._certificate_caller(context)
        if certified is not None:
            return certified
        if self._settings.insecure_no_auth:
            return identity.TRUSTED
        raise errors.Unauthenticated(NO_CREDENTIALS)

    def _certificate_caller(self, context: Context) -> Caller | None:
        if not self._cert_roles and self._settings.insecure_no_auth:
            return None  # no certificate could name a caller (reading one is no small cost)
        peer = _peer(context)
        if peer is None:
            return None
        names = [
            raw.decode(errors="replace")
            for key in ("x509_subject_alternative_name", "x509_common_name")
            for raw in peer.get(key, ())
        ]
        if not names:
            return None
        for name in names:
            if name in self._cert_roles:
                return Caller(subject=name, roles=self._cert_roles[name])
        if self._settings.insecure_no_auth:
            return None
        # A verified certificate with no roles: known, but allowed nothing.
        return Caller(subject=names[-1], roles=frozenset())

    def _wrap(
        self, handler: grpc.RpcMethodHandler, method: str, roles: frozenset[str]
    ) -> grpc.RpcMethodHandler:
        async def admitted(context: Context) -> None:
            # A refusal is raised, not aborted here: the error interceptor outside this one
            # answers it (status, details, request id) and counts and logs it like any call.
            caller = self.admit(method, roles, context.invocation_metadata() or (), context)
            _CALLER.set(caller)

        kind, behaviour = _behaviour_of(handler)
        factory = _FACTORIES[kind]
        if kind in ("unary_stream", "stream_stream") and inspect.isasyncgenfunction(behaviour):

            async def stream(request: object, context: Context) -> AsyncIterator[object]:
                await admitted(context)
                async for item in behaviour(request, context):
                    yield item

            call: Behaviour = stream
        else:

            async def call_once(request: object, context: Context) -> object:
                await admitted(context)
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result

            call = call_once
        return factory(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _peer(context: Context) -> dict[str, list[bytes]] | None:
    try:
        peer = context.auth_context()
    except Exception:  # no transport security: nothing to read
        return None
    return peer if isinstance(peer, dict) else None


def _behaviour_of(handler: grpc.RpcMethodHandler) -> tuple[str, Behaviour]:
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    return kind, getattr(handler, kind)


_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
