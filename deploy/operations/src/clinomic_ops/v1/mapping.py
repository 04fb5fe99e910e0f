"""v1 documents → records of this platform, without I/O: ids, roles, names, CBC checks, orphans, duplicates.

:func:`plan` turns the documents of every collection into :class:`Planned` records (names already decrypted,
still plaintext: the writer seals them with this platform's keys) and :class:`Problem` refusals, each with a
reason. Nothing is dropped silently and nothing is altered to fit: a document either maps as it is or is
refused. Ids are deterministic (UUIDv5 of collection, v1 organisation and v1 id, or the v1 id itself when it
is already a UUID), which is what makes a second run find every record it created the first time.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import json_util
from pydantic import ValidationError

from shared.events.screening import RANGES, UNITS, Assessment
from shared.tokens import Role

#: Namespace of every id this migration derives (fixed: a second run must derive the same ids).
NAMESPACE = uuid.UUID("5d0c7a52-3f0e-4c8e-9d1e-6c1b1f7a0e11")
SOURCE = "clinomic-v1"
#: Who recorded a v1 consent whose ``recordedBy`` is not a migrated user (``consents.recorded_by`` is required).
MIGRATION_ACTOR = uuid.uuid5(NAMESPACE, "actor|clinomic-v1-migration")
#: Order of writing: a record's parent is always written before it.
COLLECTIONS = ("organizations", "users", "labs", "doctors", "patients", "consents", "screenings")
#: The v1 collections read (organisations have no collection: they are the ``orgId`` values).
V1_COLLECTIONS = ("users", "labs", "doctors", "patients", "consents", "screenings")
ROLES = {"ADMIN": Role.ORG_ADMIN, "LAB": Role.LAB_TECHNICIAN, "DOCTOR": Role.DOCTOR}
SEXES = {"m": "male", "f": "female", "male": "male", "female": "female"}
LABELS = {1: "normal", 2: "borderline", 3: "deficient"}
LABEL_TEXTS = {1: "NORMAL", 2: "BORDERLINE", 3: "DEFICIENT"}
METHODS = ("verbal", "written", "electronic")
#: The analytes v1 kept of a CBC (``cbcSnapshot``), already in this platform's canonical units.
SNAPSHOT = ("hb", "mcv", "rdw")
#: What this platform's record API accepts (records_api: patient external ids, lab codes; auth: usernames).
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
LAB_CODE = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{3,150}$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
FERNET_PREFIX = "gAAAAA"
#: P(deficient) thresholds v1 derived its risk class from (not the argmax): ≥ 0.85 → 3, ≥ 0.45 → 2.
V1_HIGH, V1_INTERMEDIATE = 0.85, 0.45
PROBABILITY_SUM_TOLERANCE = 0.005 * 3  # three values rounded to 3 dp each
CONSENT_TYPE = "screening"


class Refused(Exception):
    """A document that cannot be migrated as it is: ``code`` groups the report, ``detail`` explains."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Problem:
    """A refused document (or a warning about a migrated one), as the report lists it."""

    collection: str
    v1_org: str | None
    v1_id: str | None
    code: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "v1_org": self.v1_org, "v1_id": self.v1_id, "code": self.code,
                "detail": self.detail}


@dataclass(frozen=True)
class Ref:
    """A reference to another migrated record, kept only if that record is in the database after its write
    (else ``fallback``, with a warning)."""

    collection: str
    id: uuid.UUID
    fallback: uuid.UUID | None = None


@dataclass(frozen=True)
class Planned:
    """One record to create: its column values (names and consent texts still plaintext), the parent it cannot
    exist without, and the references it keeps only if they are there."""

    collection: str
    id: uuid.UUID
    org_id: uuid.UUID
    v1_org: str
    v1_id: str
    source_sha256: str
    values: dict[str, Any]
    parent: Ref | None = None
    refs: dict[str, Ref] = field(default_factory=dict)
    #: Candidate usernames, first free one wins (users only: v1 usernames are per organisation, ours global).
    usernames: tuple[str, ...] = ()


