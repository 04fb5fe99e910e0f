"""Writing a plan: records straight into the services' tables, with their original ids and timestamps, and one
``RecordMigrated`` event per record created, in the same transaction.

Per organisation and collection, in batches: a batch is one transaction that finds which records exist already
(skipped), which clash with a different record on a unique key (refused), seals names and consent texts with
this platform's keys, inserts the rest and adds their events to ``screening.outbox``. After the commit the
events are published and removed from the outbox; if the broker cannot be reached they stay there and the
screening service's outbox relay publishes them when it runs, so no migrated record misses its ledger entry.
A dry run does all the reading and checking and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clinomic_ops.v1.mapping import COLLECTIONS, SOURCE, Plan, Planned, Problem, Ref
from clinomic_ops.v1.report import Report
from shared.db import in_schema, tenant_schema
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events.envelope import derived_event_id
from shared.events.migration import RECORD_MIGRATED, RecordMigratedV1
from shared.kafka import encode

log = logging.getLogger(__name__)
ACTOR = Actor(role="service", service="clinomic-ops")
OUTBOX = "screening.outbox"
#: Not a hash any verifier accepts: the account cannot log in until an administrator resets its password.
UNUSABLE_PASSWORD = "!v1-migrated:bcrypt-not-kept:reset-required"
#: Collections whose v1 ids are not patient identifiers may name them in the ledger.
V1_ID_IN_EVENT = frozenset({"organizations", "users", "labs", "doctors", "consents"})

#: Per collection: the table (auth tables qualified, tenant tables resolved in the tenant's schema), the
#: columns inserted, and the unique columns besides the id on which a different record may clash.
TABLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "organizations": ("auth.organizations", ("id", "name", "slug", "created_at"), ("slug",)),
    "users": ("auth.users", ("id", "org_id", "username", "username_key", "password_hash", "role", "active",
                             "must_change_password", "created_at", "deactivated_at"), ()),
    "labs": ("labs", ("id", "name", "code"), ("code",)),
    "doctors": ("doctors", ("id", "name", "specialty"), ()),
    "patients": ("patients", ("id", "external_id", "name_ciphertext", "name_key_id", "name_index", "age", "sex",
                              "lab_id", "referring_doctor_id", "created_at", "updated_at"), ("external_id",)),
    "consents": ("consents", ("id", "patient_id", "consent_type", "method", "text_ciphertext", "text_key_id",
                              "status", "recorded_by", "recorded_at", "revoked_by", "revoked_at"), ()),
    "screenings": ("screenings", ("id", "patient_id", "status", "cbc", "assessment", "label", "risk_class",
                                  "model_version", "requested_by", "correlation_id", "requested_at", "recorded_at",
                                  "lab_id", "doctor_id", "patient_external_id"), ()),
}
_JSON_COLUMNS = frozenset({"cbc", "assessment"})


def insert_sql(collection: str) -> str:
    table, columns, _ = TABLES[collection]
    values = ", ".join(f"CAST(:{c} AS jsonb)" if c in _JSON_COLUMNS else
                       "COALESCE(:created_at, now())" if c == "created_at" else f":{c}" for c in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"


def event_of(record: Planned, run_id: uuid.UUID) -> Envelope[Any]:
    payload = RecordMigratedV1(
        source=SOURCE, collection=record.collection, record_id=record.id,  # type: ignore[arg-type]
        v1_org_id=record.v1_org, v1_id=record.v1_id if record.collection in V1_ID_IN_EVENT else None,
        source_sha256=record.source_sha256, run_id=run_id,
    )
    return new_envelope(payload, event_type=RECORD_MIGRATED[0], event_version=RECORD_MIGRATED[1],
                        tenant_id=record.org_id, actor=ACTOR, correlation_id=run_id,
                        event_id=derived_event_id(record.id, RECORD_MIGRATED[0]))


class Secrets:
    """This platform's keys, as the screening service seals names and texts, and the password policy for users
    created by the migration (``temporary``: random temporary passwords to hand out, else unusable hashes)."""

    def __init__(self, vault: Any, *, temporary_passwords: bool) -> None:
        self.vault = vault
        self.temporary_passwords = temporary_passwords
        self.issued: list[dict[str, str]] = []

    def password_hash(self, username: str, v1_org: str) -> str:
        if not self.temporary_passwords:
            return UNUSABLE_PASSWORD
        from argon2 import PasswordHasher
        from auth import domain

        password = domain.temporary_password()
        while domain.password_problems(password):
            password = domain.temporary_password()
        self.issued.append({"v1_org": v1_org, "username": username, "temporary_password": password})
        return PasswordHasher().hash(domain.normalise_password(password))


class Writer:
    def __init__(self, engine: AsyncEngine, secrets: Secrets, report: Report, *, run_id: uuid.UUID,
                 dry_run: bool, batch_size: int, publisher: Any, progress: Any) -> None:
        self.engine = engine
        self.secrets = secrets
        self.report = report
        self.run_id = run_id
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.publisher = publisher
        self.progress = progress
        #: Records in the database (or that a dry run would put there): what references may point to.
        self.available: set[tuple[str, uuid.UUID]] = set()
        self.usernames: set[str] = set()

    async def write(self, plan: Plan) -> None:
        by_org: dict[str, dict[str, list[Planned]]] = {}
        for collection in COLLECTIONS[1:]:
            for record in plan.records[collection]:
                by_org.setdefault(record.v1_org, {}).setdefault(collection, []).append(record)
        for v1_org in sorted(plan.organizations):
            org = plan.organizations[v1_org]
            records = by_org.get(v1_org, {})
            accepted = await self._organization(org)
            self.progress.update(1)
            if not accepted:
                for collection, pending in records.items():
                    for record in pending:
                        self._refuse(record, "organization_refused", "its organisation was refused")
                    self.progress.update(len(pending))
                continue
            tenant_exists = await self._tenant_exists(org.id)
            for collection in COLLECTIONS[1:]:
                pending = records.get(collection, [])
                for start in range(0, len(pending), self.batch_size):
                    batch = pending[start:start + self.batch_size]
                    await self._batch(collection, org, batch, tenant_exists)
                    self.progress.update(len(batch))

    # -- organisations -----------------------------------------------------------------------------------------

    async def _organization(self, org: Planned) -> bool:
        self.report.organizations[org.v1_org] = {"id": str(org.id), "slug": org.values["slug"]}
        async with self.engine.begin() as conn:
            existing = await conn.scalar(text("SELECT slug FROM auth.organizations WHERE id = :id"), {"id": org.id})
            owner = await conn.scalar(text("SELECT id FROM auth.organizations WHERE slug = :s"),
                                      {"s": org.values["slug"]})
            if existing is not None:
                self.report.counts["organizations"].skipped += 1
            elif owner is not None:
                self._refuse(org, "slug_taken", f"slug {org.values['slug']!r} belongs to another organisation")
                return False
            events = [] if self.dry_run or existing is not None else [event_of(org, self.run_id)]
            if events:
                await conn.execute(text(insert_sql("organizations")),
                                   _row("organizations", org.values | {"id": org.id}))
                await self._outbox(conn, events)
            if existing is None:
                self.report.counts["organizations"].created += 1
        if not self.dry_run:
            from screening.store import TenantRegistry

            await TenantRegistry(self.engine).provision(org.id)  # the screening service's own migrations
            await self.publisher.publish(events)
        self.available.add(("organizations", org.id))
        return True

    async def _tenant_exists(self, org: uuid.UUID) -> bool:
        async with self.engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"),
                                          {"t": f"{tenant_schema(org)}.patients"}))

    # -- one batch ---------------------------------------------------------------------------------------------

    async def _batch(self, collection: str, org: Planned, batch: list[Planned], tenant_exists: bool) -> None:
        counts = self.report.counts[collection]
        ready = []
        for record in batch:
            if record.parent is not None and (record.parent.collection, record.parent.id) not in self.available:
                self._refuse(record, "patient_refused", "its patient was not migrated (see the patients' refusals)")
            else:
                ready.append(record)
        if not ready:
            return
        events: list[Envelope[Any]] = []
        async with in_schema(self.engine, tenant_schema(org.id)) as conn:
            table, _, unique = TABLES[collection]
            readable = tenant_exists or table.startswith("auth.")
            existing = await _existing(conn, table, [r.id for r in ready]) if readable else set()
            owners = {column: await _owners(conn, table, column, [r.values[column] for r in ready])
                      if readable else {} for column in unique}
            taken = await self._taken_usernames(conn, ready) if collection == "users" else set()
            rows = []
            for record in ready:
                if record.id in existing:
                    counts.skipped += 1
                    self.available.add((collection, record.id))
                    continue
                clash = next((c for c in unique if owners[c].get(record.values[c], record.id) != record.id), None)
                if clash is not None:
                    self._refuse(record, f"{clash}_taken",
                                 f"{clash} {record.values[clash]!r} belongs to another record of the organisation")
                    continue
                row = self._row(collection, record, taken)
                if row is None:
                    continue
                rows.append(row)
                counts.created += 1
                self.available.add((collection, record.id))
                if not self.dry_run:
                    events.append(event_of(record, self.run_id))
            if rows and not self.dry_run:
                await conn.execute(text(insert_sql(collection)), rows)
                staff = [{"id": r["id"], "role": r["role"]} for r in rows if collection == "users" and r["active"]]
                if staff:  # the tenant's staff directory, as UserCreated would fill it
                    await conn.execute(
                        text("INSERT INTO staff (user_id, role) VALUES (:id, :role) "
                             "ON CONFLICT (user_id) DO UPDATE SET role = excluded.role, seen_at = now()"), staff)
                await self._outbox(conn, events)
        await self.publisher.publish(events)

    def _row(self, collection: str, record: Planned, taken: set[str]) -> dict[str, Any] | None:
        """The record's column values: references resolved, names sealed, a username and a password chosen."""
        values = dict(record.values) | {"id": record.id}
        for column, ref in record.refs.items():
            values[column] = self._resolve(record, column, ref)
        if record.parent is not None:
            values["patient_id"] = record.parent.id
        if collection == "users":
            username = next((n for n in record.usernames if n.casefold() not in taken | self.usernames), None)
            if username is None:
                self._refuse(record, "username_taken", f"username {record.v1_id!r} and its organisation-qualified "
                             "form are both taken")
                return None
            from shared.text import username_key

            self.usernames.add(username.casefold())
            self.report.users_to_reset += 1
            values |= {"org_id": record.org_id, "username": username, "username_key": username_key(username),
                       "must_change_password": True,
                       "password_hash": "" if self.dry_run else self.secrets.password_hash(username, record.v1_org)}
        elif collection == "patients":
            name = values.pop("name")
            sealed = self.secrets.vault.seal_name(record.org_id, name) if name else None
            values |= {"name_ciphertext": sealed.ciphertext if sealed else None,
                       "name_key_id": sealed.key_id if sealed else None,
                       "name_index": sealed.index if sealed else None}
        elif collection == "consents":
            values["text_ciphertext"], values["text_key_id"] = self.secrets.vault.seal_text(values.pop("text"))
        return _row(collection, values)

    def _resolve(self, record: Planned, column: str, ref: Ref) -> uuid.UUID | None:
        if (ref.collection, ref.id) in self.available:
            return ref.id
        if ref.id != ref.fallback:
            self.report.warnings.append(Problem(record.collection, record.v1_org, record.v1_id, "warning",
                                                f"{column}: the {ref.collection[:-1]} was not migrated; left empty"))
        return ref.fallback

    async def _taken_usernames(self, conn: AsyncConnection, records: Sequence[Planned]) -> set[str]:
        from shared.text import username_key

        keys = {username_key(n): n.casefold() for r in records for n in r.usernames}
        found = await conn.scalars(text("SELECT username_key FROM auth.users WHERE username_key = ANY(:k)"),
                                   {"k": list(keys)})
        return {keys[k] for k in found.all() if k in keys}

    async def _outbox(self, conn: AsyncConnection, events: list[Envelope[Any]]) -> None:
        if events:
            await conn.execute(
                text(f"INSERT INTO {OUTBOX} (event_id, tenant_id, topic, key, envelope) "
                     "VALUES (:e, :t, :topic, :k, :b)"),
                [{"e": e.event_id, "t": e.tenant_id, "topic": str(Topic.MIGRATION), "k": str(e.payload.record_id),
                  "b": encode(e)} for e in events])

    def _refuse(self, record: Planned, code: str, detail: str) -> None:
        self.report.refuse(Problem(record.collection, record.v1_org, record.v1_id, code, detail))


