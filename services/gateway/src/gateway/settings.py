"""Gateway settings (environment variables; see `.env.example`)."""

from pydantic import Field, SecretStr

from shared.events.batch import MAX_BATCH_ROWS, MAX_CHUNK_ROWS
from gateway.middleware import Networks, trusted_networks
from shared.settings import CommonSettings, SecretProblem, fernet_keys


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
    forwarded_allow_ips: str = Field(
        "", description="Our reverse proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For "
                        "is believed; empty: the header is ignored and the peer is the client")
    # Bulk screening (docs/bulk-screening.md)
    batch_max_rows: int = Field(MAX_BATCH_ROWS, ge=1, le=MAX_BATCH_ROWS, description="Rows one upload may hold")
    batch_max_body_bytes: int = Field(64 * 1_048_576, ge=1024, description="Larger batch uploads get 413")
    batch_chunk_rows: int = Field(250, ge=1, le=MAX_CHUNK_ROWS,
                                  description="Rows per ScreeningBatchRequested message (≤ 300: 1 MB messages)")
    batch_admission_timeout_seconds: float = Field(
        120.0, description="How long an upload waits for the bulk admission check")
    batch_publish_wait_seconds: float = Field(
        30.0, description="How long an upload waits for its chunks to be published before answering anyway")
    batch_redeliver_after_seconds: float = Field(
        30.0, description="Re-publish unrecorded chunks once no chunk has been recorded for this long")
    # Rate limits in the `limits` notation ("30/minute", "5/second;100/hour"); per client address for the
    # auth routes (logins also per account), per user elsewhere. Shared by all replicas through Redis when REDIS_URL is set.
    rate_limit_login: str = "30/minute"
    rate_limit_login_account: str = Field("20/minute", description="Logins per account (username), any address")
    rate_limit_refresh: str = "60/minute"
    rate_limit_mfa: str = Field("10/minute", description="MFA code submissions (verify, enrol, disable)")
    rate_limit_classify: str = "100000/minute"
    rate_limit_export: str = Field("10/minute", description="Exports (any route whose path ends in /export)")
    rate_limit_default: str = "1200/minute"
    rate_limit_namespace: str = Field("clinomic", description="Prefix of the rate-limit keys in Redis")
    port: int = 8000

    def check_secrets(self) -> None:
        fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")
        try:
            self.trusted_proxies()
        except ValueError:
            raise SecretProblem("FORWARDED_ALLOW_IPS must be addresses or CIDR networks, comma-separated") from None

    def trusted_proxies(self) -> Networks:
        return trusted_networks(self.forwarded_allow_ips)

    def phi_keys(self) -> list[bytes]:
        return fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
