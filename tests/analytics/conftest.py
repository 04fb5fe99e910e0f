"""Fixtures of the analytics tests: a fresh organisation with two labs, two doctors (one of them the
organisation's doctor user), three patients and four screenings, so every count is known in advance."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.analytics.helpers import CBC_BY_EXPECTED_CLASS
from tests.records.helpers import Org, classified, consented_patient, create_doctor, create_lab, new_org


@dataclass
class Clinic:
    org: Org
    labs: dict[str, dict[str, Any]]
    doctors: dict[str, dict[str, Any]]
    patients: dict[str, dict[str, Any]]
    #: (patient key in ``patients``, the recorded screening)
    screenings: list[tuple[str, dict[str, Any]]]
    canary: str

    def screened(self, patients: set[str] | None = None) -> list[dict[str, Any]]:
        return [s for p, s in self.screenings if patients is None or p in patients]

    def per_risk_class(self, patients: set[str] | None = None) -> dict[str, int]:
        counted = Counter(str(s["assessment"]["risk_class"]) for s in self.screened(patients))
        return {c: counted[c] for c in ("1", "2", "3")}

    def per_label(self, patients: set[str] | None = None) -> dict[str, int]:
        counted = Counter(s["assessment"]["label"] for s in self.screened(patients))
        return {label: counted[label] for label in ("normal", "borderline", "deficient")}


@pytest.fixture(scope="session")
async def clinic(gateway: httpx.AsyncClient) -> Clinic:
    """Patient "referred" (lab A, the doctor user's record) is screened twice, "other" (lab B, another doctor)
    once, "unassigned" (no lab, no doctor) once; the first carries a canary name."""
    org = await new_org(gateway, "analytics")
    admin, lab = org.headers["admin"], org.headers["lab"]
    labs = {"a": await create_lab(gateway, admin), "b": await create_lab(gateway, admin)}
    doctors = {"mine": await create_doctor(gateway, admin, user_id=org.user_ids["doctor"]),
               "other": await create_doctor(gateway, admin)}
    canary = "Quixwhistle Analyticscanary"
    patients = {
        "referred": await consented_patient(gateway, lab, name=canary, lab_id=labs["a"]["id"],
                                            referring_doctor_id=doctors["mine"]["id"]),
        "other": await consented_patient(gateway, lab, lab_id=labs["b"]["id"],
                                         referring_doctor_id=doctors["other"]["id"]),
        "unassigned": await consented_patient(gateway, lab),
    }
    plan = [("referred", 2, canary), ("referred", 1, canary), ("other", 3, None), ("unassigned", 1, None)]
    screenings = [(key, await classified(gateway, lab, patients[key]["external_id"], name=name,
                                         cbc=CBC_BY_EXPECTED_CLASS[risk]))
                  for key, risk, name in plan]
    return Clinic(org, labs, doctors, patients, screenings, canary)
