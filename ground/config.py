"""Configuration, read once from the environment and a `.env` file."""

from __future__ import annotations

import io
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
PROJECT_DIR = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value the server cannot run with; the message says which."""


MAX_TOKEN_TTL = timedelta(hours=24)
APP_ENVS = ("development", "production")
# Fields of the standard token request that TOKEN_CLIENT_FIELDS can let clients set.
CLIENT_SETTABLE = ("participant_metadata", "participant_attributes", "room_config")
# What clients may always ask of an agent dispatch in room_config (with `agents` allowed).
DISPATCH_FIELDS = ("agent_name", "metadata")
# What /token does when the identity asked for is in the room already (rooms/admission.py).
IDENTITY_CONFLICTS = ("replace", "reject", "suffix")
# The stores take these counts as 64-bit integers: beyond, every replay failed with an OverflowError.
STORE_INTEGER_MAX = 2**63 - 1


Parse = Callable[[str, str], Any]  # (raw text, variable name) -> value, or ConfigError


def setting(default: Any, parse: Parse, empty_is_a_value: bool = False) -> Any:
    """A Config field read from the variable of the same name in capitals, written once:
    its default here, its parser beside it. Unset or empty means the default, except where
    `empty_is_a_value` (lists, where empty means none, never "everything")."""
    return field(default=default, metadata={"parse": parse, "empty_is_a_value": empty_is_a_value})


def text(raw: str, name: str) -> str:
    return raw


def integer(low: int = 0, high: int | None = None) -> Parse:
    def parse(raw: str, name: str) -> int:
        try:
            number = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
        if number < low or (high is not None and number > high):
            raise ConfigError(f"{name} must be between {low} and {high or 'any'}, not {number}")
        return number

    return parse


def choice(*choices: str, case: Callable[[str], str] = str.lower) -> Parse:
    def parse(raw: str, name: str) -> str:
        value = case(raw)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    return parse


_DURATION = re.compile(r"^(\d{1,12})\s*([smhd]?)$", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(raw: str, name: str) -> timedelta:
    """Accept `3600`, `90s`, `30m`, `6h` or `1d`."""
    match = _DURATION.match(raw.lower())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"{name} must be a positive duration such as 3600, 30m or 6h, not {raw[:40]!r}")
    try:
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        raise ConfigError(f"{name} is far too long ({raw}); use a duration such as 30m or 6h") from None


MAX_WORKERS = 64


def usable_cores() -> int:
    """How many cores this process may run on (its CPU affinity, where there is one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers(raw: str, name: str) -> int:
    """A number of worker processes, or `auto`: one per core this process may run on."""
    if raw.strip().lower() == "auto":
        return min(MAX_WORKERS, usable_cores())
    return integer(1, MAX_WORKERS)(raw, name)


def _flag(raw: str, name: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _fields(raw: str, name: str) -> tuple[str, ...]:
    fields = tuple(field.strip() for field in raw.split(",") if field.strip() and field.strip() != "none")
    unknown = set(fields) - set(CLIENT_SETTABLE)
    if unknown:
        raise ConfigError(f"TOKEN_CLIENT_FIELDS may list {', '.join(CLIENT_SETTABLE)}; not {sorted(unknown)}")
    return fields


def _room_config_fields(raw: str, name: str) -> tuple[str, ...]:
    """Fields of LiveKit's RoomConfiguration (snake_case), or `agents.<field>` of a dispatch."""
    from livekit.protocol.agent_dispatch import RoomAgentDispatch
    from livekit.protocol.room import RoomConfiguration

    known = [field.name for field in RoomConfiguration.DESCRIPTOR.fields]
    known += [
        f"agents.{field.name}"
        for field in RoomAgentDispatch.DESCRIPTOR.fields
        if field.name not in DISPATCH_FIELDS
    ]
    fields = tuple(field.strip() for field in raw.split(",") if field.strip() and field.strip() != "none")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"TOKEN_ROOM_CONFIG_FIELDS may list {', '.join(known)}; not {unknown}")
    return fields


def _key_pairs(raw: str, name: str) -> tuple[tuple[str, str], ...]:
    """`key1: secret1, key2: secret2` (commas or newlines), as livekit-server's `keys` lists them."""
    pairs: dict[str, str] = {}
    for number, entry in enumerate(re.split(r"[,\n]", raw), start=1):
        if not entry.strip():
            continue
        key, colon, secret = (part.strip() for part in entry.partition(":"))
        if not (key and colon and secret):
            # Never echo the entry: it may hold a secret.
            raise ConfigError(
                f"LIVEKIT_WEBHOOK_KEYS must be key:secret pairs separated by commas; entry {number} is not"
            )
        if pairs.get(key, secret) != secret:
            raise ConfigError(f"LIVEKIT_WEBHOOK_KEYS gives key {key!r} two different secrets")
        pairs[key] = secret
    return tuple(pairs.items())


def _pattern(raw: str, name: str) -> str:
    try:
        re.compile(raw)
    except (re.error, OverflowError, RecursionError) as error:  # a{99999999999}; thousands of nested groups
        raise ConfigError(f"ROOM_NAME_PATTERN is not a valid regular expression: {error}") from None
    return raw


def _is_utf8(value: str) -> bool:
    # Environment bytes that are not UTF-8 arrive as lone surrogates, which nothing can encode.
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _redis_url(raw: str, name: str) -> str:
    if raw:
        from redis.connection import parse_url

        try:
            parse_url(raw)  # type: ignore[no-untyped-call]
        except ValueError as error:  # its messages never quote the URL (and its password)
            raise ConfigError(f"EVENTS_REDIS_URL must be like redis://host:6379/0: {error}") from None
    return raw


def _read_env_file(path: Path) -> dict[str, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror}); make it readable or remove it") from None
    # python-dotenv would skip a line it cannot parse (an unclosed quote) and leave that setting off.
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"{path} line {binding.original.line} is not NAME=value (an unclosed quote?); fix that line"
            )
    return dotenv_values(stream=io.StringIO(text))


_BEARER_SECRET = re.compile(r"[A-Za-z0-9._~-]+", re.ASCII)


def _bearer_secret(raw: str, name: str) -> str:
    # Browsers send it as a WebSocket subprotocol, which allows only these characters.
    if raw and not _BEARER_SECRET.fullmatch(raw):
        raise ConfigError(f"{name} may contain only letters, digits and . _ ~ - (try: openssl rand -hex 32)")
    return raw


def _origins(raw: str, name: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


def _public_origins(raw: str, name: str) -> tuple[str, ...]:
    origins = _origins(raw, name)
    for origin in origins:
        if parse_origin(origin) is None:
            raise ConfigError(
                "PUBLIC_ORIGINS lists the origins of this server's pages, such as "
                f"https://app.example.com (scheme, host, port if not the default; no path), not {origin!r}"
            )
    return origins


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _modules(raw: str, name: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if not _MODULE.fullmatch(name):
            raise ConfigError(f"APP_EXTENSIONS lists importable module names (a.b,c), not {name!r}")
    return names


def _url(raw: str, name: str) -> str:
    if raw and not (re.match(r"^(https?|wss?)://[^/]", raw, flags=re.IGNORECASE) and _parses(raw)):
        raise ConfigError(f"{name} must be an http(s) or ws(s) URL such as http://livekit:7880, not {raw!r}")
    return raw


def _parses(url: str) -> bool:
    # An unclosed IPv6 bracket or a port beyond 65535 only fails when livekit-api or a page parses it.
    try:
        port = urlsplit(url).port
    except ValueError:
        return False
    return port != 0


def _seconds(raw: str, name: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1
    if not 0 < seconds <= 3600:
        raise ConfigError(f"{name} must be a number of seconds from 0.001 to 3600, not {raw!r}")
    return seconds


@dataclass(frozen=True)
class Config:
    server_port: int = setting(6080, integer(1, 65535))
    server_host: str = setting("", text)
    workers: int = setting(1, _workers)
    workers_pinned: str = setting("auto", choice("auto", "true", "false"))
    max_connections: int = setting(0, integer(0))  # 0: derived from the open-file limit at start-up
    idle_timeout: timedelta = setting(timedelta(seconds=10), _duration)
    body_timeout: timedelta = setting(timedelta(seconds=30), _duration)
    livekit_api_key: str = setting(DEV_API_KEY, text)
    livekit_api_secret: str = setting(DEV_API_SECRET, text)
    livekit_url: str = setting("ws://localhost:7880", _url)
    # More (key, secret) pairs webhooks may be signed with.
    livekit_webhook_keys: tuple[tuple[str, str], ...] = setting((), _key_pairs)
    cors_allowed_origins: tuple[str, ...] = setting(("*",), _origins, empty_is_a_value=True)
    token_ttl: timedelta = setting(timedelta(hours=6), _duration)
    token_auth_secret: str = setting("", text)
    token_rate_limit: int = setting(120, integer(0))
    trust_proxy_headers: bool = setting(False, _flag)
    public_origins: tuple[str, ...] = setting((), _public_origins)
    token_client_fields: tuple[str, ...] = setting(CLIENT_SETTABLE, _fields, empty_is_a_value=True)
    room_name_pattern: str = setting("", _pattern)
    name_max_length: int = setting(256, integer(1, 4096))
    token_room_config_fields: tuple[str, ...] = setting(("agents",), _room_config_fields)
    events_db: str = setting(str(PROJECT_DIR / "data" / "events.sqlite3"), text)
    events_keep: int = setting(10_000, integer(1, STORE_INTEGER_MAX))
    events_replay: int = setting(100, integer(0, STORE_INTEGER_MAX))
    events_allowed_origins: tuple[str, ...] = setting((), _origins)
    events_socket_queue: int = setting(1_000, integer(1))
    # A webhook body is at most 1 MiB: a socket may always have one such event waiting.
    events_socket_queue_bytes: int = setting(8 * 1024 * 1024, integer(2 * 1024 * 1024))
    events_redis_url: str = setting("", _redis_url)
    events_auth_secret: str = setting("", _bearer_secret)
    events_send_timeout: timedelta = setting(timedelta(seconds=20), _duration)
    app_env: str = setting("development", choice(*APP_ENVS))
    event_loop: str = setting("uvloop", choice("uvloop", "asyncio"))
    log_level: str = setting("INFO", choice("DEBUG", "INFO", "WARNING", "ERROR", case=str.upper))
    # Rooms and moderation: the server-side LiveKit URL, the admin API, identity collisions.
    livekit_api_url: str = setting("", _url)  # empty: LIVEKIT_URL with http(s) for ws(s)
    admin_secret: str = setting("", text)  # empty: the admin API is off, but for the demo page in development
    identity_conflict: str = setting("replace", choice(*IDENTITY_CONFLICTS))
    rooms_reconcile_seconds: int = setting(30, integer(1, 86_400))
    livekit_timeout: float = setting(5.0, _seconds)  # every call to LiveKit's API, slot wait included
    # Extensions: the adopter's modules, event handler retries.
    app_extensions: tuple[str, ...] = setting((), _modules)
    event_handler_max_attempts: int = setting(5, integer(1, 100))
    event_handler_retry_seconds: float = setting(1.0, _seconds)
    event_handler_claim_seconds: int = setting(60, integer(1))
    event_handler_stuck_seconds: float = setting(60.0, _seconds)  # a log line when one waits longer
    # Observability: /metrics, its readers, the log format.
    metrics_enabled: bool = setting(True, _flag)
    metrics_auth_secret: str = setting("", text)
    metrics_port: int = setting(0, integer(0, 65535))  # 0: /metrics on SERVER_PORT
    log_format: str = setting("text", choice("text", "json"))
    # Every variable of the environment and .env, for extensions' own settings.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def uses_dev_credentials(self) -> bool:
        return self.livekit_api_secret == DEV_API_SECRET

    @property
    def livekit_http_url(self) -> str:
        """Where this server calls LiveKit's API (RoomService...): LIVEKIT_API_URL, else LIVEKIT_URL."""
        url = self.livekit_api_url or self.livekit_url
        return re.sub(r"^ws(s?)://", r"http\1://", url, flags=re.IGNORECASE)

    def setting(self, name: str, default: str = "") -> str:
        """An extension's own setting, from the environment or `.env`, trimmed."""
        return self.environ.get(name, "").strip() or default

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Config:
        """Build the config; process variables win over the `.env` file."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in _read_env_file(Path(env_file)).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        chosen: dict[str, Any] = {}
        for spec in fields(cls):
            name, raw = spec.name.upper(), values.get(spec.name.upper())
            if "parse" not in spec.metadata or raw is None:
                continue
            raw = raw.strip()
            if not raw.isascii() and not _is_utf8(raw):
                raise ConfigError(f"{name} is not valid UTF-8 text; set it again in UTF-8")
            if raw or spec.metadata["empty_is_a_value"]:
                chosen[spec.name] = spec.metadata["parse"](raw, name)
        config = cls(**chosen, environ=values)
        config.check()
        return config

    def check(self) -> None:
        if self.token_ttl > MAX_TOKEN_TTL:
            raise ConfigError("TOKEN_TTL may be at most 24h: LiveKit clients refresh tokens while connected")
        for key, secret in self.livekit_webhook_keys:
            if key == self.livekit_api_key and secret != self.livekit_api_secret:
                raise ConfigError(
                    f"LIVEKIT_WEBHOOK_KEYS gives key {key!r} another secret than LIVEKIT_API_SECRET"
                )
        if self.workers > 1 and not self.events_redis_url and self.events_db == ":memory:":
            raise ConfigError(
                "EVENTS_DB=:memory: is a log in each process: with WORKERS above 1, "
                "give EVENTS_DB a file (or set EVENTS_REDIS_URL)"
            )
        if self.metrics_port and self.metrics_port == self.server_port:
            raise ConfigError("METRICS_PORT must differ from SERVER_PORT (or be 0: /metrics on SERVER_PORT)")
        if self.metrics_port and not self.metrics_enabled:
            raise ConfigError("METRICS_PORT is set but METRICS_ENABLED=false: unset one of them")
        if self.app_env != "production":
            return
        if self.admin_secret and len(self.admin_secret) < 32:
            raise ConfigError(
                "APP_ENV=production needs an ADMIN_SECRET of 32 characters or more "
                "(or none: the admin API is then off)"
            )
        if self.uses_dev_credentials or len(self.livekit_api_secret) < 32:
            raise ConfigError(
                "APP_ENV=production needs a real API secret: set LIVEKIT_API_KEY and "
                "LIVEKIT_API_SECRET (32 characters or more) to the keys of your LiveKit server"
            )
        for key, secret in self.livekit_webhook_keys:
            if secret == DEV_API_SECRET or len(secret) < 32:
                raise ConfigError(
                    f"APP_ENV=production needs real secrets: the secret of {key!r} in "
                    "LIVEKIT_WEBHOOK_KEYS must be 32 characters or more"
                )
        if self.events_auth_secret and len(self.events_auth_secret) < 32:
            raise ConfigError("APP_ENV=production needs an EVENTS_AUTH_SECRET of 32 characters or more")


# --- origins (PUBLIC_ORIGINS, CORS_ALLOWED_ORIGINS, and each request's Origin in handlers/) ---

DEFAULT_PORTS = {"http": 80, "https": 443}
# (scheme, host, port) of a page; the host lowercased, IPv6 without brackets.
Origin = tuple[str, str, int]


def parse_origin(text: str) -> Origin | None:
    """`https://App.example.com` -> ("https", "app.example.com", 443); None when it is not
    an http(s) origin (`null`, a path, user info, a bad port)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return parts.scheme, canonical_host(parts.hostname), DEFAULT_PORTS[parts.scheme] if port is None else port


def canonical_host(host: str) -> str:
    host = host.lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
