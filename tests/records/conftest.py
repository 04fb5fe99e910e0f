"""Fixtures of the clinical-records tests: organisation A is the demo organisation (the shared ``admin`` and
``lab`` fixtures, plus a doctor and an auditor), organisation B is created through the API with its own users
and one of each record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import bearer, login
from tests.records.helpers import (
    classified,
    Org, classify, consented_patient, create_doctor, create_lab, create_user, new_org, ok, platform_admin,
)


@dataclass
class Tenant:
    org: Org
    lab: dict[str, Any]
    doctor: dict[str, Any]
    patient: dict[str, Any]
    consent: dict[str, Any]
    screening: dict[str, Any]
    name: str

    def ids(self) -> set[str]:
        return {self.lab["id"], self.doctor["id"], self.patient["id"], self.consent["id"], self.screening["id"]}

    def secrets(self) -> set[str]:
        """Values of this tenant that must never show in another tenant's answers."""
        return self.ids() | {self.patient["external_id"], self.name}


async def _populate(gateway: httpx.AsyncClient, org: Org, name: str) -> Tenant:
    admin, lab = org.headers["admin"], org.headers["lab"]
    a_lab = await create_lab(gateway, admin)
    doctor = await create_doctor(gateway, admin, user_id=org.user_ids["doctor"])
    patient = await consented_patient(gateway, lab, name=name, age=61, sex="male", lab_id=a_lab["id"],
                                      referring_doctor_id=doctor["id"])
    consent = ok(await gateway.get("/api/consents", params={"patient_id": patient["id"]}, headers=lab))["items"][0]
    screening = await classified(gateway, lab, patient["external_id"], name=name)
    return Tenant(org, a_lab, doctor, patient, consent, screening, name)


@pytest.fixture(scope="session")
async def org_b(gateway: httpx.AsyncClient) -> Tenant:
    return await _populate(gateway, await new_org(gateway, "orgb"), "Bertha Otherorg Secretname")


@pytest.fixture(scope="session")
async def org_a(gateway: httpx.AsyncClient, admin: dict[str, str], lab: dict[str, str]) -> Tenant:
    """The demo organisation, with a doctor user of its own (demo's doctor_demo stays unlinked)."""
    me = ok(await gateway.get("/api/auth/me", headers=admin))
    org = Org(me["organization_id"], "demo", headers={"admin": admin, "lab": lab})
    org.user_ids["doctor"], org.headers["doctor"] = await create_user(gateway, admin, "doctor")
    org.headers["auditor"] = bearer(await login(gateway, "auditor_demo"))
    return await _populate(gateway, org, "Alfreda Demoorg Secretname")


@pytest.fixture(scope="session")
async def platform_headers(gateway: httpx.AsyncClient) -> dict[str, str]:
    return await platform_admin(gateway)
