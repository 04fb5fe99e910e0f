"""Fixtures of the export tests: a fresh organisation with a referred named patient (two screenings), a patient
whose name a spreadsheet would evaluate, and an unnamed patient with a classified and a rejected screening.

Exports are rate-limited per user (``export`` rule, 10/minute), so each test exports as an org admin of its own.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import HEALTHY_CBC
from tests.records.helpers import (
    Org, classified, consented_patient, create_doctor, create_lab, create_user, eventually, new_org,
)

#: A panel the model calls deficient (high risk), next to the healthy one (low risk).
DEFICIENT_CBC = {"hb": 9.1, "rbc": 2.6, "hct": 28.9, "mcv": 111, "mch": 35.0, "mchc": 31.5, "rdw": 18.2,
                 "wbc": 3.4, "platelets": 120, "neutrophils_pct": 55, "lymphocytes_pct": 35, "age": 67,
                 "sex": "female"}
#: Comma and quote: what RFC 4180 quoting must survive in a name (a line break is refused at the edge, 422).
AWKWARD_NAME = 'Doe, "Jo" Ann Exportova'
FORMULA_NAME = '=HYPERLINK("http://x.test","open")'
REJECTION = "model unavailable"


@dataclass
class Clinic:
    org: Org
    schema: str
    doctor: dict[str, Any]
    referred: dict[str, Any]  # named AWKWARD_NAME, referred to the doctor; screenings[0:2]
    formula: dict[str, Any]  # named FORMULA_NAME; screenings[2]
    unnamed: dict[str, Any]  # no name; screenings[3] classified, rejected[0] rejected
    screenings: list[dict[str, Any]]
    rejected: list[str]

    @property
    def patients(self) -> list[dict[str, Any]]:
        return [self.referred, self.formula, self.unnamed]

    @property
    def screening_ids(self) -> set[str]:
        return {s["id"] for s in self.screenings} | set(self.rejected)


async def insert_rejected(engine: AsyncEngine, schema: str, patient_id: str) -> str:
    """A screening inference could not assess, recorded as the screening service records one."""
    screening_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(text(
            f'INSERT INTO "{schema}".screenings (id, patient_id, status, cbc, rejection_reason, correlation_id, '
            "requested_at, recorded_at, patient_external_id) VALUES (:id, :patient, 'rejected', CAST(:cbc AS jsonb), "
            f':reason, :corr, now(), now(), (SELECT external_id FROM "{schema}".patients WHERE id = :patient))'),
            {"id": screening_id, "patient": patient_id, "cbc": json.dumps(HEALTHY_CBC), "reason": REJECTION,
             "corr": uuid.uuid4()})
    return screening_id


@pytest.fixture(scope="session")
async def clinic(gateway: httpx.AsyncClient, engine: AsyncEngine) -> Clinic:
    org = await new_org(gateway, "export")
    admin, lab = org.headers["admin"], org.headers["lab"]
    a_lab = await create_lab(gateway, admin)
    doctor = await create_doctor(gateway, admin, user_id=org.user_ids["doctor"])
    referred = await consented_patient(gateway, lab, name=AWKWARD_NAME, sex="female", lab_id=a_lab["id"],
                                       referring_doctor_id=doctor["id"])
    formula = await consented_patient(gateway, lab, name=FORMULA_NAME, sex="male", lab_id=a_lab["id"])
    unnamed = await consented_patient(gateway, lab, sex="male")
    screenings = [
        await classified(gateway, lab, referred["external_id"], cbc=DEFICIENT_CBC),
        await classified(gateway, lab, referred["external_id"], cbc=DEFICIENT_CBC | {"age": 68}),
        await classified(gateway, lab, formula["external_id"]),
        await classified(gateway, lab, unnamed["external_id"]),
    ]
    schema = f"tenant_{uuid.UUID(org.id).hex}"
    rejected = [await insert_rejected(engine, schema, unnamed["id"])]
    return Clinic(org, schema, doctor, referred, formula, unnamed, screenings, rejected)


async def fresh_admin(gateway: httpx.AsyncClient, org: Org) -> dict[str, str]:
    """Another org admin of ``org``: its own allowance of exports per minute."""
    return (await create_user(gateway, org.headers["admin"], "org_admin"))[1]


async def export(gateway: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> httpx.Response:
    return await gateway.get("/api/screening/export", params=params, headers=headers)


async def in_ledger(engine: AsyncEngine, event_id: str) -> bool:
    async def ledgered() -> bool:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT count(*) FROM audit.entries WHERE event_id = :e"),
                                          {"e": event_id}))

    return await eventually(ledgered, timeout=20)


def references(node: object) -> list[str]:
    """Every ``reference`` value in a FHIR JSON document."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "reference"] + [r for v in node.values() for r in references(v)]
    if isinstance(node, list):
        return [r for v in node for r in references(v)]
    return []
