"""A screening carries when its blood was drawn (``collected_at``): classify records it, the screening and the
history return it, the analytics stream has its day; an implausible or naive time is a 422 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from devstack.stack import Platform
from shared.events.topics import Topic
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import consented_patient, eventually, ok, topic_messages


async def _classify(gateway: httpx.AsyncClient, lab: dict[str, str], external_id: str,
                    collected_at: str) -> httpx.Response:
    return await gateway.post("/api/screening/classify", headers=lab, json={
        "patient": {"external_id": external_id}, "cbc": HEALTHY_CBC, "collected_at": collected_at})


async def _recorded(gateway: httpx.AsyncClient, lab: dict[str, str], answer: httpx.Response) -> dict[str, Any]:
    """The stored screening (the answer may be 202 on a busy machine: then it is polled until recorded)."""
    assert answer.status_code in (200, 202), answer.text

    async def stored() -> dict[str, Any] | None:
        response = await gateway.get(answer.json()["url"], headers=lab)
        return response.json() if response.status_code == 200 else None

    return await eventually(stored, timeout=60)


def _when(days_ago: float) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(microsecond=0)


async def test_a_screening_is_recorded_and_returned_with_its_collection_time(gateway: httpx.AsyncClient,
                                                                          lab: dict[str, str]) -> None:
    patient = await consented_patient(gateway, lab)
    collected = _when(3)
    answer = await _classify(gateway, lab, patient["external_id"], collected.isoformat())
    screening = await _recorded(gateway, lab, answer)
    assert datetime.fromisoformat(screening["collected_at"]) == collected
    if answer.status_code == 200:  # the synchronous answer is the ScreeningRecorded payload
        assert datetime.fromisoformat(answer.json()["collected_at"]) == collected
    history = ok(await gateway.get("/api/screening/history", headers=lab,
                                   params={"patient_external_id": patient["external_id"]}))
    assert [datetime.fromisoformat(s["collected_at"]) for s in history["items"]] == [collected]


async def test_a_screening_without_a_collection_time_has_none(gateway: httpx.AsyncClient,
                                                              lab: dict[str, str]) -> None:
    patient = await consented_patient(gateway, lab)
    answer = await gateway.post("/api/screening/classify", headers=lab,
                                json={"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC})
    assert (await _recorded(gateway, lab, answer))["collected_at"] is None


async def test_the_analytics_stream_carries_the_day_of_collection(gateway: httpx.AsyncClient, lab: dict[str, str],
                                                                  platform: Platform) -> None:
    patient = await consented_patient(gateway, lab)
    collected = _when(10)
    screening = await _recorded(gateway, lab, await _classify(gateway, lab, patient["external_id"],
                                                              collected.isoformat()))
    events = await topic_messages(platform.env["KAFKA_BOOTSTRAP_SERVERS"], Topic.ANALYTICS_SCREENINGS,
                                  until=lambda found: any(e["payload"].get("screening_id") == screening["id"]
                                                          for e in found), timeout=60)
    # The topic also holds bulk rows' chunk events (no top-level screening id), from other tests' uploads.
    [event] = [e for e in events if e["payload"].get("screening_id") == screening["id"]]
    assert event["payload"]["collected_on"] == collected.date().isoformat()


async def test_a_future_collection_time_is_refused_with_422_naming_the_field(gateway: httpx.AsyncClient,
                                                                             lab: dict[str, str]) -> None:
    patient = await consented_patient(gateway, lab)
    response = await _classify(gateway, lab, patient["external_id"],
                               (datetime.now(UTC) + timedelta(hours=2)).isoformat())
    assert response.status_code == 422
    assert [(e["field"], "future" in e["message"]) for e in response.json()["errors"]] == [("collected_at", True)]


async def test_a_collection_time_without_a_time_zone_is_refused_with_422_naming_the_field(
        gateway: httpx.AsyncClient, lab: dict[str, str]) -> None:
    patient = await consented_patient(gateway, lab)
    response = await _classify(gateway, lab, patient["external_id"], _when(1).replace(tzinfo=None).isoformat())
    assert response.status_code == 422
    assert [(e["field"], "time zone" in e["message"]) for e in response.json()["errors"]] == [("collected_at", True)]
