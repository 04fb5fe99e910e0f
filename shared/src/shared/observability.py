"""Structured logging: JSON lines carrying the service, the correlation id and the tenant of the work in hand
(and its trace, when one is recorded), with a filter that keeps secrets and PHI-shaped values out of every
line."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from opentelemetry import trace

_REDACTIONS = (
    (re.compile(r"(?i)(authorization:\s*bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), "[redacted-jwt]"),
    (re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}"), "[redacted-fernet]"),
    (re.compile(r'(?i)("?(password|secret|token|patient_name|name|key)"?\s*[:=]\s*)("[^"]*"|\S+)'),
     r"\1[redacted]"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


@dataclass(slots=True)
class WorkIds:
    """What the current request or delivery belongs to: a correlation id (one screening, batch job or request:
    the envelopes' ``correlation_id``) and a tenant id; a delivery of many messages holds the list of each.

    Mutable and shared with the tasks the work starts (they copy the context, not the object), so a request
    joins the correlation of the event it publishes even when a child task publishes it.
    """

    correlation: str | list[str] | None
    tenant: str | list[str] | None = None
    joinable: bool = False


_IDS: ContextVar[WorkIds | None] = ContextVar("clinomic_work_ids", default=None)


def correlation_id() -> str | None:
    """The correlation id bound now (the first one of a delivery of many)."""
    ids = _IDS.get()
    bound = ids.correlation if ids is not None else None
    return bound[0] if isinstance(bound, list) else bound


def join_event(correlation: Any, tenant: Any) -> None:
    """Called on publishing an event: an HTTP request's following log lines (and its ``X-Correlation-ID``) carry
    the event's correlation and tenant ids, which every service that handles the event logs; elsewhere (a
    handler, a relay loop) the binding stays as it is."""
    ids = _IDS.get()
    if ids is not None and ids.joinable:
        ids.joinable = False  # the first event names the request; later ones are its consequences
        ids.correlation = str(correlation)
        ids.tenant = str(tenant) if tenant is not None else None


def bind(ids: WorkIds) -> Callable[[], None]:
    """Make the log lines of this task (and of the tasks it starts) carry ``ids``; returns the undo."""
    token = _IDS.set(ids)
    return lambda: _IDS.reset(token)


def bind_request(correlation: str | None) -> Callable[[], None]:
    """Bind a request's correlation id (the caller's, else a new one); returns the undo."""
    return bind(WorkIds(correlation or str(uuid.uuid4()), joinable=True))


def _one_or_all(values: list[str]) -> str | list[str] | None:
    unique = list(dict.fromkeys(v for v in values if v))
    return unique[0] if len(unique) == 1 else (unique or None)


def delivery_context(headers: list[dict[str, Any]]) -> tuple[str | list[str] | None, str | list[str] | None]:
    """The correlation and tenant ids of a delivery's messages (from the ``correlation_id`` and ``tenant_id``
    headers ``shared.kafka`` publishes): one value when all agree, else each distinct one."""
    return (_one_or_all([str(h.get("correlation_id") or "") for h in headers]),
            _one_or_all([str(h.get("tenant_id") or "") for h in headers]))


consume_log = logging.getLogger("clinomic.consume")


class LogContextMiddleware(BaseMiddleware):  # type: ignore[misc]
    """FastStream middleware: every log line of a handler carries its delivery's correlation and tenant ids, and
    each delivery leaves one line (topic, messages, outcome, duration) so one screening can be followed across
    services with ``grep`` (the ids only: never a value of the messages)."""

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple | list) else (raw,)
        headers = msg.batch_headers or [msg.headers]
        reset = bind(WorkIds(*delivery_context(headers)))
        started, outcome = time.perf_counter(), "failed"
        try:
            result = await call_next(msg)
            outcome = "handled"
            return result
        finally:
            consume_log.info("%s: %d message(s) %s in %.1f ms", getattr(records[0], "topic", "?"), len(records),
                             outcome, (time.perf_counter() - started) * 1000)
            reset()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": redact(message),
        }
        ids = _IDS.get()
        if ids is not None and ids.correlation is not None:
            line["correlation_id"] = ids.correlation
        if ids is not None and ids.tenant is not None:
            line["tenant_id"] = ids.tenant
        span = trace.get_current_span().get_span_context()
        if span.trace_flags.sampled:  # a trace that is recorded (shared.tracing): its id finds it in the backend
            line["trace_id"] = trace.format_trace_id(span.trace_id)
        return json.dumps(line)


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stderr; every record passes the redaction filter, whatever library emitted it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "faststream.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn installs its own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
