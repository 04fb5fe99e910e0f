"""Every topic, the events published on it and their payload models; the AsyncAPI document made from them.

The catalog is the one place that says which contract travels where. The AsyncAPI 3.0 document is built
from it and from the pydantic models themselves (JSON Schema in serialization mode, docstrings as
descriptions), so it cannot describe an event other than the one the code publishes. The gateway serves it
at ``GET /api/events/asyncapi.json``; ``docs/asyncapi.json`` is its committed copy, written by::

    uv run python -m shared.events.catalog docs/asyncapi.json     # without a path: to stdout

and a test fails when a topic has no entry or the committed copy differs from what the code generates.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.events import analytics, batch, identity, migration, records, screening
from shared.events.envelope import Envelope
from shared.events.topics import ALL_TOPICS_PATTERN, Topic

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMAS = "#/components/schemas/"


@dataclass(frozen=True)
class EventKind:
    """One version of one event type and the model of its payload."""

    event_type: str
    version: int
    payload: type[BaseModel]

    @property
    def message_id(self) -> str:
        return f"{self.event_type}.v{self.version}"


@dataclass(frozen=True)
class Channel:
    """A topic: what it carries, what its messages are keyed by (order is kept per key), who uses it."""

    topic: str
    summary: str
    key: str
    producer: str
    consumers: tuple[str, ...]
    events: tuple[EventKind, ...]

    @property
    def channel_id(self) -> str:
        return self.topic.removeprefix("clinomic.").replace(".", "-")


def _kinds(*pairs: tuple[tuple[str, int], type[BaseModel]]) -> tuple[EventKind, ...]:
    return tuple(EventKind(kind[0], kind[1], model) for kind, model in pairs)


CATALOG: tuple[Channel, ...] = (
    Channel(Topic.SCREENING_REQUESTED, "Screening commands: a lab's CBC to be classified", "screening id",
            "gateway", ("inference", "audit"),
            _kinds((screening.SCREENING_REQUESTED, screening.ScreeningRequestedV1))),
    Channel(Topic.SCREENING_CLASSIFIED, "The model's assessment of a request, or why it could not make one",
            "screening id", "inference", ("screening", "audit"),
            _kinds((screening.SCREENING_CLASSIFIED, screening.ScreeningClassifiedV1),
                   (screening.SCREENING_REJECTED, screening.ScreeningRejectedV1))),
    Channel(Topic.SCREENING_RECORDED, "Single screenings stored in their organisation's schema (the rows of a "
            "bulk upload are announced by their chunk, on clinomic.screening.batch-recorded)", "screening id",
            "screening", ("gateway", "screening (analytics stream)", "audit"),
            _kinds((screening.SCREENING_RECORDED, screening.ScreeningRecordedV1))),
    Channel(Topic.IDENTITY, "Organisations, users and the authentication trail",
            "user id (organisation id for OrganizationCreated, a keyed digest of the typed username for "
            "failed logins and lockouts)", "auth", ("screening", "every token verifier", "audit"),
            _kinds((identity.ORGANIZATION_CREATED, identity.OrganizationCreatedV1),
                   (identity.USER_CREATED, identity.UserCreatedV1),
                   (identity.LOGIN_SUCCEEDED, identity.LoginSucceededV1),
                   (identity.LOGIN_FAILED, identity.LoginFailedV1),
                   (identity.ACCOUNT_LOCKED, identity.AccountLockedV1),
                   (identity.MFA_ENABLED, identity.MfaEnabledV1),
                   (identity.MFA_DISABLED, identity.MfaDisabledV1),
                   (identity.BACKUP_CODE_USED, identity.BackupCodeUsedV1),
                   (identity.BACKUP_CODES_REGENERATED, identity.BackupCodesRegeneratedV1),
                   (identity.TOTP_REPLAY_REFUSED, identity.TotpReplayRefusedV1),
                   (identity.BACKUP_CODE_REUSE_REFUSED, identity.BackupCodeReuseRefusedV1),
                   (identity.REFRESH_TOKEN_REUSE_DETECTED, identity.RefreshTokenReuseDetectedV1),
                   (identity.SESSIONS_REVOKED, identity.SessionsRevokedV1),
                   (identity.PASSWORD_CHANGED, identity.PasswordChangedV1),
                   (identity.PASSWORD_RESET, identity.PasswordResetV1),
                   (identity.USER_DEACTIVATED, identity.UserDeactivatedV1),
                   (identity.ROLE_CHANGED, identity.RoleChangedV1))),
    Channel(records.RECORDS_TOPIC, "Clinical records created, changed, viewed or exported in an organisation",
            "organisation id", "screening", ("audit",),
            tuple(EventKind(kind[0], kind[1], model) for model, kind in records.KINDS.items())),
    Channel(Topic.SCREENING_BATCH_REQUESTED, "Bulk screening commands, one chunk of rows each", "job id",
            "gateway", ("inference", "audit"),
            _kinds((batch.SCREENING_BATCH_REQUESTED, batch.ScreeningBatchRequestedV1))),
    Channel(Topic.SCREENING_BATCH_CLASSIFIED, "The model's assessments of one chunk of a bulk screening",
            "job id", "inference", ("screening", "audit"),
            _kinds((batch.SCREENING_BATCH_CLASSIFIED, batch.ScreeningBatchClassifiedV1))),
    Channel(Topic.SCREENING_BATCH_RECORDED,
            "Chunks of a bulk screening stored in the organisation's schema: v2 carries every row's screening and "
            "is the only recorded event of those rows; v1 (outcomes only) is still read for one release",
            "job id", "screening", ("gateway", "screening (analytics stream)", "audit"),
            _kinds((batch.SCREENING_BATCH_RECORDED, batch.ScreeningBatchRecordedV1),
                   (batch.SCREENING_BATCH_RECORDED_V2, batch.ScreeningBatchRecordedV2))),
    Channel(Topic.ANALYTICS_SCREENINGS,
            "Every recorded screening, de-identified for analytics (no names, pseudonymous patient keys), exactly "
            "once: a single screening as ScreeningRecordedDeidentified, a bulk row inside the one "
            "ScreeningBatchRecordedDeidentified of its chunk",
            "pseudonymous patient key (job id for ScreeningBatchRecordedDeidentified)", "screening",
            ("analytics consumers", "audit"),
            _kinds((analytics.SCREENING_RECORDED_DEIDENTIFIED, analytics.ScreeningRecordedDeidentifiedV1),
                   (analytics.SCREENING_BATCH_RECORDED_DEIDENTIFIED,
                    analytics.ScreeningBatchRecordedDeidentifiedV1))),
    Channel(Topic.MIGRATION, "Records migrated from Clinomic v1, one event per record (docs/v1-migration.md)",
            "record id", "clinomic-ops migrate-from-mongodb", ("audit",),
            _kinds((migration.RECORD_MIGRATED, migration.RecordMigratedV1))),
)

DESCRIPTION = f"""Every event of the Clinomic platform travels in one JSON envelope (the message value): \
`event_id` (the idempotency key), `event_type`, `event_version`, `occurred_at`, `tenant_id` (the \
organisation), `actor` (user id and role, never a name), `correlation_id`, `causation_id` and the versioned \
`payload`. The headers `event_type` and `event_version` repeat the envelope's, so a consumer can skip an \
event without parsing it.

