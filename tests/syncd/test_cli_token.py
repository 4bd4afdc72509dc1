from pathlib import Path

import pytest

from protocol.topics import parse_topic
from syncd.auth import Role, TokenVerifier, load_or_create_secret
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
