"""Settings: every knob of the hub, read from HUB_* environment variables.

Built by `create_app()` and the CLI, never at import time, so tests and tools
can construct several hubs with different settings in one process.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .durations import parse_duration
from .errors import ConfigError

HS_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The `aud` every token must carry unless HUB_JWT_AUDIENCE says otherwise (docs/adr/0008-dev-mode-and-audience.md).
DEFAULT_AUDIENCE = "zepix-hub"


class Settings(BaseSettings):
    """The hub's configuration. See the README's configuration table for the meaning of each field."""

    # inf/nan are never a sane duration or rate, and `Infinity` in a JSON frame is rejected by browsers.
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore", populate_by_name=True, allow_inf_nan=False)

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("HUB_DATABASE_URL", "DATABASE_URL", "database_url")
    )
    data_dir: Path = Path(".zepix-hub")
    auto_migrate: bool = True
    # Dev mode is asked for (`serve --demo`/`--dev`, HUB_DEV=true), never inferred, and refused on a
    # non-loopback bind unless forced: it mints week-long all-topics tokens and prints one.
    dev: bool = False
    dev_allow_remote: bool = False

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # TLS served by the hub itself (https://, wss://): both or neither. Behind a proxy that terminates TLS,
    # neither (docs/deploy.md).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Whose X-Forwarded-For/-Proto the hub believes (uvicorn's forwarded_allow_ips): the proxy's address only.
    # Loopback by default, as uvicorn's own default; "" trusts nobody, "*" everybody (never on a public port).
    forwarded_allow_ips: Annotated[list[str], NoDecode] = ["127.0.0.1", "::1"]

    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_audience: str | None = DEFAULT_AUDIENCE  # "" (explicitly empty) turns the check off
    jwt_issuer: str | None = None
    jwt_leeway_s: int = Field(default=0, ge=0, le=300)
    max_token_bytes: int = Field(default=4096, ge=256, le=1024 * 1024)

    allowed_origins: Annotated[list[str], NoDecode] = []

    heartbeat_s: float = Field(default=5.0, gt=0, le=86_400)
    # Counts and sizes have ceilings: resume_cap + 1 reaches SQL as a bigint LIMIT, the rest sizes memory.
    resume_cap: int = Field(default=10_000, ge=0, le=10**9)
    replay_page: int = Field(default=1000, ge=1, le=10_000)
    queue_max_frames: int = Field(default=2000, ge=1, le=10**7)
    queue_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=2**40)
    send_timeout_s: float = Field(default=2.0, gt=0, le=3600)
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024, le=2**30)
    client_rate: float = Field(default=20.0, gt=0)
    client_burst: int = Field(default=60, ge=1, le=10**6)
    ws_ping_interval_s: float = Field(default=20.0, gt=0, le=86_400)
    ws_ping_timeout_s: float = Field(default=20.0, gt=0, le=86_400)

    # The front door (docs/adr/0009-front-door-limits.md): what a stranger or one token can hold, per process.
    max_connections: int = Field(default=4096, ge=1, le=10**6)
    max_connections_per_subject: int = Field(default=100, ge=1, le=10**6)
    max_header_bytes: int = Field(default=32 * 1024, ge=4096, le=2**20)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _token_fits_in_a_header(self) -> Settings:
        # A token travels in the request head (?token=, Authorization or the subprotocol header).
        if self.max_header_bytes < self.max_token_bytes + 2048:
            raise ValueError(f"HUB_MAX_HEADER_BYTES ({self.max_header_bytes}) must be at least HUB_MAX_TOKEN_BYTES "
                             f"({self.max_token_bytes}) + 2048: the token travels in the request head")
        return self

    listener_poll_s: float = Field(default=1.0, gt=0, le=86_400)
    listener_health_s: float = Field(default=5.0, gt=0, le=86_400)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=86_400)
    pool_min: int = Field(default=1, ge=0, le=1000)
    pool_max: int = Field(default=10, ge=1, le=1000)  # asyncpg allocates a slot per connection up front

    retention: str | None = None
    snapshot_logs: int = Field(default=200, ge=0, le=10_000)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (("HUB_TLS_CERT (--tls-cert)", "HUB_TLS_KEY (--tls-key)") if self.tls_key is None
                              else ("HUB_TLS_KEY (--tls-key)", "HUB_TLS_CERT (--tls-cert)"))
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both the certificate and its key")
        return self

    @field_validator("jwt_algorithms", "allowed_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("jwt_audience")
    @classmethod
    def _audience(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"HUB_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return level

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("HUB_JWT_ALGORITHMS must name at least one algorithm")
        for alg in value:
            if alg not in HS_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"HUB_JWT_ALGORITHMS: unsupported algorithm {alg!r} ('none' is never allowed)")
        if set(value) & HS_ALGORITHMS and set(value) & ASYMMETRIC_ALGORITHMS:
            # Mixing them invites algorithm confusion (an HS256 token signed with the public key).
            raise ValueError("HUB_JWT_ALGORITHMS: do not mix HS* and RS*/ES* algorithms")
        return value

    @model_validator(mode="after")
    def _retention_parses(self) -> Settings:
        if self.retention:
            parse_duration(self.retention)
        return self

    @property
    def embedded(self) -> bool:
        """True when no database URL is set: the hub runs its own PostgreSQL in `data_dir`."""
        return not self.database_url

    @property
    def dev_mode(self) -> bool:
        """Dev mode: a random secret kept in the data dir, and a dev token printed by `serve`. Off unless asked."""
        return self.dev

    @property
    def loopback(self) -> bool:
        """True when HUB_HOST is reachable from this machine only."""
        return is_loopback(self.host)

    @property
    def tls(self) -> bool:
        """True when the hub serves https:// and wss:// itself."""
        return self.tls_cert is not None

    @property
    def symmetric(self) -> bool:
        return self.jwt_algorithms[0] in HS_ALGORITHMS


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides, turning pydantic's errors into ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; a wildcard, any other address or a host name counts as the network."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


def display_host(host: str) -> str:
    """The host part of a URL a person can open: wildcards become loopback, IPv6 gets brackets."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
