"""PHI keys fail closed, and rotate while the platform runs.

Without a valid ``MASTER_ENCRYPTION_KEY`` (or ``PHI_BLIND_INDEX_KEY``) the screening service refuses to start,
and it refuses as well when stored PHI needs a key its configuration lacks. ``clinomic-screening rotate-keys``
re-encrypts every stored name and consent text under the newest key in resumable batches with a progress
bar; afterwards the old key can be dropped and every name is still readable.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import infra
from devstack.stack import Platform
from shared.crypto import key_id
from tests.records.conftest import Tenant
from tests.records.helpers import consented_patient, create_patient, ok

CLI = str(Path(sys.executable).parent / "clinomic-screening")


def start_screening(platform: Platform, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """Run a second screening service with changed settings until it exits (or 60 s pass)."""
    env = {k: v for k, v in (platform.env | overrides).items() if v is not None}
    port = str(infra.free_port())
    return subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "screening.app:create_app", "--host", "127.0.0.1",
         "--port", port], env=env | {"PORT": port}, capture_output=True, text=True, timeout=60,
    )


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=platform.env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("variable", ["MASTER_ENCRYPTION_KEY", "PHI_BLIND_INDEX_KEY"])
async def test_without_its_key_the_screening_service_refuses_to_start(platform: Platform, variable: str) -> None:
    ran = await asyncio.to_thread(start_screening, platform, **{variable: None})
    assert ran.returncode == 2
    assert f"screening: refusing to start: {variable} is not set" in ran.stderr


@pytest.mark.parametrize("variable,value", [("MASTER_ENCRYPTION_KEY", "not-a-fernet-key"),
                                            ("PHI_BLIND_INDEX_KEY", "short")])
async def test_with_a_malformed_key_the_screening_service_refuses_to_start(platform: Platform, variable: str,
                                                                           value: str) -> None:
    ran = await asyncio.to_thread(start_screening, platform, **{variable: value})
    assert ran.returncode == 2 and "refusing to start" in ran.stderr and value not in ran.stderr


async def test_with_a_key_that_cannot_read_stored_names_the_screening_service_refuses_to_start(
    platform: Platform, gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    await create_patient(gateway, org_a.org.headers["lab"], name="Needs The Real Key")
    stranger = Fernet.generate_key().decode()
    ran = await asyncio.to_thread(start_screening, platform, MASTER_ENCRYPTION_KEY=stranger)
    assert ran.returncode != 0
    output = ran.stdout + ran.stderr
    assert "lacks" in output and "MASTER_ENCRYPTION_KEY" in output and stranger not in output


@dataclass
class Rotation:
    old: str
    new: str
    names: dict[str, tuple[dict[str, str], str]]  # patient id -> (headers of a reader, name)
    consents: dict[str, tuple[dict[str, str], str]]  # consent id -> (headers, text)
    partial: subprocess.CompletedProcess[str]
    full: subprocess.CompletedProcess[str]
    keys: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
async def rotation(platform: Platform, gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant) -> Rotation:
    """Names under the old key; roll out ``new,old``; rotate in two runs (the first stopped early) while
    patients keep being created; then restart the screening service with the new key only."""
    names: dict[str, tuple[dict[str, str], str]] = {}
    consents: dict[str, tuple[dict[str, str], str]] = {}
    for org in (org_a, org_b):
        lab = org.org.headers["lab"]
        for i in range(3):
            name = f"Rota Before{i} {uuid.uuid4().hex[:6]}"
            patient = await consented_patient(gateway, lab, name=name)
            names[patient["id"]] = (lab, name)
            consent = ok(await gateway.get("/api/consents", params={"patient_id": patient["id"]}, headers=lab))
            consents[consent["items"][0]["id"]] = (lab, consent["items"][0]["text"])
    old = platform.env["MASTER_ENCRYPTION_KEY"]
    new = Fernet.generate_key().decode()
    platform.env["MASTER_ENCRYPTION_KEY"] = f"{new},{old}"
    for service in ("screening", "gateway"):
        platform.stop_service(service)
        await asyncio.to_thread(platform.start_service, service)
    partial = await asyncio.to_thread(cli, platform, "rotate-keys", "--max-rows", "2", "--batch-size", "1")

    async def keep_creating() -> None:
        for i in range(5):
            name = f"Rota During{i} {uuid.uuid4().hex[:6]}"
            patient = await create_patient(gateway, org_a.org.headers["lab"], name=name)
            names[patient["id"]] = (org_a.org.headers["lab"], name)

    full, _ = await asyncio.gather(asyncio.to_thread(cli, platform, "rotate-keys", "--batch-size", "3"),
                                   keep_creating())
    keys = await asyncio.to_thread(cli, platform, "keys")
    platform.env["MASTER_ENCRYPTION_KEY"] = new
    platform.stop_service("screening")
    await asyncio.to_thread(platform.start_service, "screening")
    return Rotation(old, new, names, consents, partial, full, keys)


async def test_an_interrupted_rotation_reports_what_is_left_and_fails(rotation: Rotation) -> None:
    assert rotation.partial.returncode == 1, rotation.partial.stderr
    assert "rotated 2 values" in rotation.partial.stdout and "left under older keys" in rotation.partial.stdout


async def test_rerunning_the_rotation_finishes_it_with_a_progress_bar(rotation: Rotation) -> None:
    assert rotation.full.returncode == 0, rotation.full.stdout + rotation.full.stderr
    assert "0 left under older keys" in rotation.full.stdout
    assert f"re-encrypting under key {key_id(rotation.new.encode())}" in rotation.full.stderr  # tqdm's line
    assert "100%" in rotation.full.stderr


async def test_after_rotation_no_stored_value_uses_the_old_key(rotation: Rotation, engine: AsyncEngine) -> None:
    old_id = key_id(rotation.old.split(",")[0].encode())
    usage = "\n".join(line for line in rotation.keys.stdout.splitlines() if line.startswith("tenant_"))
    assert old_id not in usage and key_id(rotation.new.encode()) in usage
    async with engine.connect() as conn:
        schemas = (await conn.scalars(text("SELECT schema_name FROM screening.tenants"))).all()
        for schema in schemas:
            for table, column in (("patients", "name_key_id"), ("consents", "text_key_id")):
                stale = await conn.scalar(text(f'SELECT count(*) FROM "{schema}".{table} WHERE {column} = :k'),
                                          {"k": old_id})
                assert stale == 0, f"{schema}.{table}"


async def test_every_name_and_consent_text_is_readable_with_the_new_key_alone(
    rotation: Rotation, gateway: httpx.AsyncClient,
) -> None:
    for patient_id, (headers, name) in rotation.names.items():
        assert ok(await gateway.get(f"/api/patients/{patient_id}", headers=headers))["name"] == name
    for consent_id, (headers, consent_text) in rotation.consents.items():
        assert ok(await gateway.get(f"/api/consents/{consent_id}", headers=headers))["text"] == consent_text


async def test_names_are_still_found_by_the_blind_index_after_rotation(
    rotation: Rotation, gateway: httpx.AsyncClient,
) -> None:
    patient_id, (headers, name) = next(iter(rotation.names.items()))
    found = ok(await gateway.post("/api/patients/search", json={"name": name}, headers=headers))["items"]
    assert [p["id"] for p in found] == [patient_id]


async def test_with_only_the_retired_key_the_service_now_refuses_to_start(rotation: Rotation,
                                                                          platform: Platform) -> None:
    ran = await asyncio.to_thread(start_screening, platform, MASTER_ENCRYPTION_KEY=rotation.old)
    assert ran.returncode != 0 and "lacks" in ran.stdout + ran.stderr