@dataclass
class Plan:
    """Everything the documents say, before the database is consulted."""

    organizations: dict[str, Planned] = field(default_factory=dict)
    records: dict[str, list[Planned]] = field(default_factory=lambda: {c: [] for c in COLLECTIONS})
    refused: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=lambda: {c: 0 for c in COLLECTIONS})
    name_tokens: int = 0
    names_decrypted: int = 0


# -- ids and values ------------------------------------------------------------------------------------------


def derived_id(collection: str, v1_org: str, v1_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{collection}|{v1_org}|{v1_id}")


def kept_id(collection: str, v1_org: str, v1_id: str) -> uuid.UUID:
    """The v1 id itself when it is a UUID (v1 screenings and consents: audits and files refer to it), else
    derived from it."""
    try:
        return uuid.UUID(v1_id)
    except ValueError:
        return derived_id(collection, v1_org, v1_id)


def org_id(v1_org: str) -> uuid.UUID:
    return derived_id("organizations", v1_org, v1_org)


def org_slug(v1_org: str) -> str:
    """``ORG-LAB-2024-001`` → ``org-lab-2024-001``; refused when nothing usable is left."""
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", v1_org.strip().lower())).strip("-")[:63]
    if not SLUG.match(slug):
        raise Refused("bad_org_id", f"organisation code {v1_org!r} gives no usable slug")
    return slug


def source_sha256(document: Mapping[str, Any]) -> str:
    """SHA-256 of the document in canonical extended JSON with sorted keys: the ledger's row digest."""
    canonical = json_util.dumps(document, sort_keys=True, separators=(",", ":"),
                                json_options=json_util.CANONICAL_JSON_OPTIONS)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_time(raw: Any, what: str) -> datetime:
    """v1 timestamps are ISO strings (``+00:00`` or ``Z``); hand-inserted ones may be BSON dates."""
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if not isinstance(raw, str) or not raw.strip():
        raise Refused("bad_timestamp", f"{what} is missing")
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Refused("bad_timestamp", f"{what} {raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def optional_time(raw: Any, what: str) -> datetime | None:
    return None if raw in (None, "") else parse_time(raw, what)


def text_of(raw: Any) -> str | None:
    """A v1 string reference: ``""`` and null both mean none."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return str(raw).strip()


def number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def map_role(raw: Any) -> Role:
    role = ROLES.get(str(raw).upper()) if isinstance(raw, str) else None
    if role is None:
        raise Refused("unknown_role", f"role {raw!r} is not one of {', '.join(ROLES)}")
    return role


def map_sex(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    sex = SEXES.get(str(raw).strip().lower())
    if sex is None:
        raise Refused("bad_sex", f"sex {raw!r} is not M or F")
    return sex


def map_age(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 130:
        raise Refused("bad_age", f"age {raw!r} is not a whole number of years from 0 to 130")
    return raw


Decrypt = Callable[[str], str]


def open_name(raw: Any, decrypt: Decrypt | None) -> tuple[str | None, str | None]:
    """A v1 name: (plaintext or None, warning or None). A Fernet token is decrypted with the v1 key (never
    re-encrypted as it is); ``""`` or null is no name; any other string was stored in plaintext."""
    if raw is None or raw == "":
        return None, "no name in v1"
    if not isinstance(raw, str):
        raise Refused("bad_name", f"name is a {type(raw).__name__}, not a string")
    if raw.startswith(FERNET_PREFIX):
        if decrypt is None:
            raise Refused("name_undecryptable", "the name is encrypted and no v1 key was given")
        try:
            return decrypt(raw), None
        except ValueError:
            raise Refused("name_undecryptable", "the name does not decrypt with the v1 key") from None
    return raw, "name was stored in plaintext in v1"


# -- screenings ------------------------------------------------------------------------------------------------


def check_snapshot(raw: Any) -> dict[str, float]:
    """The three analytes v1 kept, each a number within this platform's physiological range."""
    if not isinstance(raw, Mapping):
        raise Refused("bad_cbc", "cbcSnapshot is missing")
    cbc: dict[str, float] = {}
    for analyte in SNAPSHOT:
        value = number(raw.get(analyte))
        if value is None:
            raise Refused("bad_cbc", f"{analyte} is missing or not a number")
        low, high = RANGES[analyte]
        if not low <= value <= high:
            unit = UNITS[analyte][0]
            raise Refused("bad_cbc", f"{analyte} {value:g} {unit} is outside the accepted range {low:g}–{high:g}")
        cbc[analyte] = value
    return cbc


def v1_risk_class(p_deficient: float) -> int:
    return 3 if p_deficient >= V1_HIGH else 2 if p_deficient >= V1_INTERMEDIATE else 1


def check_result(doc: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The v1 risk class and probabilities, refused unless they agree with each other and with v1's rule."""
    risk = doc.get("riskClass")
    if isinstance(risk, bool) or risk not in LABELS:
        raise Refused("bad_result", f"riskClass {risk!r} is not 1, 2 or 3")
    raw = doc.get("probabilities")
    probabilities = {k: number(raw.get(k)) for k in LABELS.values()} if isinstance(raw, Mapping) else {}
    if len(probabilities) != 3 or any(p is None or not 0.0 <= p <= 1.0 for p in probabilities.values()):
        raise Refused("bad_result", "probabilities are missing or outside 0–1")
    checked = {k: float(v) for k, v in probabilities.items() if v is not None}
    if abs(sum(checked.values()) - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise Refused("bad_result", f"probabilities sum to {sum(checked.values()):.3f}, not 1")
    label, text = doc.get("label"), doc.get("labelText")
    if (label is not None and label != risk) or (text is not None and str(text).upper() != LABEL_TEXTS[risk]):
        raise Refused("inconsistent_result", f"label {label!r} / labelText {text!r} disagree with riskClass {risk}")
    if v1_risk_class(checked["deficient"]) != risk:
        raise Refused("inconsistent_result",
                      f"riskClass {risk} disagrees with v1's rule for P(deficient) {checked['deficient']:g}")
    return int(risk), checked


def migrated_assessment(doc: Mapping[str, Any], risk: int, probabilities: dict[str, float],
                        v1_id: str, digest: str) -> dict[str, Any]:
    """The stored assessment of a migrated screening: v1's own result, v1's model named as the method, and the
    provenance under ``migrated`` (v1 id, hashes, the raw timestamp). Checked against the assessment contract
    so that every reader of screenings can show it."""
    indices = doc.get("indices")
    if not isinstance(indices, Mapping):
        raise Refused("bad_result", "indices are missing")
    mentzer, green_king = number(indices.get("mentzer")), number(indices.get("greenKing"))
    nlr = indices.get("nlr")
    if mentzer is None or green_king is None or (nlr is not None and number(nlr) is None):
        raise Refused("bad_result", "indices mentzer/greenKing/nlr are not numbers")
    version = doc.get("modelVersion")
    if not isinstance(version, str) or not version.strip():
        raise Refused("bad_result", "modelVersion is missing")
    rules = doc.get("rulesFired") or []
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise Refused("bad_result", "rulesFired is not a list of rule names")
    assessment = {
        "label": LABELS[risk],
        "probabilities": probabilities,
        "risk_class": risk,
        "indices": {"mentzer": mentzer, "green_king": green_king, "nlr": number(nlr),
                    "pancytopenia": bool(indices.get("pancytopenia"))},
        "findings": [{"code": "v1:" + re.sub(r"[^a-z0-9]+", "-", r.lower()).strip("-"), "text": r} for r in rules],
        "recommendation": (f"Historical result of Clinomic v1 (model {version}), migrated as it was: not re-scored "
                           "by the current model. v1 kept only Hb, MCV and RDW of the blood count."),
        "top_contributions": [],
        "model": {"version": f"{SOURCE}/{version}", "artifacts_sha256": str(doc.get("modelArtifactHash") or ""),
                  "data_source": "Clinomic v1 (migrated historical record)"},
        "advice": None,
    }
    try:
        Assessment.model_validate(assessment)
    except ValidationError as exc:
        raise Refused("bad_result", f"the v1 result does not fit the assessment contract: {exc.errors()[0]['msg']}"
                      ) from None
    assessment["migrated"] = {
        "source": SOURCE, "v1_id": v1_id, "v1_model_version": version,
        "model_artifact_hash": doc.get("modelArtifactHash"), "request_hash": doc.get("requestHash"),
        "response_hash": doc.get("responseHash"), "screening_hash": doc.get("screeningHash"),
        "label_text": doc.get("labelText"), "v1_user_id": text_of(doc.get("userId")),
        "file_id": text_of(doc.get("fileId")), "created_at": doc.get("createdAt")
        if isinstance(doc.get("createdAt"), str) else None,
        "partial_cbc": list(SNAPSHOT), "source_sha256": digest,
    }
    return assessment


# -- the plan --------------------------------------------------------------------------------------------------


def _key(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return text_of(doc.get("orgId")), text_of(doc.get("id"))


class _Planner:
    def __init__(self, decrypt: Decrypt | None) -> None:
        self.decrypt = decrypt
        self.plan = Plan()
        self.ids: dict[str, dict[tuple[str, str], uuid.UUID]] = {c: {} for c in COLLECTIONS}
        self.refused_ids: dict[str, dict[tuple[str, str], str]] = {c: {} for c in COLLECTIONS}

    def refuse(self, collection: str, org: str | None, v1_id: str | None, code: str, detail: str) -> None:
        self.plan.refused.append(Problem(collection, org, v1_id, code, detail))
        if org is not None and v1_id is not None:
            self.refused_ids[collection].setdefault((org, v1_id), code)

    def warn(self, collection: str, org: str, v1_id: str, detail: str) -> None:
        self.plan.warnings.append(Problem(collection, org, v1_id, "warning", detail))

    def org(self, v1_org: str, at: datetime | None) -> None:
        planned = self.plan.organizations.get(v1_org)
        if planned is None:
            ident = org_id(v1_org)
            self.plan.organizations[v1_org] = Planned(
                "organizations", ident, ident, v1_org, v1_org, hashlib.sha256(v1_org.encode()).hexdigest(),
                {"name": v1_org, "slug": org_slug(v1_org), "created_at": at})
        elif at is not None and (planned.values["created_at"] is None or at < planned.values["created_at"]):
            planned.values["created_at"] = at  # the organisation is as old as its oldest record

    def each(self, collection: str, documents: Iterable[Mapping[str, Any]],
             build: Callable[[str, str, Mapping[str, Any], str], Planned]) -> None:
        seen: set[tuple[str, str]] = set()
        for doc in documents:
            self.plan.read[collection] += 1
            org, v1_id = _key(doc)
            if org is None or v1_id is None:
                self.refuse(collection, org, v1_id, "no_key", "the document has no orgId or no id")
                continue
            if (org, v1_id) in seen:
                self.refuse(collection, org, v1_id, "duplicate",
                            "an earlier document of this organisation has the same id (the first one is kept)")
                continue
            seen.add((org, v1_id))
            try:
                org_slug(org)
                planned = build(org, v1_id, doc, source_sha256(doc))
            except Refused as refusal:
                self.refuse(collection, org, v1_id, refusal.code, refusal.detail)
                continue
            self.org(org, _earliest(doc))
            self.ids[collection][(org, v1_id)] = planned.id
            self.plan.records[collection].append(planned)

    def ref(self, collection: str, org: str, raw: Any, *, fallback: uuid.UUID | None = None,
            owner: tuple[str, str], column: str) -> Ref | None:
        """An optional reference: a record of this organisation that the plan holds, else ``fallback``."""
        target = text_of(raw)
        if target is None:
            return None
        ident = self.ids[collection].get((org, target))
        if ident is None:
            self.warn(owner[0], org, owner[1], f"{column}: {collection[:-1]} {target!r} is not migrated "
                      f"({self.refused_ids[collection].get((org, target), 'unknown in v1')}); left empty")
            return None if fallback is None else Ref(collection, fallback)
        return Ref(collection, ident, fallback)

    def parent(self, org: str, raw: Any) -> Ref:
        target = text_of(raw)
        if target is None:
            raise Refused("orphan", "no patientId")
        ident = self.ids["patients"].get((org, target))
        if ident is None:
            why = self.refused_ids["patients"].get((org, target))
            raise Refused("patient_refused", f"its patient was refused ({why})") if why else Refused(
                "orphan", "its patient is not in the organisation")
        return Ref("patients", ident)


def _earliest(doc: Mapping[str, Any]) -> datetime | None:
    for key in ("createdAt", "consentedAt"):
        try:
            return parse_time(doc.get(key), key)
        except Refused:
            continue
    return None


def plan(documents: Mapping[str, Iterable[Mapping[str, Any]]], decrypt: Decrypt | None) -> Plan:
    """Map every document; parents (labs, doctors, patients, users) are planned before what refers to them."""
    p = _Planner(decrypt)

    def user(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        role = map_role(doc.get("role"))
        slug = org_slug(org)
        names = tuple(n for n in (v1_id, f"{v1_id}.{slug}") if USERNAME.match(n))
        if not names:
            raise Refused("bad_username", f"username {v1_id!r} is not 3–150 of A-Z a-z 0-9 _ . @ -")
        active = doc.get("isActive", True) is not False
        created = optional_time(doc.get("createdAt"), "createdAt")
        updated = optional_time(doc.get("updatedAt"), "updatedAt")
        return Planned("users", derived_id("users", org, v1_id), org_id(org), org, v1_id, digest,
                       {"role": role.value, "active": active, "created_at": created,
                        "deactivated_at": None if active else (updated or created)}, usernames=names)

    def lab(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        if not LAB_CODE.match(v1_id):
            raise Refused("bad_lab_code", f"lab id {v1_id!r} is not a lab code this platform accepts")
        name = text_of(doc.get("name")) or v1_id
        return Planned("labs", derived_id("labs", org, v1_id), org_id(org), org, v1_id, digest,
                       {"name": name[:200], "code": v1_id})

    def doctor(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        name = text_of(doc.get("name"))
        if name is None:
            raise Refused("missing_name", "the doctor has no name")
        return Planned("doctors", derived_id("doctors", org, v1_id), org_id(org), org, v1_id, digest,
                       {"name": name[:200], "specialty": text_of(doc.get("dept"))})

    def patient(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        if not EXTERNAL_ID.match(v1_id):
            raise Refused("bad_external_id", "the patient id is not 1–64 of A-Z a-z 0-9 . _ : / -")
        raw = doc.get("name")
        if isinstance(raw, str) and raw.startswith(FERNET_PREFIX):
            p.plan.name_tokens += 1
        name, warning = open_name(raw, decrypt)
        if isinstance(raw, str) and raw.startswith(FERNET_PREFIX):
            p.plan.names_decrypted += 1
        values = {"external_id": v1_id, "name": name, "age": map_age(doc.get("age")), "sex": map_sex(doc.get("sex")),
                  "created_at": parse_time(doc.get("createdAt"), "createdAt")}
        values["updated_at"] = optional_time(doc.get("updatedAt"), "updatedAt") or values["created_at"]
        if warning:
            p.warn("patients", org, v1_id, warning)
        owner = ("patients", v1_id)
        refs = {"lab_id": p.ref("labs", org, doc.get("labId"), owner=owner, column="labId"),
                "referring_doctor_id": p.ref("doctors", org, doc.get("doctorId"), owner=owner, column="doctorId")}
        return Planned("patients", derived_id("patients", org, v1_id), org_id(org), org, v1_id, digest, values,
                       refs={k: v for k, v in refs.items() if v is not None})

    def consent(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        parent = p.parent(org, doc.get("patientId"))
        method = str(doc.get("consentType") or "").lower()
        if method not in METHODS:
            raise Refused("unknown_method",
                          f"consentType {doc.get('consentType')!r} is not one of {', '.join(METHODS)}")
        status = doc.get("status")
        if status not in ("active", "revoked"):
            raise Refused("bad_status", f"status {status!r} is not active or revoked")
        recorded_at = parse_time(doc.get("consentedAt") or doc.get("createdAt"), "consentedAt")
        revoked_at = optional_time(doc.get("revokedAt"), "revokedAt") if status == "revoked" else None
        if status == "revoked" and revoked_at is None:
            raise Refused("bad_status", "revoked without revokedAt")
        owner = ("consents", v1_id)
        refs = {"recorded_by": p.ref("users", org, doc.get("recordedBy"), fallback=MIGRATION_ACTOR, owner=owner,
                                     column="recordedBy")}
        if status == "revoked":
            refs["revoked_by"] = p.ref("users", org, doc.get("revokedBy"), owner=owner, column="revokedBy")
        return Planned("consents", kept_id("consents", org, v1_id), org_id(org), org, v1_id, digest,
                       {"consent_type": CONSENT_TYPE, "method": method, "text": consent_text(doc), "status": status,
                        "recorded_at": recorded_at, "revoked_at": revoked_at,
                        "recorded_by": MIGRATION_ACTOR, "revoked_by": None},
                       parent=parent, refs={k: v for k, v in refs.items() if v is not None})

    def screening(org: str, v1_id: str, doc: Mapping[str, Any], digest: str) -> Planned:
        parent = p.parent(org, doc.get("patientId"))
        at = parse_time(doc.get("createdAt"), "createdAt")
        cbc = check_snapshot(doc.get("cbcSnapshot"))
        risk, probabilities = check_result(doc)
        assessment = migrated_assessment(doc, risk, probabilities, v1_id, digest)
        ident = kept_id("screenings", org, v1_id)
        owner = ("screenings", v1_id)
        refs = {"requested_by": p.ref("users", org, doc.get("userId"), owner=owner, column="userId"),
                "lab_id": p.ref("labs", org, doc.get("labId"), owner=owner, column="labId"),
                "doctor_id": p.ref("doctors", org, doc.get("doctorId"), owner=owner, column="doctorId")}
        return Planned("screenings", ident, org_id(org), org, v1_id, digest,
                       {"status": "migrated", "cbc": cbc, "assessment": assessment, "label": LABELS[risk],
                        "risk_class": risk, "model_version": assessment["model"]["version"],
                        "patient_external_id": text_of(doc.get("patientId")),
                        "correlation_id": uuid.uuid5(NAMESPACE, f"correlation|{ident}"),
                        "requested_at": at, "recorded_at": at},
                       parent=parent, refs={k: v for k, v in refs.items() if v is not None})

    for collection, build in (("users", user), ("labs", lab), ("doctors", doctor), ("patients", patient),
                              ("consents", consent), ("screenings", screening)):
        p.each(collection, documents.get(collection, ()), build)
    p.plan.read["organizations"] = len(p.plan.organizations)
    return p.plan


def consent_text(doc: Mapping[str, Any]) -> str:
    """What the patient agreed to, as this platform keeps it (encrypted): v1's purposes, then its plaintext
    witness and notes, which are personal data and are encrypted with the text rather than left in clear."""
    purposes = doc.get("purposes") or []
    lines = [str(p) for p in purposes if p] if isinstance(purposes, list) else [str(purposes)]
    if not lines:
        lines = ["(v1 recorded no purposes for this consent)"]
    for label, key in (("Witness", "witnessName"), ("Notes", "notes")):
        if text_of(doc.get(key)):
            lines.append(f"{label}: {text_of(doc.get(key))}")
    return "\n".join(lines)
