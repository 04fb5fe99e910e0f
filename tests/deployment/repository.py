"""The repository under check: where it is, the five services with the port each serves HTTP on, and what
each service's code reads (settings, database, token keys), so the deployment files can be held to it."""

from __future__ import annotations

from pathlib import Path

from audit.settings import AuditSettings
from auth.settings import AuthSettings
from gateway.settings import GatewaySettings
from inference.settings import InferenceSettings
from screening.settings import ScreeningSettings
from shared.tokens import ServiceCredential

ROOT = Path(__file__).resolve().parents[2]

#: Every deployed service and the port its image serves HTTP on (health, API, metrics).
SERVICES = {"gateway": 8000, "auth": 8001, "screening": 8002, "audit": 8003, "inference": 8004}
SETTINGS = {"gateway": GatewaySettings, "auth": AuthSettings, "screening": ScreeningSettings,
            "audit": AuditSettings, "inference": InferenceSettings}
#: Every secret of the platform: keys, database passwords and URLs that carry one.
SECRETS = {"MASTER_ENCRYPTION_KEY", "AUDIT_SIGNING_KEY", "JWT_PRIVATE_KEY", "MFA_ENCRYPTION_KEY",
           "PHI_BLIND_INDEX_KEY", "ANALYTICS_PSEUDONYM_KEY", "AUDIT_TREE_HEAD_KEY", "INTERNAL_SERVICE_TOKEN",
           "DATABASE_URL", "AUDIT_DATABASE_URL", "AUDIT_MIGRATION_DATABASE_URL", "POSTGRES_USER",
           "POSTGRES_PASSWORD", "KAFKA_SASL_PASSWORD"}
#: What gives a service its database (the audit service has its own role's URLs instead).
DATABASE_CREDENTIALS = {"DATABASE_URL", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def app_source(service: str) -> str:
    return (ROOT / "services" / service / "src" / service / "app.py").read_text()


def uses_database(service: str) -> bool:
    return "create_engine(" in app_source(service)


def fetches_token_keys(service: str) -> bool:
    """Verifies tokens with keys fetched from auth's JWKS at start (auth signs with its own keys)."""
    return "await verifier.refresh()" in app_source(service)


def secrets_read_by(service: str) -> set[str]:
    """The secrets among the variables the service's settings read; database credentials only where the
    service opens a database, and for the audit service only its own role's URLs."""
    fields = {name.upper() for cls in (SETTINGS[service], ServiceCredential) for name in cls.model_fields}
    read = fields & SECRETS
    if not uses_database(service) or service == "audit":
        read -= DATABASE_CREDENTIALS
    return read
