"""Settings every service reads from the environment, and the start-up check that refuses bad secrets."""

from __future__ import annotations

import base64
import sys
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, FilePath, SecretStr, ValidationError, model_validator
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
    kafka_background_fetch_max_wait_ms: int = Field(
        500, ge=1, le=1000, description="Long-poll ceiling of consumers off the classify path (ledger, caches, "
        "analytics copy); an idle consumer costs one fetch per ceiling (docs/decisions.md)")
    kafka_idle_fetch_max_wait_ms: int = Field(
        50, ge=1, le=1000, description="Long-poll ceiling of a classify-path consumer after a quiet spell; the first "
        "record after it waits up to this long once (docs/decisions.md, \"Polling that rests\")")
    kafka_topic_partitions: int = Field(4, ge=1, description="Partitions of each topic this service creates")
    kafka_topic_replication_factor: int = Field(
        1, ge=1, description="Replicas of each topic this service creates (1: one broker; 3 in production)")
    # Connection security of every Kafka client (docs/deployment.md, "Kafka").
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = Field(None, description="Brokers' CA bundle (PEM); unset: system's")
    kafka_ssl_certfile: FilePath | None = Field(None, description="Client certificate (PEM): mutual TLS")
    kafka_ssl_keyfile: FilePath | None = Field(None, description="Its key (PEM) unless in the certificate")
    # PostgreSQL TLS: libpq's own variables, which asyncpg reads itself on every connection (and pg_dump too);
    # declared here so that a bad value stops the service at start with one line.
    pgsslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    pgsslrootcert: FilePath | None = Field(None, description="CA certificate (PEM) of the server's")
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

    @model_validator(mode="after")
    def _consistent_transport_security(self) -> CommonSettings:
        protocol = self.kafka_security_protocol
        sasl = {"KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
                "KAFKA_SASL_USERNAME": self.kafka_sasl_username,
                "KAFKA_SASL_PASSWORD": self.kafka_sasl_password}
        tls = {"KAFKA_SSL_CAFILE": self.kafka_ssl_cafile, "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
               "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile}
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if not value]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        elif unused := [name for name, value in sasl.items() if value]:
            raise ValueError(f"{', '.join(unused)} set, but KAFKA_SECURITY_PROTOCOL={protocol} "
                             "sends no credentials")
        if not protocol.endswith("SSL") and (unused := [name for name, value in tls.items() if value]):
            raise ValueError(f"{', '.join(unused)} set, but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE")
        if self.pgsslmode in ("verify-ca", "verify-full") and not self.pgsslrootcert:
            raise ValueError(f"PGSSLMODE={self.pgsslmode} needs PGSSLROOTCERT (the server's CA)")
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


def settings_problem(error: ValidationError) -> str:
    """One line naming each invalid variable and why, without its value (it may be a secret)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


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
    except ValidationError as error:
        print(f"{service}: refusing to start: {settings_problem(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings
