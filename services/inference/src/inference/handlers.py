"""Subscribers: assess every requested screening, micro-batching the requests that arrive together; assess
every chunk of a bulk screening, several chunks in one model call."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import numpy as np
from faststream.kafka import KafkaBroker
from prometheus_client import Histogram
from pydantic import ValidationError

from inference.model import B12Model
from inference.settings import InferenceSettings
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import batch as batch_ev
from shared.events import screening as ev
from shared.events.envelope import derived_event_id
from shared.kafka import at_least_once, publish, publish_many, subscribe
from shared.memory import gc_paused

log = logging.getLogger(__name__)
SERVICE_ACTOR = Actor(role="service", service="inference")
RequestEnvelope = Envelope[ev.ScreeningRequestedV1]
BatchRequestEnvelope = Envelope[batch_ev.ScreeningBatchRequestedV1]
#: ``kind``: "screening" (micro-batched single requests) or "bulk" (rows of bulk screening chunks).
BATCH_ROWS = Histogram("clinomic_inference_batch_rows", "Rows assessed per model call", ["kind"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384))
MODEL_SECONDS = Histogram("clinomic_inference_model_seconds", "Time of one model call (all its rows)", ["kind"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


def classified(model: B12Model, requests: list[RequestEnvelope]) -> list[Envelope[Any]]:
    """One CatBoost call per stage for the whole batch; each result keeps the id and cause of its request."""
    features = np.array([r.payload.cbc.as_features() for r in requests], dtype=np.float64)
    BATCH_ROWS.labels("screening").observe(len(requests))
    with MODEL_SECONDS.labels("screening").time():
        assessments = model.assess(features, [r.payload.expected_prevalence for r in requests])
    return [
        new_envelope(
            ev.ScreeningClassifiedV1(request=r.payload, assessment=a),
            event_type=ev.SCREENING_CLASSIFIED[0], event_version=ev.SCREENING_CLASSIFIED[1],
            tenant_id=r.tenant_id, actor=SERVICE_ACTOR, causation=r,
            event_id=derived_event_id(r.event_id, ev.SCREENING_CLASSIFIED[0]),
        )
        for r, a in zip(requests, assessments, strict=True)
    ]


def assessed(model: B12Model, cbcs: list[ev.CompleteBloodCount],
             prevalences: list[float | None]) -> list[ev.Assessment | str]:
    """Every CBC assessed in one model call, each at its organisation's declared prevalence. Should the model
    refuse the call, row by row: a row it cannot assess gets a reason instead (recorded as rejected) and does
    not hold up the others."""
    features = np.array([c.as_features() for c in cbcs], dtype=np.float64)
    BATCH_ROWS.labels("bulk").observe(len(cbcs))
    try:
        with MODEL_SECONDS.labels("bulk").time():
            return list(model.assess(features, prevalences))
    except ValueError:
        log.warning("the model refused a batch of %d rows; assessing them one by one", len(cbcs))
    results: list[ev.Assessment | str] = []
    for row, prevalence in zip(features, prevalences, strict=True):
        try:
            results.append(model.assess(row[None, :], [prevalence])[0])
        except ValueError as problem:
            results.append(f"the model could not assess this CBC: {problem}")
    return results


def parsed_chunks(messages: list[bytes]) -> list[BatchRequestEnvelope]:
    chunks = []
    for raw in messages:
        try:
            chunks.append(BatchRequestEnvelope.model_validate_json(raw))
        except ValidationError as exc:  # a contract breach: kept by the audit ledger, logged by field only
            fields = sorted({".".join(map(str, e["loc"][:2])) for e in exc.errors()})
            log.error("unreadable batch chunk skipped: %s", fields)
    return chunks


def classified_chunks(model: B12Model, messages: list[bytes]) -> list[Envelope[Any]]:
    """The chunks' rows in one model call; one ``ScreeningBatchClassified`` per chunk, its id derived from the
    chunk's (a redelivered chunk yields the same event)."""
    with gc_paused():  # parsing, assessing, the events: tens of objects a row, none of them cyclic garbage
        return _classified_chunks(model, parsed_chunks(messages))


def _classified_chunks(model: B12Model, chunks: list[BatchRequestEnvelope]) -> list[Envelope[Any]]:
    results = iter(assessed(model, [r.cbc for c in chunks for r in c.payload.rows],
                            [c.payload.expected_prevalence for c in chunks for _ in c.payload.rows]))
    outgoing = []
    for c in chunks:
        rows = []
        for request in c.payload.rows:
            result = next(results)
            rows.append(batch_ev.ClassifiedRow(
                request=request, assessment=result if isinstance(result, ev.Assessment) else None,
                rejection_reason=result if isinstance(result, str) else None))
        kind, version = batch_ev.SCREENING_BATCH_CLASSIFIED
        outgoing.append(new_envelope(
            batch_ev.ScreeningBatchClassifiedV1(job_id=c.payload.job_id, chunk=c.payload.chunk, rows=rows,
                                                requested_at=c.payload.requested_at),
            event_type=kind, event_version=version, tenant_id=c.tenant_id, actor=SERVICE_ACTOR, causation=c,
            event_id=derived_event_id(c.event_id, kind)))
    return outgoing


def register(broker: KafkaBroker, settings: InferenceSettings, model: B12Model, batch_size: int) -> None:
    @subscribe(broker, Topic.SCREENING_REQUESTED, batch=True, max_records=batch_size, batch_timeout_ms=5,
               **at_least_once(settings, "inference"))
    async def assess_screenings(messages: list[bytes]) -> None:
        requests = []
        for raw in messages:
            try:
                requests.append(RequestEnvelope.model_validate_json(raw))
            except ValidationError as exc:
                # The gateway validates every CBC; an unreadable command is a contract breach. It stays in the
                # audit ledger (which reads every topic) and is logged by field only, never by value.
                log.error("unreadable screening command skipped: %s",
                          [".".join(map(str, e["loc"])) for e in exc.errors()])
        if not requests:
            return
        outgoing = await asyncio.to_thread(classified, model, requests) if len(requests) > 32 \
            else classified(model, requests)
        await asyncio.gather(*(publish(broker, Topic.SCREENING_CLASSIFIED, e,
                                       key=str(e.payload.request.screening_id)) for e in outgoing))

    bulk_model = model
    if settings.batch_thread_count != model.thread_count:  # same trees, another CatBoost thread count
        bulk_model = copy.copy(model)
        bulk_model.thread_count = settings.batch_thread_count

    @subscribe(broker, Topic.SCREENING_BATCH_REQUESTED, batch=True, max_records=settings.batch_chunks_per_call,
               batch_timeout_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS, **at_least_once(settings, "inference-batch",
                                                   fetch_max_wait_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS))
    async def assess_screening_batches(messages: list[bytes]) -> None:
        outgoing = await asyncio.to_thread(classified_chunks, bulk_model, messages)
        await publish_many(broker, Topic.SCREENING_BATCH_CLASSIFIED, outgoing,
                           key=lambda e: str(e.payload.job_id))
