"""Structured logging with a filter that keeps secrets and PHI-shaped values out of every log line."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

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


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname,
                "service": self.service,
                "logger": record.name,
                "message": redact(message),
            }
        )


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
