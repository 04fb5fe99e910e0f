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
    admission_timeout_seconds: float = Field(5.0, description="How long classify waits for its admission check")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413")
    # Rate limits in the `limits` notation ("30/minute", "5/second;100/hour"); per client address for the
    # auth routes, per user elsewhere. Shared by all replicas through Redis when REDIS_URL is set.
    rate_limit_login: str = "30/minute"
    rate_limit_refresh: str = "60/minute"
    rate_limit_mfa: str = Field("10/minute", description="MFA code submissions (verify, enrol, disable)")
    rate_limit_classify: str = "100000/minute"
    rate_limit_export: str = Field("10/minute", description="Exports (any route whose path ends in /export)")
    rate_limit_default: str = "1200/minute"
    rate_limit_namespace: str = Field("clinomic", description="Prefix of the rate-limit keys in Redis")
    port: int = 8000

    def check_secrets(self) -> None:
        fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    def phi_keys(self) -> list[bytes]:
        return fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
