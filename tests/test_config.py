"""Configuration: defaults, the .env file, and clear errors for bad values."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from ground.config import PROJECT_DIR, Config, ConfigError


def test_defaults_work_with_an_openvidu_local_deployment() -> None:
    config = Config.from_env({}, env_file=None)
    assert (config.server_port, config.livekit_api_key, config.livekit_api_secret) == (
        6080,
        "devkey",
        "secret",
    )
    assert config.livekit_url == "ws://localhost:7880"
    assert config.cors_allowed_origins == ("*",)
    assert config.token_ttl == timedelta(hours=6)
    assert config.uses_dev_credentials


def test_env_example_gives_the_defaults() -> None:
    from_example = Config.from_env({}, env_file=PROJECT_DIR / ".env.example")
    assert from_example == replace(Config.from_env({}, env_file=None), events_db="data/events.sqlite3")


def test_process_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SERVER_PORT=7000\nLIVEKIT_URL=wss://example.livekit.cloud\nTOKEN_TTL=30m\n")
    config = Config.from_env(
        {"SERVER_PORT": "7001", "CORS_ALLOWED_ORIGINS": "http://a:5080/, null"}, env_file
    )
    assert config.server_port == 7001
    assert config.livekit_url == "wss://example.livekit.cloud"
    assert config.token_ttl == timedelta(minutes=30)
    assert config.cors_allowed_origins == ("http://a:5080", "null")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERVER_PORT", "http", "SERVER_PORT must be a whole number"),
        ("SERVER_PORT", "70000", "SERVER_PORT must be between 1 and 65535"),
        ("TOKEN_TTL", "soon", "TOKEN_TTL must be a positive duration"),
        ("TOKEN_TTL", "0", "TOKEN_TTL must be a positive duration"),
        ("TOKEN_TTL", "2d", "TOKEN_TTL may be at most 24h"),
        ("EVENTS_KEEP", "0", "EVENTS_KEEP must be between 1"),
        ("TRUST_PROXY_HEADERS", "maybe", "TRUST_PROXY_HEADERS must be true or false"),
        ("TOKEN_CLIENT_FIELDS", "video", "TOKEN_CLIENT_FIELDS may list"),
        ("ROOM_NAME_PATTERN", "([", "ROOM_NAME_PATTERN is not a valid regular expression"),
        ("TOKEN_ROOM_CONFIG_FIELDS", "agents,egres", "TOKEN_ROOM_CONFIG_FIELDS may list name, empty_timeout"),
        ("TOKEN_ROOM_CONFIG_FIELDS", "agents.agent_name", "agents.attributes; not"),
        ("LIVEKIT_WEBHOOK_KEYS", "APIold", "LIVEKIT_WEBHOOK_KEYS must be key:secret pairs"),
        ("LIVEKIT_WEBHOOK_KEYS", "a:s1, b:", "entry 2 is not"),
        ("LIVEKIT_WEBHOOK_KEYS", "a:s1,a:s2", "gives key 'a' two different secrets"),
        ("LIVEKIT_WEBHOOK_KEYS", "devkey:other", "another secret than LIVEKIT_API_SECRET"),
        ("TOKEN_TTL", "99999999999d", "TOKEN_TTL is far too long"),
        ("APP_ENV", "prod", "APP_ENV must be one of development, production, not 'prod'"),
        ("EVENTS_REDIS_URL", "localhost:6379", "EVENTS_REDIS_URL must be like redis://host:6379/0"),
        ("MAX_CONNECTIONS", "-1", "MAX_CONNECTIONS must be between 0"),
        ("IDLE_TIMEOUT", "0", "IDLE_TIMEOUT must be a positive duration"),
        ("BODY_TIMEOUT", "soon", "BODY_TIMEOUT must be a positive duration"),
        ("ROOM_NAME_PATTERN", "a{99999999999}", "ROOM_NAME_PATTERN is not a valid regular expression"),
        ("ROOM_NAME_PATTERN", "(" * 2000 + ")" * 2000, "ROOM_NAME_PATTERN is not a valid regular expression"),
        ("LIVEKIT_URL", "ws://[::1", "LIVEKIT_URL must be an http"),
        ("LIVEKIT_URL", "ws://localhost:78800", "LIVEKIT_URL must be an http"),
        ("LIVEKIT_URL", "localhost:7880", "LIVEKIT_URL must be an http"),
        ("LIVEKIT_API_URL", "http://[::1", "LIVEKIT_API_URL must be an http"),
        ("EVENTS_REPLAY", str(2**63), "EVENTS_REPLAY must be between 0 and 9223372036854775807"),
        ("EVENTS_KEEP", str(2**63), "EVENTS_KEEP must be between 1 and 9223372036854775807"),
    ],
)
def test_bad_values_say_what_to_fix(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config.from_env({variable: value}, env_file=None)


def test_production_needs_a_real_secret() -> None:
    with pytest.raises(ConfigError, match="32 characters or more"):
        Config.from_env({"APP_ENV": "production"}, env_file=None)
    with pytest.raises(ConfigError):
        Config.from_env({"APP_ENV": "production", "LIVEKIT_API_SECRET": "x" * 31}, env_file=None)
    assert (
        Config.from_env({"APP_ENV": "production", "LIVEKIT_API_SECRET": "x" * 32}, env_file=None).app_env
        == "production"
    )


def test_token_client_fields_none_allows_none() -> None:
    assert Config.from_env({"TOKEN_CLIENT_FIELDS": "none"}, env_file=None).token_client_fields == ()


def test_webhook_keys_as_livekit_server_lists_them() -> None:
    config = Config.from_env({"LIVEKIT_WEBHOOK_KEYS": "APIold: s3cr:et1,\nAPInew:secret2\n"}, env_file=None)
    assert config.livekit_webhook_keys == (("APIold", "s3cr:et1"), ("APInew", "secret2"))
    assert Config.from_env({}, env_file=None).livekit_webhook_keys == ()


def test_a_malformed_key_pair_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"LIVEKIT_WEBHOOK_KEYS": "APIkey=hunter2-secret"}, env_file=None)
    assert "hunter2" not in str(refused.value)


def test_production_needs_real_webhook_secrets() -> None:
    real = {"APP_ENV": "production", "LIVEKIT_API_KEY": "APIa", "LIVEKIT_API_SECRET": "a" * 32}
    with pytest.raises(ConfigError, match="'APIb' in LIVEKIT_WEBHOOK_KEYS must be 32 characters"):
        Config.from_env({**real, "LIVEKIT_WEBHOOK_KEYS": "APIb: short"}, env_file=None)
    assert Config.from_env({**real, "LIVEKIT_WEBHOOK_KEYS": f"APIb: {'b' * 32}"}, env_file=None).app_env


def test_room_config_fields() -> None:
    assert Config.from_env({}, env_file=None).token_room_config_fields == ("agents",)
    assert Config.from_env({"TOKEN_ROOM_CONFIG_FIELDS": "none"}, env_file=None).token_room_config_fields == ()
    fields = Config.from_env({"TOKEN_ROOM_CONFIG_FIELDS": "agents, egress, agents.deployment"}, env_file=None)
    assert fields.token_room_config_fields == ("agents", "egress", "agents.deployment")


def test_a_non_utf8_env_file_says_so(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"LIVEKIT_URL=ws://caf\xe9:7880\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        Config.from_env({}, env_file)


def test_a_line_of_the_env_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    # python-dotenv skips such a line with a warning naming neither file nor setting: a secret
    # missing its closing quote silently turned the protection it sets off.
    env_file = tmp_path / ".env"
    env_file.write_text('SERVER_PORT=7000\nTOKEN_AUTH_SECRET="s3cr3t\nADMIN_SECRET=x\n')
    with pytest.raises(ConfigError, match=r"\.env line 2 is not NAME=value") as refused:
        Config.from_env({}, env_file)
    assert "s3cr3t" not in str(refused.value)


def test_a_setting_that_is_not_utf8_says_so() -> None:
    # How Python hands over environment bytes that are not UTF-8 (here 0xE9, Latin-1 é).
    with pytest.raises(ConfigError, match="LIVEKIT_API_SECRET is not valid UTF-8"):
        Config.from_env({"LIVEKIT_API_SECRET": "caf\udce9"}, env_file=None)


def test_defaults_are_written_once() -> None:
    """from_env has no defaults of its own: unset variables give the dataclass's."""
    assert Config.from_env({}, env_file=None) == Config()


def test_every_setting_is_in_env_example_and_the_operating_page() -> None:
    from dataclasses import fields

    example = (PROJECT_DIR / ".env.example").read_text()
    operating = (PROJECT_DIR / "docs" / "operating.md").read_text()
    variables = [spec.name.upper() for spec in fields(Config) if "parse" in spec.metadata]
    assert [name for name in variables if f"\n{name}=" not in example] == []
    assert [name for name in variables if f"| `{name}`" not in operating] == []
