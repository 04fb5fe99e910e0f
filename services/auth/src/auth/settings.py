"""Auth service settings (environment variables; see `.env.example` and `docs/identity.md`)."""

from pydantic import Field, SecretStr

from shared.settings import CommonSettings, SecretProblem, fernet_keys, signing_key
from shared.tokens import MAX_ACCESS_TTL_SECONDS, Role


class AuthSettings(CommonSettings):
    jwt_private_key: SecretStr | None = Field(
        None, description="Ed25519 private keys in PEM, newest first: the first signs, all verify (rotation)")
    jwt_access_ttl_seconds: int = Field(900, ge=30, le=MAX_ACCESS_TTL_SECONDS)
    jwt_refresh_ttl_days: int = Field(30, ge=1, description="Absolute lifetime of a session (refresh family)")
    refresh_idle_timeout_seconds: int = Field(7 * 86400, ge=60,
                                              description="A refresh token unused this long expires")
    refresh_grace_seconds: float = Field(5.0, ge=0, le=60,
                                         description="How long the immediately previous refresh token still "
                                                     "rotates (a client's retry) instead of counting as reuse")
    audit_signing_key: SecretStr | None = None
    mfa_encryption_key: SecretStr | None = Field(None, description="Fernet keys for TOTP secrets, newest first")
    mfa_required_roles: str = Field("platform_admin,org_admin,doctor",
                                    description="Roles that must enrol TOTP MFA (platform_admin always must)")
    mfa_challenge_ttl_seconds: int = Field(300, ge=30, le=900)
    mfa_challenge_max_attempts: int = Field(3, ge=1, le=10)
    totp_issuer: str = "Clinomic"
    lockout_threshold: int = Field(10, ge=1, le=100, description="Consecutive failures before a lockout")
    lockout_base_seconds: float = Field(60.0, gt=0, description="First lockout; each further failure doubles it")
    lockout_max_seconds: float = Field(3600.0, gt=0)
    lockout_reset_seconds: float = Field(86400.0, gt=0,
                                         description="Failures older than this no longer count")
    port: int = 8001

    def check_secrets(self) -> None:
        from auth.keys import SigningKeys

        if self.jwt_private_key is None or not self.jwt_private_key.get_secret_value().strip():
            raise SecretProblem("JWT_PRIVATE_KEY is not set (an Ed25519 private key in PEM)")
        SigningKeys.from_pem(self.jwt_private_key.get_secret_value())
        # Failed-login usernames are digested with this key so the ledger never holds a typed-in password.
        signing_key(self.audit_signing_key, "AUDIT_SIGNING_KEY")
        fernet_keys(self.mfa_encryption_key, "MFA_ENCRYPTION_KEY")
        self.required_mfa_roles()

    def mfa_keys(self) -> list[bytes]:
        return fernet_keys(self.mfa_encryption_key, "MFA_ENCRYPTION_KEY")

    def required_mfa_roles(self) -> frozenset[Role]:
        try:
            configured = frozenset(Role(r.strip()) for r in self.mfa_required_roles.split(",") if r.strip())
            # Platform admins administer every organisation's admins: never on a password alone.
            return configured | {Role.PLATFORM_ADMIN}
        except ValueError:
            raise SecretProblem(
                f"MFA_REQUIRED_ROLES must be a comma-separated list of: {', '.join(Role)}") from None
