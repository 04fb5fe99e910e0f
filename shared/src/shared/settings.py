"""Settings every service reads from the environment, and the start-up check that refuses bad secrets."""

from __future__ import annotations

import base64
import sys
from typing import Any
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SecretProblem(ValueError):
    """A required secret is missing or unusable; the message is one line and never contains the secret."""


class CommonSettings(BaseSettings):
    """Environment shared by all services (see `.env.example`)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    debug: bool = Field(False, description="Development mode: interactive docs, verbose logs")
    database_url: str | None = None
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    postgres_db: str = "clinomic"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_fetch_max_wait_ms: int = Field(5, description="Long-poll ceiling of consumers; low keeps hops fast")
    kafka_topic_partitions: int = Field(4, description="Partitions of each topic this service creates")
    auth_jwks_url: str = "http://127.0.0.1:8001/api/auth/jwks"
    jwt_issuer: str = "clinomic-auth"
    jwt_audience: str = "clinomic"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _resolve_database_url(self) -> CommonSettings:
        if not self.database_url:
            password = self.postgres_password.get_secret_value()
            auth = quote(self.postgres_user) + (f":{quote(password)}" if password else "")
            self.database_url = (
                f"postgresql+asyncpg://{auth}@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"
            )
        elif self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+asyncpg://" + self.database_url.removeprefix("postgresql://")
        return self

    @property
    def dsn(self) -> str:
        assert self.database_url is not None
        return self.database_url


def fernet_keys(raw: SecretStr | None, name: str) -> list[bytes]:
    """Parse a comma-separated list of Fernet keys, newest first (for MultiFernet rotation)."""
    if raw is None or not raw.get_secret_value().strip():
        raise SecretProblem(f"{name} is not set")
    keys = [k.strip().encode() for k in raw.get_secret_value().split(",") if k.strip()]
    for key in keys:
        try:
            decoded = base64.urlsafe_b64decode(key)
        except ValueError:
            decoded = b""
        if len(decoded) != 32:
            raise SecretProblem(f"{name} must be url-safe base64 Fernet keys (32 bytes each), comma-separated")
    return keys


def signing_key(raw: SecretStr | None, name: str, *, min_bytes: int = 32) -> bytes:
    if raw is None or not raw.get_secret_value():
        raise SecretProblem(f"{name} is not set")
    value = raw.get_secret_value().encode()
    if len(value) < min_bytes:
        raise SecretProblem(f"{name} must be at least {min_bytes} bytes of random data")
    return value


def load_or_exit(settings_cls: type[Any], service: str) -> Any:
    """Build settings and run their ``check_secrets``; on a problem print one line and exit with status 2."""
    try:
        settings = settings_cls()
        check = getattr(settings, "check_secrets", None)
        if check is not None:
            check()
    except SecretProblem as problem:
        print(f"{service}: refusing to start: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings
