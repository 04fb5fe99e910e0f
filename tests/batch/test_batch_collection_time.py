"""A batch row may carry its sample's collection time: an optional ``collected_at`` column (CSV) or field (JSON),
checked like classify's, carried in the chunk command and recorded with the screening."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from gateway.batch import CSV_COLUMNS, AdmittedRow, chunk_commands, read_csv, read_json
from shared.events import Actor
from tests.batch.conftest import completed, consented, upload
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import ok

HEADER = ",".join([*CSV_COLUMNS, "collected_at"])


def line(external_id: str, collected_at: str) -> str:
    return ",".join([external_id, "", *(str(HEALTHY_CBC[c]) for c in CSV_COLUMNS[2:]), collected_at])


def csv(*lines: str) -> bytes:
    return "\n".join([HEADER, *lines]).encode()


def _when(days_ago: float) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(microsecond=0)


def test_a_csv_row_reads_its_collection_time_and_an_empty_cell_is_none() -> None:
    collected = _when(2)
    checked = read_csv(csv(line("P-1", collected.isoformat()), line("P-2", "")), 10)
    assert [r.collected_at for r in checked.accepted] == [collected, None]


def test_a_csv_row_with_a_future_collection_time_is_rejected_naming_the_column() -> None:
    checked = read_csv(csv(line("P-1", (datetime.now(UTC) + timedelta(days=1)).isoformat())), 10)
    [rejected] = checked.rejected
    assert [(p.field, "future" in p.message) for p in rejected.errors] == [("collected_at", True)]


def test_a_json_row_with_a_naive_collection_time_is_rejected_naming_the_field() -> None:
    item = {"patient": {"external_id": "P-1"}, "cbc": HEALTHY_CBC,
            "collected_at": _when(1).replace(tzinfo=None).isoformat()}
    [rejected] = read_json(json.dumps([item]).encode(), 10).rejected
    assert [p.field for p in rejected.errors] == ["collected_at"]


def test_the_chunk_command_carries_each_rows_collection_time() -> None:
    collected = _when(5)
    rows = [AdmittedRow(r, uuid.uuid4(), None)
            for r in read_csv(csv(line("P-1", collected.isoformat()), line("P-2", "")), 10).accepted]
    [command] = chunk_commands(uuid.uuid4(), uuid.uuid4(), Actor(role="service", service="test"), rows, 10,
                               datetime.now(UTC))
    assert [r.collected_at for r in command.payload.rows] == [collected, None]


async def test_a_batch_row_is_recorded_with_its_collection_time(gateway: httpx.AsyncClient,
                                                                lab: dict[str, str]) -> None:
    first, second = await consented(gateway, lab, 2)
    collected = _when(20)
    accepted = ok(await upload(gateway, lab, csv(line(first, collected.isoformat()), line(second, ""))), 202)
    job = await completed(gateway, lab, accepted["job_id"])
    by_row = {o["row"]: o["screening_id"] for o in job["outcomes"]}
    recorded = [ok(await gateway.get(f"/api/screenings/{by_row[row]}", headers=lab))["collected_at"]
                for row in (1, 2)]
    assert [datetime.fromisoformat(recorded[0]), recorded[1]] == [collected, None]
