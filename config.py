"""Configuration, read once from the environment and a `.env` file."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from handlers.origins import parse_origin

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
PROJECT_DIR = Path(__file__).resolve().parent


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


@dataclass(frozen=True)
class Config:
    server_port: int = 6080
    server_host: str = ""
    max_connections: int = 0  # 0: derived from the open-file limit at start-up
    idle_timeout: timedelta = timedelta(seconds=10)
    body_timeout: timedelta = timedelta(seconds=30)
    livekit_api_key: str = DEV_API_KEY
    livekit_api_secret: str = DEV_API_SECRET
    livekit_url: str = "ws://localhost:7880"
    livekit_webhook_keys: tuple[tuple[str, str], ...] = ()  # more (key, secret) pairs webhooks may use
    cors_allowed_origins: tuple[str, ...] = ("*",)
    token_ttl: timedelta = timedelta(hours=6)
    token_auth_secret: str = ""
    token_rate_limit: int = 120
    trust_proxy_headers: bool = False
    public_origins: tuple[str, ...] = ()
    token_client_fields: tuple[str, ...] = CLIENT_SETTABLE
    room_name_pattern: str = ""
    name_max_length: int = 256
    token_room_config_fields: tuple[str, ...] = ("agents",)
    events_db: str = str(PROJECT_DIR / "data" / "events.sqlite3")
    events_keep: int = 10_000
    events_replay: int = 100
    events_allowed_origins: tuple[str, ...] = ()
    events_socket_queue: int = 1_000
    events_redis_url: str = ""
    events_auth_secret: str = ""
    events_send_timeout: timedelta = timedelta(seconds=20)
    app_env: str = "development"
    event_loop: str = "uvloop"
    log_level: str = "INFO"
    # Rooms and moderation: the server-side LiveKit URL, the admin API, identity collisions.
    livekit_api_url: str = ""  # empty: LIVEKIT_URL with http(s) for ws(s)
    admin_secret: str = ""  # empty: the admin API is off, but for the demo page in development
    identity_conflict: str = "replace"
    rooms_reconcile_seconds: int = 30
    # Extensions: the adopter's modules, event handler retries.
    app_extensions: tuple[str, ...] = ()
    event_handler_max_attempts: int = 5
    event_handler_retry_seconds: float = 1.0
    event_handler_claim_seconds: int = 60
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

        def text(name: str, default: str) -> str:
            value = values.get(name, "").strip()
            if not value.isascii() and not _is_utf8(value):
                raise ConfigError(f"{name} is not valid UTF-8 text; set it again in UTF-8")
            return value or default

        def listed(name: str, default: str) -> str:
            # Unset: the default; set but empty: an empty list, never "everything".
            return values[name].strip() if name in values else default

        config = cls(
            server_port=_integer(values, "SERVER_PORT", 6080, low=1, high=65535),
            server_host=text("SERVER_HOST", ""),
            max_connections=_integer(values, "MAX_CONNECTIONS", 0, low=0),
            idle_timeout=_duration(text("IDLE_TIMEOUT", "10s"), "IDLE_TIMEOUT"),
            body_timeout=_duration(text("BODY_TIMEOUT", "30s"), "BODY_TIMEOUT"),
            livekit_api_key=text("LIVEKIT_API_KEY", DEV_API_KEY),
            livekit_api_secret=text("LIVEKIT_API_SECRET", DEV_API_SECRET),
            livekit_url=_url(text("LIVEKIT_URL", "ws://localhost:7880"), "LIVEKIT_URL"),
            livekit_webhook_keys=_key_pairs(values.get("LIVEKIT_WEBHOOK_KEYS", "")),
            cors_allowed_origins=_origins(listed("CORS_ALLOWED_ORIGINS", "*")),
            token_ttl=_duration(text("TOKEN_TTL", "6h"), "TOKEN_TTL"),
            token_auth_secret=text("TOKEN_AUTH_SECRET", ""),
            token_rate_limit=_integer(values, "TOKEN_RATE_LIMIT", 120, low=0),
            trust_proxy_headers=_flag(text("TRUST_PROXY_HEADERS", "false"), "TRUST_PROXY_HEADERS"),
            public_origins=_public_origins(text("PUBLIC_ORIGINS", "")),
            token_client_fields=_fields(listed("TOKEN_CLIENT_FIELDS", ",".join(cls.token_client_fields))),
            room_name_pattern=_pattern(text("ROOM_NAME_PATTERN", "")),
            name_max_length=_integer(values, "NAME_MAX_LENGTH", 256, low=1, high=4096),
            token_room_config_fields=_room_config_fields(text("TOKEN_ROOM_CONFIG_FIELDS", "agents")),
            events_db=text("EVENTS_DB", cls.events_db),
            events_keep=_integer(values, "EVENTS_KEEP", 10_000, low=1, high=STORE_INTEGER_MAX),
            events_replay=_integer(values, "EVENTS_REPLAY", 100, low=0, high=STORE_INTEGER_MAX),
            events_allowed_origins=_origins(text("EVENTS_ALLOWED_ORIGINS", "")),
            events_socket_queue=_integer(values, "EVENTS_SOCKET_QUEUE", 1_000, low=1),
            events_redis_url=_redis_url(text("EVENTS_REDIS_URL", "")),
            events_auth_secret=_bearer_secret(text("EVENTS_AUTH_SECRET", ""), "EVENTS_AUTH_SECRET"),
            events_send_timeout=_duration(text("EVENTS_SEND_TIMEOUT", "20s"), "EVENTS_SEND_TIMEOUT"),
            app_env=_choice(text("APP_ENV", "development").lower(), "APP_ENV", APP_ENVS),
            log_level=_choice(
                text("LOG_LEVEL", "INFO").upper(), "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            event_loop=_choice(text("EVENT_LOOP", "uvloop").lower(), "EVENT_LOOP", ("uvloop", "asyncio")),
            livekit_api_url=_url(text("LIVEKIT_API_URL", ""), "LIVEKIT_API_URL"),
            admin_secret=text("ADMIN_SECRET", ""),
            identity_conflict=_choice(
                text("IDENTITY_CONFLICT", "replace").lower(), "IDENTITY_CONFLICT", IDENTITY_CONFLICTS
            ),
            rooms_reconcile_seconds=_integer(values, "ROOMS_RECONCILE_SECONDS", 30, low=1, high=86_400),
            app_extensions=_modules(text("APP_EXTENSIONS", "")),
            event_handler_max_attempts=_integer(values, "EVENT_HANDLER_MAX_ATTEMPTS", 5, low=1, high=100),
            event_handler_retry_seconds=_seconds(
                text("EVENT_HANDLER_RETRY_SECONDS", "1"), "EVENT_HANDLER_RETRY_SECONDS"
            ),
            event_handler_claim_seconds=_integer(values, "EVENT_HANDLER_CLAIM_SECONDS", 60, low=1),
            environ=values,
        )
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


# The stores take these counts as 64-bit integers: beyond, every replay failed with an OverflowError.
STORE_INTEGER_MAX = 2**63 - 1


def _integer(
    values: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if number < low or (high is not None and number > high):
        raise ConfigError(f"{name} must be between {low} and {high or 'any'}, not {number}")
    return number


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


def _choice(raw: str, name: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _flag(raw: str, name: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _fields(raw: str) -> tuple[str, ...]:
    fields = tuple(field.strip() for field in raw.split(",") if field.strip() and field.strip() != "none")
    unknown = set(fields) - set(CLIENT_SETTABLE)
    if unknown:
        raise ConfigError(f"TOKEN_CLIENT_FIELDS may list {', '.join(CLIENT_SETTABLE)}; not {sorted(unknown)}")
    return fields


def _room_config_fields(raw: str) -> tuple[str, ...]:
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


def _key_pairs(raw: str) -> tuple[tuple[str, str], ...]:
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


def _pattern(raw: str) -> str:
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


def _redis_url(raw: str) -> str:
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


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


def _public_origins(raw: str) -> tuple[str, ...]:
    origins = _origins(raw)
    for origin in origins:
        if parse_origin(origin) is None:
            raise ConfigError(
                "PUBLIC_ORIGINS lists the origins of this server's pages, such as "
                f"https://app.example.com (scheme, host, port if not the default; no path), not {origin!r}"
            )
    return origins


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _modules(raw: str) -> tuple[str, ...]:
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
