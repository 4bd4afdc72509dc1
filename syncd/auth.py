"""Who a connection is and what it may touch: signed tokens (JWT) and scope checks.

A token names one client and its scope; the hub trusts nothing else a client says about itself. The
``client_id`` a client claims in ``hello`` must equal the token's subject, so one device cannot write under
another's sequence numbers (docs/traps.md §8). Algorithms are fixed by configuration, never taken from the
token (RFC 8725 §2.1), and so is the issuer (``iss``, :attr:`Settings.token_issuer`): a token signed with the
same key for another service is not a syncd token. Registered claims are type-checked, not coerced: PyJWT
reads ``"exp": "9999999999"`` as a number, and a hub that took it would accept a string no issuer meant as a
time. Tokens never reach a log: errors name the failed check, not the token.

Revocation (PROTOCOL.md §13.1): an operator revokes a *client* at a time ``t``
(:mod:`syncd.revocation`); every token of that client issued at or before ``t`` (``iat`` ≤ ``t``, or no
``iat`` at all) is refused with 4504 from then on, and live sessions holding one are closed. A token issued
after ``t`` is accepted again: issuing a new token is how a device is let back in.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import jwt
import msgspec

from protocol import frames
from protocol.errors import CloseCode
from protocol.topics import MEMBER_KINDS, TopicKind, TopicName, is_valid_key
from syncd.settings import Settings

SECRET_FILE: Final = "token-secret"
DEFAULT_ISSUER: Final = "syncd"
"""The ``iss`` that ``syncd token`` writes and a hub expects unless configured otherwise."""
ALL: Final = "*"
"""In ``members``: the client may act for every member (an app backend, a till serving walk-in members)."""


class Role(enum.StrEnum):
    APP = "app"
    """A customer-facing app, mini-program, H5 or web backend."""
    POS = "pos"
    """A till in one store; may sell offline from its store's allotment."""
    OPS = "ops"
    """Operations staff and back-office tools: every topic, admin ops."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The verified identity and scope of one connection."""

    client_id: str
    channel: str
    role: Role
    members: frozenset[str]
    store: str | None
    expires_at: float
    issued_at: float | None = None
    """The token's ``iat``: revocation refuses tokens issued at or before it was revoked."""

    def may_act_for(self, member: str) -> bool:
        return self.role is Role.OPS or ALL in self.members or member in self.members

    def may_read(self, topic: TopicName) -> bool:
        """Whether this principal may subscribe to ``topic`` (docs/design.md §5: a store sees its own)."""
        if self.role is Role.OPS:
            return True
        if topic.kind in MEMBER_KINDS:
            assert topic.key is not None
            return self.may_act_for(topic.key)
        if topic.kind is TopicKind.STORE:
            return self.role is Role.POS and topic.key == self.store
        return topic.kind in (TopicKind.STOCK, TopicKind.CATALOG)


class RevocationList(Protocol):
    """What the verifier asks of :class:`syncd.revocation.Revocations` (kept apart: that one needs Redis)."""

    def refuses(self, principal: Principal) -> bool: ...


