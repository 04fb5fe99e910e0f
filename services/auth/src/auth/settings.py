"""Auth service settings (environment variables; see `.env.example`)."""

from pydantic import SecretStr

from shared.settings import CommonSettings, SecretProblem, signing_key


class AuthSettings(CommonSettings):
    jwt_private_key: SecretStr | None = None
    jwt_access_ttl_seconds: int = 900
    jwt_refresh_ttl_days: int = 30
    audit_signing_key: SecretStr | None = None
    port: int = 8001

    def check_secrets(self) -> None:
        from auth.keys import SigningKey

        if self.jwt_private_key is None or not self.jwt_private_key.get_secret_value().strip():
            raise SecretProblem("JWT_PRIVATE_KEY is not set (an Ed25519 private key in PEM)")
        SigningKey.from_pem(self.jwt_private_key.get_secret_value())
        # Failed-login usernames are digested with this key so the ledger never holds a typed-in password.
        signing_key(self.audit_signing_key, "AUDIT_SIGNING_KEY")
