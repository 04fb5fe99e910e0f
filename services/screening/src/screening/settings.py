"""Screening service settings (environment variables; see `.env.example`)."""

from pydantic import SecretStr

from shared.settings import CommonSettings, fernet_keys


class ScreeningSettings(CommonSettings):
    master_encryption_key: SecretStr | None = None
    record_batch_size: int = 500
    port: int = 8002

    def check_secrets(self) -> None:
        fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")

    def phi_keys(self) -> list[bytes]:
        return fernet_keys(self.master_encryption_key, "MASTER_ENCRYPTION_KEY")