class AuthError(Exception):
    """A token was refused; ``close_code`` is how the connection ends."""

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Verifies tokens with one configured key, algorithm set and issuer (HS256 default; RS256/ES256 with a
    PEM), and refuses the tokens of revoked clients when given the hub's revocation list."""

    key: str
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str = DEFAULT_ISSUER
    leeway_s: float = 5.0
    revocations: RevocationList | None = None

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature, issuer, expiry and claim types are valid."""
        if not token:
            raise AuthError(CloseCode.UNAUTHORIZED, "missing token")
        try:
            # Types first: PyJWT's own checks would coerce a string ``exp`` or a boolean ``iat``.
            check_registered_claims(jwt.decode(token, options={"verify_signature": False}))
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                options={"require": ["exp", "sub", "iss"]},
                issuer=self.issuer,
                leeway=self.leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(CloseCode.TOKEN_EXPIRED, "token expired") from None
        except jwt.InvalidIssuerError:
            raise AuthError(CloseCode.UNAUTHORIZED, "token of another issuer") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(CloseCode.UNAUTHORIZED, f"invalid token ({type(exc).__name__})") from None
        return claims

    def verify(self, token: str, client_id: str) -> Principal:
        principal = principal_from_claims(self.claims(token))
        if principal.client_id != client_id:
            raise AuthError(CloseCode.UNAUTHORIZED, "client_id does not match the token")
        if self.revocations is not None and self.revocations.refuses(principal):
            raise AuthError(CloseCode.REVOKED, "client revoked by an operator")
        return principal


_NUMERIC_CLAIMS: Final = ("exp", "nbf", "iat")
_STRING_CLAIMS: Final = ("sub", "iss", "jti")


def check_registered_claims(claims: object) -> None:
    """RFC 7519 §4.1 types, checked rather than coerced: NumericDate claims are finite JSON numbers (not
    strings, not booleans), ``sub``/``iss``/``jti`` strings. Raises :class:`AuthError` (4500)."""
    if not isinstance(claims, dict):
        raise AuthError(CloseCode.UNAUTHORIZED, "malformed claims (not an object)")
    for name in _NUMERIC_CLAIMS:
        value = claims.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise AuthError(CloseCode.UNAUTHORIZED, f"malformed claims ({name} is not a number)")
    for name in _STRING_CLAIMS:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise AuthError(CloseCode.UNAUTHORIZED, f"malformed claims ({name} is not a string)")


def token_verifier(settings: Settings, revocations: RevocationList | None = None) -> TokenVerifier:
    """The verifier the settings describe: a shared secret (HS256) or a public key file (RS256/ES256).

    Reads (or creates) its key file now: an unreadable key or data dir fails the start, not a handshake.
    """
    if settings.token_public_key is not None:
        key = settings.token_public_key.read_text()
        algorithms: tuple[str, ...] = (settings.token_algorithm,)
    else:
        key = settings.token_secret or load_or_create_secret(settings.data_dir)
        algorithms = ("HS256",)
    return TokenVerifier(key, algorithms, issuer=settings.token_issuer, revocations=revocations)


def load_or_create_secret(data_dir: Path) -> str:
    """The development secret kept in ``<data_dir>/token-secret``, created (mode 0600) on first use.

    So ``make run`` needs no configuration, and ``syncd token`` run against the same data dir mints tokens
    the hub accepts. Production sets ``SYNCD_TOKEN_SECRET`` or a public key instead.
    """
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Validate the syncd claims of a verified token."""
    try:
        role = Role(claims.get("role", Role.APP))
    except ValueError:
        raise AuthError(CloseCode.UNAUTHORIZED, "unknown role") from None
    members = claims.get("members", [])
    store = claims.get("store")
    sub = claims["sub"]
    if (
        not isinstance(sub, str)
        or not isinstance(members, list)
        or not all(isinstance(m, str) and (m == ALL or is_valid_key(m)) for m in members)
        or not (store is None or (isinstance(store, str) and is_valid_key(store)))
        or not isinstance(claims.get("channel", ""), str)
    ):
        raise AuthError(CloseCode.UNAUTHORIZED, "malformed claims")
    if role is Role.POS and store is None:
        raise AuthError(CloseCode.UNAUTHORIZED, "a pos token must name its store")
    return Principal(
        client_id=sub,
        channel=claims.get("channel") or ("pos" if role is Role.POS else "app"),
        role=role,
        members=frozenset(members),
        store=store,
        expires_at=float(claims["exp"]),
        issued_at=None if claims.get("iat") is None else float(claims["iat"]),
    )


def mint_token(
    key: str,
    *,
    client_id: str,
    role: Role | str = Role.APP,
    channel: str | None = None,
    members: Iterable[str] = (),
    store: str | None = None,
    ttl_s: float = 3600.0,
    algorithm: str = "HS256",
    issuer: str = DEFAULT_ISSUER,
    now: float | None = None,
) -> str:
    """Sign a token (development and tests; production tokens come from the brand's identity service)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": client_id,
        "iss": issuer,
        "role": str(Role(role)),
        "members": sorted(members),
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if channel:
        claims["channel"] = channel
    if store is not None:
        claims["store"] = store
    try:
        msgspec.convert(client_id, frames.ClientId)
    except msgspec.ValidationError:
        raise AuthError(CloseCode.UNAUTHORIZED, f"not a valid client_id: {client_id[:64]!r}") from None
    principal_from_claims(claims)  # refuse to mint what a hub would refuse
    return jwt.encode(claims, key, algorithm=algorithm)
