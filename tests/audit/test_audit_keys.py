"""HMAC key rotation and the settings that carry keys (the keys are recorded per entry by id)."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checker import check_chain
from audit.handlers import Appender, item_of
from audit.ledger import chain_id_for_tenant
from audit.settings import AuditSettings
from shared.kafka import encode
from shared.settings import SecretProblem
from tests.audit.conftest import ServiceKeys, probe_envelope

OLD, NEW = b"o" * 40, b"n" * 40


def pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
        .replace("\n", "\\n")
    )


async def test_entries_sealed_before_and_after_a_key_rotation_all_verify(
    runtime_engine: AsyncEngine, service_keys: ServiceKeys
) -> None:
    tenant = uuid.uuid4()
    chain_id = chain_id_for_tenant(tenant)
    await Appender(runtime_engine, "2025-01", OLD).append(
        [item_of(encode(probe_envelope(tenant, n)), "t") for n in range(3)]
    )
    await Appender(runtime_engine, "2025-07", NEW).append(
        [item_of(encode(probe_envelope(tenant, n)), "t") for n in range(3, 6)]
    )
    both = await check_chain(
        runtime_engine, chain_id, hmac_keys={"2025-01": OLD, "2025-07": NEW}, public_keys=service_keys.public
    )
    assert both.ok and both.checked == 6
    only_new = await check_chain(
        runtime_engine, chain_id, hmac_keys={"2025-07": NEW}, public_keys=service_keys.public
    )
    assert (only_new.first_broken_seq, only_new.reason) == (1, "unknown key id")


def test_retired_hmac_keys_are_read_by_id_next_to_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_SIGNING_KEY", NEW.decode())
    monkeypatch.setenv("AUDIT_KEY_ID", "2025-07")
    monkeypatch.setenv("AUDIT_SIGNING_KEYS", json.dumps({"2025-01": OLD.decode()}))
    monkeypatch.setenv("AUDIT_TREE_HEAD_KEY", pem())
    assert AuditSettings().hmac_keys() == {"2025-01": OLD, "2025-07": NEW}


def test_a_retired_key_id_may_not_name_another_key_than_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIT_SIGNING_KEY", NEW.decode())
    monkeypatch.setenv("AUDIT_KEY_ID", "k1")
    monkeypatch.setenv("AUDIT_SIGNING_KEYS", json.dumps({"k1": OLD.decode()}))
    monkeypatch.setenv("AUDIT_TREE_HEAD_KEY", pem())
    with pytest.raises(SecretProblem, match="AUDIT_SIGNING_KEYS"):
        AuditSettings().check_secrets()


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("AUDIT_TREE_HEAD_KEY", "", "AUDIT_TREE_HEAD_KEY is not set"),
        ("AUDIT_TREE_HEAD_KEY", "not a pem", "AUDIT_TREE_HEAD_KEY must be"),
        ("AUDIT_SIGNING_KEYS", json.dumps({"k0": "short"}), "AUDIT_SIGNING_KEYS"),
        ("AUDIT_TREE_HEAD_PUBLIC_KEYS", json.dumps(["nope"]), "AUDIT_TREE_HEAD_PUBLIC_KEYS"),
    ],
)
def test_bad_audit_secrets_are_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv("AUDIT_SIGNING_KEY", NEW.decode())
    monkeypatch.setenv("AUDIT_TREE_HEAD_KEY", pem())
    monkeypatch.setenv(name, value)
    with pytest.raises(SecretProblem, match=problem):
        AuditSettings().check_secrets()
