import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.topics import parse_topic
from syncd.auth import Role, TokenVerifier, load_or_create_secret, mint_token
from syncd.cli import main


def test_syncd_token_mints_what_a_hub_on_the_same_data_dir_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCD_TOKEN_SECRET", raising=False)
    args = ["token", "--client-id", "pos-1", "--role", "pos", "--store", "s1", "--member", "m1"]
    assert main([*args, "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    secret = load_or_create_secret(tmp_path)  # created by the command, reused by the hub
    principal = TokenVerifier(secret).verify(token, "pos-1")
    assert (principal.role, principal.store, principal.channel) == (Role.POS, "s1", "pos")
    assert principal.may_read(parse_topic("cart:m1"))
    assert not principal.may_read(parse_topic("cart:m2"))
    assert (tmp_path / "token-secret").stat().st_mode & 0o777 == 0o600


def test_syncd_token_refuses_claims_a_hub_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--client-id", "bad id!", "--data-dir", str(tmp_path)]) == 2
    assert "syncd:" in capsys.readouterr().err


@pytest.mark.parametrize("ttl", ["0", "-60", "nan"])
def test_syncd_token_refuses_a_ttl_that_is_not_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl: str
) -> None:
    assert main(["token", "--client-id", "c1", "--ttl", ttl, "--data-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--ttl must be a positive number" in err


def test_syncd_token_prints_the_token_alone_on_stdout_and_its_expiry_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCD_TOKEN_SECRET", raising=False)
    before = time.time()
    assert main(["token", "--client-id", "c1", "--ttl", "7200", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out.count("\n") == 1 and token.count(".") == 2
    expiry = datetime.datetime.fromtimestamp(int(before + 7200), datetime.UTC).strftime("%Y-%m-%dT%H:%M")
    assert "expires " + expiry in err
    assert "(in 1 h 59 min)" in err or "(in 2 h 0 min)" in err
    claims = TokenVerifier(load_or_create_secret(tmp_path)).claims(token)
    assert claims["iss"] == "syncd"


def test_syncd_token_writes_the_configured_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNCD_TOKEN_ISSUER", "https://id.example.com")
    assert main(["token", "--client-id", "c1", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(load_or_create_secret(tmp_path), issuer="https://id.example.com")
    assert verifier.verify(token, "c1").client_id == "c1"


def test_syncd_token_check_prints_the_claims_and_expiry_of_a_valid_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCD_TOKEN_SECRET", raising=False)
    monkeypatch.delenv("SYNCD_TOKEN_ISSUER", raising=False)
    data = ["--data-dir", str(tmp_path)]
    assert main(["token", "--client-id", "pos-9", "--role", "pos", "--store", "s1", *data]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "--check", token, *data]) == 0
    out = capsys.readouterr().out
    claims = json.loads(out.split("\nvalid", 1)[0])
    assert (claims["sub"], claims["role"], claims["store"], claims["iss"]) == ("pos-9", "pos", "s1", "syncd")
    assert "expires " in out
    assert token not in out


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        (lambda secret: mint_token("another-" + "k" * 40, client_id="c"), "4500 unauthorized"),
        (lambda secret: mint_token(secret, client_id="c", ttl_s=-60), "4501 token_expired"),
        (lambda secret: mint_token(secret, client_id="c", issuer="elsewhere"), "4500 unauthorized"),
        (lambda secret: "garbage", "4500 unauthorized"),
    ],
)
def test_syncd_token_check_refuses_what_the_hub_would_refuse_with_its_close_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[str], str],
    refusal: str,
) -> None:
    monkeypatch.delenv("SYNCD_TOKEN_SECRET", raising=False)
    token = make(load_or_create_secret(tmp_path))
    assert main(["token", "--check", token, "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"refused with close {refusal}" in out
    assert token not in out


def test_syncd_token_revoke_without_a_reachable_redis_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCD_REDIS_URL", raising=False)
    assert main(["token", "revoke", "--client-id", "c1", "--data-dir", str(tmp_path)]) == 2
    assert "start the hub on its data dir" in capsys.readouterr().err
