"""Gateway settings (environment variables; see `.env.example`)."""

from pydantic import Field, SecretStr

from shared.settings import CommonSettings, fernet_keys


class GatewaySettings(CommonSettings):
    master_encryption_key: SecretStr | None = None
    auth_url: str = "http://127.0.0.1:8001"
    screening_url: str = "http://127.0.0.1:8002"
    audit_url: str = "http://127.0.0.1:8003"
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS")
    redis_url: str | None = None
    classify_wait_seconds: float = Field(5.0, description="How long classify waits before answering 202")
    redeliver_after_seconds: float = Field(15.0, description="Re-publish accepted screenings not recorded by then")
    max_body_bytes: int = 1_048_576
    rate_limit_login: str = "30/minute"
    rate_limit_refresh: str = "60/minute"
    rate_limit_classify: str = "100000/minute"
    rate_limit_default: str = "1200/minute"
    port: int = 8000

    def check_secrets(self) -> None:
        fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    def phi_keys(self) -> list[bytes]:
        return fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
