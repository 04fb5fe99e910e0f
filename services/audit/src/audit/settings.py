"""Audit service settings (environment variables; see `.env.example`)."""

from pydantic import SecretStr

from shared.settings import CommonSettings, signing_key


class AuditSettings(CommonSettings):
    audit_signing_key: SecretStr | None = None
    audit_key_id: str = "k1"
    append_batch_size: int = 1000
    port: int = 8003

    def check_secrets(self) -> None:
        signing_key(self.audit_signing_key, "AUDIT_SIGNING_KEY")

    def hmac_key(self) -> bytes:
        return signing_key(self.audit_signing_key, "AUDIT_SIGNING_KEY")
