"""Every setting has a flag, a variable, a config-file key and a README row; precedence; log formats."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.cli import build_parser, configure_logging, main
from syncd.settings import CONFIG_ENV, ConfigError, Settings, env_var

REPO = Path(__file__).resolve().parents[2]
FIELDS = [field.name for field in dataclasses.fields(Settings)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def serve_help() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a.choices, dict))
    assert isinstance(subparsers.choices, dict)
    return str(subparsers.choices["serve"].format_help())


def readme_tables() -> dict[str, list[str]]:
    """The rows of the configuration tables, by language (the English section, then the Chinese one)."""
    text = (REPO / "README.md").read_text()
    english = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    chinese = text.split("## 配置", 1)[1].split("\n## ", 1)[0]
    return {
        language: [line for line in section.splitlines() if line.startswith("| `")]
        for language, section in (("en", english), ("zh", chinese))
    }


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_has_a_flag_a_variable_and_a_readme_row_in_both_languages(name: str) -> None:
    text = serve_help()
    assert flag(name) in text, f"`syncd serve --help` lacks {flag(name)}"
    assert env_var(name) in text, f"`syncd serve --help` does not name {env_var(name)}"
    # The variable is read, and the flag parses, for this very field.
    default = getattr(Settings(), name)
    spelled = ",".join(default) if isinstance(default, tuple) else str(default)
    if default is not None and spelled:
        assert Settings.from_env({env_var(name): spelled}) == Settings()
        args = build_parser().parse_args(
            ["serve", flag(name) if isinstance(default, bool) and default else f"--no-{flag(name)[2:]}"]
            if isinstance(default, bool)
            else ["serve", flag(name), spelled]
        )
        assert getattr(args, name) in (default, spelled)
    for language, rows in readme_tables().items():
        matching = [row for row in rows if f"`{flag(name)}`" in row and f"`{env_var(name)}`" in row]
        assert len(matching) == 1, (
            f"README ({language}) needs one row with `{flag(name)}` and `{env_var(name)}`"
        )


def test_the_readme_tables_list_the_config_file_option_too() -> None:
    for rows in readme_tables().values():
        assert any("`--config`" in row and f"`{CONFIG_ENV}`" in row for row in rows)


def test_op_rate_and_heartbeat_are_flags_of_serve() -> None:
    args = build_parser().parse_args(["serve", "--op-rate", "50", "--heartbeat-ms", "20000"])
    settings = Settings.from_env({}, **{f: getattr(args, f) for f in FIELDS})
    assert (settings.op_rate, settings.heartbeat_ms) == (50, 20_000)


def test_precedence_is_default_then_file_then_environment_then_flag(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    config.write_text(
        'port = 8100\nop_rate = 100\nheartbeat_ms = 30000\nallowed_origins = ["https://a.example/"]\n'
        "redis_cluster = false\n"
    )
    environ = {"SYNCD_PORT": "8200", "SYNCD_OP_RATE": "200", CONFIG_ENV: str(config)}
    settings = Settings.from_env(environ, port="8300")
    assert settings.port == 8300  # flag
    assert settings.op_rate == 200  # environment over file
    assert settings.heartbeat_ms == 30_000  # file over default
    assert settings.allowed_origins == ("https://a.example",)  # a TOML list, cleaned like the variable
    assert settings.max_frame == Settings().max_frame  # default
    # --config wins over SYNCD_CONFIG; an empty variable is unset (the file applies), an empty flag means
    # "the default" whatever the file and the variable say.
    other = tmp_path / "other.toml"
    other.write_text("op_rate = 7\n")
    assert Settings.from_env(environ | {"SYNCD_OP_RATE": ""}, config_file=other).op_rate == 7
    assert Settings.from_env(environ, op_rate="").op_rate == Settings().op_rate


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = 8100\nredis_uri = 'redis://db'\n", "unknown setting(s): redis_uri"),
        ("port = [", "not valid TOML"),
        ('port = "eighty"\n', "SYNCD_PORT (--port): expected an integer"),
        ("port = 0\n", "SYNCD_PORT (--port): expected an integer from 1 to 65535"),
    ],
)
def test_a_bad_config_file_fails_in_one_line_naming_the_file_or_setting(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({}, config_file=config)
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_a_missing_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        Settings.from_env({CONFIG_ENV: str(tmp_path / "nowhere.toml")})


LOGGED_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwb3MtMSJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.fixture
def log_to(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], io.StringIO]]:
    """``log_to(format)``: configure the hub's logging in ``format``; what it writes to stderr."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def configure(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        configure_logging("info", log_format)
        return stream

    yield configure
    root.handlers[:], level = saved
    root.setLevel(level)


def test_json_log_format_writes_one_object_per_line_with_tokens_redacted(
    log_to: Callable[[str], io.StringIO],
) -> None:
    stream = log_to("json")
    log = logging.getLogger("uvicorn.error")
    log.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws?token={LOGGED_TOKEN}")
    try:
        raise ValueError("a\nmultiline\nfailure")
    except ValueError:
        logging.getLogger("syncd").exception("it broke with %s", LOGGED_TOKEN)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "uvicorn.error"
    assert first["message"] == '127.0.0.1:5000 - "WebSocket /ws?token=<redacted>" [accepted]'
    assert second["level"] == "ERROR"
    assert "ValueError: a\nmultiline\nfailure" in second["exc"]
    assert LOGGED_TOKEN not in stream.getvalue()


def test_text_log_format_keeps_one_line_per_record_and_redacts_tokens(
    log_to: Callable[[str], io.StringIO],
) -> None:
    stream = log_to("text")
    logging.getLogger("syncd").warning("peer sent\n%s", LOGGED_TOKEN)
    assert stream.getvalue().count("\n") == 1
    assert LOGGED_TOKEN not in stream.getvalue()
    assert "<redacted-token>" in stream.getvalue()