async def _existing(conn: AsyncConnection, table: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    return set((await conn.scalars(text(f"SELECT id FROM {table} WHERE id = ANY(:ids)"), {"ids": ids})).all())


async def _owners(conn: AsyncConnection, table: str, column: str, values: list[Any]) -> dict[Any, uuid.UUID]:
    rows = await conn.execute(text(f"SELECT {column}, id FROM {table} WHERE {column} = ANY(:v)"), {"v": values})
    return {value: ident for value, ident in rows.all()}


def _row(collection: str, values: dict[str, Any]) -> dict[str, Any]:
    _, columns, _ = TABLES[collection]
    return {c: json.dumps(values.get(c)) if c in _JSON_COLUMNS else values.get(c) for c in columns}


class Publisher:
    """Publishes committed events and removes them from the outbox; when the broker cannot be reached, leaves
    them there for the screening service's relay and says so in the report."""

    def __init__(self, engine: AsyncEngine, settings: Any, report: Report, *, connect_timeout: float = 15.0) -> None:
        self.engine = engine
        self.settings = settings
        self.report = report
        self.connect_timeout = connect_timeout
        self.broker: Any = None
        self.unreachable = False

    async def publish(self, events: list[Envelope[Any]]) -> None:
        if not events:
            return
        if not self.unreachable and self.broker is None:
            await self._connect()
        if self.unreachable:
            self.report.events_left_in_outbox += len(events)
            return
        from shared.kafka import publish_many

        try:
            await asyncio.wait_for(publish_many(self.broker, Topic.MIGRATION, events,
                                                key=lambda e: str(e.payload.record_id)), self.connect_timeout * 4)
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves the events to the relay
            log.warning("publishing migration events failed (%s); the outbox keeps them", type(exc).__name__)
            self.unreachable = True
            self.report.events_left_in_outbox += len(events)
            return
        async with self.engine.begin() as conn:
            await conn.execute(text(f"DELETE FROM {OUTBOX} WHERE event_id = ANY(:ids)"),
                               {"ids": [e.event_id for e in events]})
        self.report.events_published += len(events)

    async def _connect(self) -> None:
        from shared.kafka import make_broker

        broker = make_broker(self.settings, "clinomic-ops-v1-migration")
        try:
            await asyncio.wait_for(broker.start(), self.connect_timeout)
        except Exception as exc:  # noqa: BLE001
            log.warning("the broker cannot be reached (%s); migration events stay in the outbox", type(exc).__name__)
            self.unreachable = True
            await _quietly(broker.stop())
            return
        self.broker = broker

    async def close(self) -> None:
        if self.broker is not None:
            await _quietly(self.broker.stop())


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
        pass


class NoPublisher:
    """A dry run publishes nothing."""

    async def publish(self, events: list[Envelope[Any]]) -> None:
        return None

    async def close(self) -> None:
        return None
