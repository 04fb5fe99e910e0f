"""Audit service settings (environment variables; see ``docs/audit-ledger.md``, "Configuration")."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, SecretStr, field_validator
from shared.settings import CommonSettings, SecretProblem, signing_key

#: The group role that holds the ledger's only runtime rights (SELECT and INSERT); login roles join it.
WRITER_ROLE = "clinomic_audit_writer"


def _asyncpg(url: str | None) -> str | None:
    if url and url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return url


def _pem(value: str) -> bytes:
    """A PEM from an environment variable, where newlines may be written as ``\\n``."""
    return value.strip().replace("\\n", "\n").encode()


class AuditSettings(CommonSettings):
    #: Runtime connection: a login role with SELECT/INSERT on the ledger only (never its owner, never a
    #: superuser). Falls back to DATABASE_URL, which then must not be privileged either.
    audit_database_url: str | None = None
    #: The ledger's owner, for migrations only. When set, the service migrates at start and drops the
    #: connection; when unset, ``clinomic-audit migrate`` (a deploy step) must have run.
    audit_migration_database_url: SecretStr | None = None

    audit_signing_key: SecretStr | None = None
    audit_key_id: str = Field("k1", min_length=1, max_length=64)
    #: Retired HMAC keys, still used to verify: JSON ``{"<key id>": "<key>"}``.
    audit_signing_keys: dict[str, SecretStr] = Field(default_factory=dict)

    #: Ed25519 private key (PEM; newlines may be written as ``\n``) that signs tree heads.
    audit_tree_head_key: SecretStr | None = None
    #: Public keys (PEM) of retired tree-head keys: JSON list of strings.
    audit_tree_head_public_keys: list[str] = Field(default_factory=list)
    #: Where signed tree heads are also written, one append-only JSON Lines file per chain.
    audit_tree_head_dir: Path | None = None
    audit_tree_head_interval_seconds: float = Field(60.0, gt=0)
    #: Re-sign an unchanged chain's head after this long, so silence is also attested.
    audit_tree_head_max_age_seconds: float = Field(86_400.0, gt=0)

    #: Worker processes for verifying long chains (default: one per CPU; 1 verifies in the service process).
    audit_verify_workers: int | None = Field(None, ge=1)

    append_batch_size: int = 1000
    port: int = 8003

    @field_validator("audit_database_url")
    @classmethod
    def _driver(cls, value: str | None) -> str | None:
        return _asyncpg(value)

    @property
    def runtime_dsn(self) -> str:
        return self.audit_database_url or self.dsn

    @property
    def migration_dsn(self) -> str | None:
        if self.audit_migration_database_url is None:
            return None
        return _asyncpg(self.audit_migration_database_url.get_secret_value())

    def check_secrets(self) -> None:
        self.hmac_keys()
        self.tree_head_key()
        self.tree_head_public_keys()

    def hmac_key(self) -> bytes:
        return signing_key(self.audit_signing_key, "AUDIT_SIGNING_KEY")

    def hmac_keys(self) -> dict[str, bytes]:
        """Every key that may verify an entry, by id: the retired ones and the current one."""
        keys = {
            kid: signing_key(value, f"AUDIT_SIGNING_KEYS[{kid}]")
            for kid, value in self.audit_signing_keys.items()
        }
        current = self.hmac_key()
        if keys.get(self.audit_key_id, current) != current:
            raise SecretProblem(
                f"AUDIT_SIGNING_KEYS names key id {self.audit_key_id!r} with another key "
                "than AUDIT_SIGNING_KEY"
            )
        keys[self.audit_key_id] = current
        return keys

    def tree_head_key(self) -> Ed25519PrivateKey:
        raw = self.audit_tree_head_key
        if raw is None or not raw.get_secret_value().strip():
            raise SecretProblem("AUDIT_TREE_HEAD_KEY is not set")
        try:
            key = serialization.load_pem_private_key(_pem(raw.get_secret_value()), password=None)
        except (ValueError, TypeError):
            raise SecretProblem(
                "AUDIT_TREE_HEAD_KEY must be an unencrypted PEM (PKCS#8) private key"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SecretProblem("AUDIT_TREE_HEAD_KEY must be an Ed25519 key")
        return key

    def tree_head_public_keys(self) -> list[Ed25519PublicKey]:
        """The current signer's public key first, then the retired ones."""
        keys = [self.tree_head_key().public_key()]
        for i, pem in enumerate(self.audit_tree_head_public_keys):
            try:
                key = serialization.load_pem_public_key(_pem(pem))
            except (ValueError, TypeError):
                raise SecretProblem(f"AUDIT_TREE_HEAD_PUBLIC_KEYS[{i}] is not a PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise SecretProblem(f"AUDIT_TREE_HEAD_PUBLIC_KEYS[{i}] is not an Ed25519 key")
            keys.append(key)
        return keys
