import time

import jwt
import pytest

from protocol.errors import CloseCode
from protocol.topics import parse_topic
from syncd.auth import AuthError, Principal, Role, TokenVerifier, mint_token

SECRET = "test-secret-" + "x" * 64
LATER = time.time() + 86_400  # read at import: a long, loaded run must not reach it before its tests do


def raw(claims: dict[str, object], **kw: str) -> str:
    return jwt.encode(claims, SECRET, **kw)  # type: ignore[arg-type]


def verify(token: str, client_id: str = "pos-1") -> object:
    return TokenVerifier(SECRET).verify(token, client_id)


def test_pos_token_of_store_a_cannot_read_store_b_or_members_it_does_not_hold() -> None:
    token = mint_token(SECRET, client_id="pos-1", role="pos", store="a", members=["m1"])
    principal = TokenVerifier(SECRET).verify(token, "pos-1")
    assert principal.role is Role.POS
    assert principal.channel == "pos"
    assert principal.may_read(parse_topic("store:a"))
    assert not principal.may_read(parse_topic("store:b"))
    assert principal.may_read(parse_topic("cart:m1"))
    assert not principal.may_read(parse_topic("cart:m2"))
    assert not principal.may_act_for("m2")
    assert principal.may_read(parse_topic("stock:SKU-1"))
    assert principal.may_read(parse_topic("catalog"))


def test_app_with_all_members_and_ops_role() -> None:
    app = TokenVerifier(SECRET).verify(mint_token(SECRET, client_id="c", members=["*"]), "c")
    assert app.may_act_for("anyone")
    assert not app.may_read(parse_topic("store:a"))
    ops = TokenVerifier(SECRET).verify(mint_token(SECRET, client_id="o", role=Role.OPS), "o")
    assert ops.may_read(parse_topic("store:a"))
    assert ops.may_act_for("m9")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("", CloseCode.UNAUTHORIZED),
        ("not-a-jwt", CloseCode.UNAUTHORIZED),
        (mint_token("another-" + "y" * 64, client_id="pos-1"), CloseCode.UNAUTHORIZED),
        (mint_token(SECRET, client_id="pos-1", ttl_s=-60), CloseCode.TOKEN_EXPIRED),
        (mint_token(SECRET, client_id="someone-else"), CloseCode.UNAUTHORIZED),
        (
            raw({"sub": "pos-1", "exp": LATER, "role": "root"}),
            CloseCode.UNAUTHORIZED,
        ),
        (
            raw({"sub": "pos-1", "exp": LATER, "role": "pos"}),
            CloseCode.UNAUTHORIZED,
        ),
        (
            raw({"sub": "pos-1", "exp": LATER, "members": "m1"}),
            CloseCode.UNAUTHORIZED,
        ),
        (raw({"sub": "pos-1", "members": ["m1"]}), CloseCode.UNAUTHORIZED),  # no exp
        (
            raw({"sub": "pos-1", "exp": LATER}, algorithm="HS512"),
            CloseCode.UNAUTHORIZED,
        ),
    ],
)
def test_refused_tokens_name_their_close_code_and_never_echo_the_token(token: str, code: CloseCode) -> None:
    with pytest.raises(AuthError) as err:
        verify(token)
    assert err.value.close_code is code
    if token:
        assert token not in str(err.value)


ISSUED = {"sub": "pos-1", "iss": "syncd", "exp": int(LATER)}


@pytest.mark.parametrize(
    "claims",
    [
        {**ISSUED, "exp": str(int(LATER))},  # PyJWT would read it as a number
        {**ISSUED, "exp": True},
        {**ISSUED, "exp": LATER, "nbf": "0"},
        {**ISSUED, "exp": LATER, "iat": "1700000000"},
        {**ISSUED, "exp": LATER, "iat": False},
        {**ISSUED, "exp": LATER, "jti": 7},
    ],
    ids=["exp-string", "exp-bool", "nbf-string", "iat-string", "iat-bool", "jti-number"],
)
def test_registered_claims_of_the_wrong_type_are_refused_not_coerced(claims: dict[str, object]) -> None:
    with pytest.raises(AuthError, match="malformed claims") as err:
        verify(raw(claims))
    assert err.value.close_code is CloseCode.UNAUTHORIZED


@pytest.mark.parametrize(("issuer", "accepted"), [("syncd", True), ("another-service", False), (None, False)])
def test_the_issuer_is_checked_against_the_configured_one(issuer: str | None, accepted: bool) -> None:
    claims = {"sub": "pos-1", "exp": int(LATER), "role": "pos", "store": "s1"}
    if issuer is not None:
        claims["iss"] = issuer
    if accepted:
        assert verify(raw(claims))
        return
    with pytest.raises(AuthError) as err:
        verify(raw(claims))
    assert err.value.close_code is CloseCode.UNAUTHORIZED


def test_a_hub_configured_for_another_issuer_accepts_only_that_one() -> None:
    token = mint_token(SECRET, client_id="c", issuer="https://id.example.com")
    assert TokenVerifier(SECRET, issuer="https://id.example.com").verify(token, "c").client_id == "c"
    with pytest.raises(AuthError):
        TokenVerifier(SECRET).verify(token, "c")


class _Revoked:
    def __init__(self, at: float) -> None:
        self.at = at

    def refuses(self, principal: Principal) -> bool:
        return principal.issued_at is None or principal.issued_at <= self.at


def test_a_revoked_clients_tokens_issued_before_the_revocation_close_with_4504() -> None:
    now = time.time()
    verifier = TokenVerifier(SECRET, revocations=_Revoked(now))
    old = mint_token(SECRET, client_id="c", now=now - 10)
    with pytest.raises(AuthError) as err:
        verifier.verify(old, "c")
    assert err.value.close_code is CloseCode.REVOKED
    assert verifier.verify(mint_token(SECRET, client_id="c", now=now + 2), "c").issued_at == int(now + 2)
