"""Screening service settings (environment variables; see `.env.example`)."""

from pydantic import Field, SecretStr

from shared.settings import CommonSettings, fernet_keys, signing_key


class ScreeningSettings(CommonSettings):
    master_encryption_key: SecretStr | None = Field(
        None, description="Fernet keys for patient names and consent texts, comma-separated, newest first")
    phi_blind_index_key: SecretStr | None = Field(
        None, description="HMAC key (≥ 32 bytes) of the blind index used for exact-match name search")
    analytics_pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key (≥ 32 bytes) of the pseudonymous patient keys on the analytics stream")
    inference_url: str = Field("http://127.0.0.1:8004", description="The inference worker (model card)")
    inference_timeout_seconds: float = Field(
        2.0, description="How long the analytics summary waits for the model card before leaving it out")
    record_batch_size: int = 500
    outbox_redeliver_after_seconds: float = Field(
        5.0, description="Re-publish record events still in the outbox after this long")
    port: int = 8002

    def check_secrets(self) -> None:
        fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")
        signing_key(self.phi_blind_index_key, "PHI_BLIND_INDEX_KEY")
        signing_key(self.analytics_pseudonym_key, "ANALYTICS_PSEUDONYM_KEY")

    def phi_keys(self) -> list[bytes]:
        return fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    def blind_index_key(self) -> bytes:
        return signing_key(self.phi_blind_index_key, "PHI_BLIND_INDEX_KEY")

    def pseudonym_key(self) -> bytes:
        return signing_key(self.analytics_pseudonym_key, "ANALYTICS_PSEUDONYM_KEY")