Delivery is at least once: consumers drop a repeated `event_id`. Order is kept per message key only. Within \
a version, changes are additive (new optional fields); a breaking change is a new `event_version`, and \
consumers skip versions they do not know. Every topic matches `{ALL_TOPICS_PATTERN}`, so the audit ledger \
reads them all. See docs/event-stream.md."""


def _summary(model: type[BaseModel]) -> str | None:
    """The first paragraph of the model's own docstring (inherited ones do not describe it)."""
    doc = model.__dict__.get("__doc__")
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else None


def _message(channel: Channel, kind: EventKind, envelope_schema: dict[str, Any]) -> dict[str, Any]:
    summary = _summary(kind.payload)
    return {
        "name": kind.event_type,
        "title": f"{kind.event_type} v{kind.version}",
        **({"summary": summary} if summary else {}),
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "required": ["event_type", "event_version"],
            "properties": {"event_type": {"type": "string", "const": kind.event_type},
                           "event_version": {"type": "string", "const": str(kind.version)}},
        },
        "payload": {"allOf": [envelope_schema, {
            "type": "object",
            "properties": {"event_type": {"const": kind.event_type},
                           "event_version": {"const": kind.version}},
        }]},
        "correlationId": {"location": "$message.payload#/correlation_id"},
        "bindings": {"kafka": {"key": {"type": "string", "description": channel.key},
                               "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every channel in :data:`CATALOG`: the platform is the sender of all."""
    kinds = [(channel, kind) for channel in CATALOG for kind in channel.events]
    envelopes = [(Envelope[kind.payload], "serialization") for _, kind in kinds]  # type: ignore[valid-type]
    references, definitions = models_json_schema(envelopes, ref_template=SCHEMAS + "{model}")
    messages = {kind.message_id: _message(channel, kind, references[envelope])
                for (channel, kind), envelope in zip(kinds, envelopes, strict=True)}
    channels = {
        channel.channel_id: {
            "address": channel.topic,
            "summary": channel.summary,
            "description": f"Produced by {channel.producer}; read by {', '.join(channel.consumers)}. "
                           f"Messages are keyed by the {channel.key}: their order is kept per key.",
            "messages": {kind.message_id: {"$ref": f"#/components/messages/{kind.message_id}"}
                         for kind in channel.events},
            "bindings": {"kafka": {"topic": channel.topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        for channel in CATALOG
    }
    operations = {
        f"send-{channel.channel_id}": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel.channel_id}"},
            "summary": f"{channel.producer} publishes on {channel.topic}",
            "messages": [{"$ref": f"#/channels/{channel.channel_id}/messages/{kind.message_id}"}
                         for kind in channel.events],
        }
        for channel in CATALOG
    }
    contract = {"channels": channels, "operations": operations,
                "components": {"messages": messages, "schemas": definitions.get("$defs", {})}}
    fingerprint = hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": "Clinomic events", "version": f"sha256:{fingerprint}", "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {"development": {"host": "127.0.0.1:9092", "protocol": "kafka",
                                    "description": "The broker ./run starts (KAFKA_BOOTSTRAP_SERVERS)"}},
    } | contract


@functools.cache
def asyncapi_json() -> str:
    """The document as the committed ``docs/asyncapi.json`` holds it."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.events.catalog",
                                     description="Write the AsyncAPI document of every Clinomic topic.")
    parser.add_argument("path", nargs="?", type=Path, help="where to write it (default: stdout)")
    path = parser.parse_args(argv).path
    if path is None:
        sys.stdout.write(asyncapi_json())
    else:
        path.write_text(asyncapi_json(), encoding="utf-8")


if __name__ == "__main__":
    main()
