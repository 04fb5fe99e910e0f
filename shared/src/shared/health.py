"""Liveness and readiness: readiness asks each dependency (database, broker, model) for real and names the one
that fails; the dev launcher and orchestrators wait on ``/health/ready``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.observability import redact

log = logging.getLogger(__name__)

#: A check returns when its dependency answered as it should and raises otherwise.
Check = Callable[[], Awaitable[None]]
#: Each check's answer must come within this; orchestrators probe every few seconds with a short timeout.
CHECK_TIMEOUT_SECONDS = 2.0
OK = "ok"


class NotReady(Exception):
    """A dependency answered, but not as it should (say why in one line, without values)."""


def report(outcomes: Mapping[str, str]) -> dict[str, Any]:
    """The readiness answer: ready when every check says :data:`OK`; ``failing`` names the others."""
    failing = sorted(name for name, outcome in outcomes.items() if outcome != OK)
    return {"ready": bool(outcomes) and not failing, "checks": dict(outcomes), "failing": failing}


async def _outcome(name: str, check: Check, timeout: float) -> str:
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        outcome = f"no answer within {timeout:g} s"
    except NotReady as problem:
        outcome = str(problem)
    except Exception as exc:  # the class is enough for the answer; the log line says more
        log.warning("readiness check %s failed: %s", name, redact(f"{type(exc).__name__}: {exc}")[:300])
        return f"failed ({type(exc).__name__})"
    else:
        return OK
    log.warning("readiness check %s failed: %s", name, outcome)
    return outcome


async def readiness(checks: Mapping[str, Check] | None, timeout: float = CHECK_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Run every check at once, each bounded by ``timeout``; ``None``: the service is starting or stopping."""
    if checks is None:
        return report({"service": "starting or stopping"})
    names = list(checks)
    outcomes = await asyncio.gather(*(_outcome(n, checks[n], timeout) for n in names))
    return report(dict(zip(names, outcomes, strict=True)))


def database(engine: AsyncEngine) -> Check:
    """The database answers a query on a connection of the service's own pool."""

    async def check() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return check


def broker(kafka: KafkaBroker, timeout: float = CHECK_TIMEOUT_SECONDS * 0.75) -> Check:
    """The broker answers a cluster description on the service's own connection (FastStream's ping)."""

    async def check() -> None:
        if not await kafka.ping(timeout):
            raise NotReady("the broker does not answer")

    return check


def health_router(checks: Callable[[], Mapping[str, Check] | None]) -> APIRouter:
    """``checks`` gives the running service's checks (``None`` before start and while stopping): 200 when all
    pass, else 503; either way the body says what each check found."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        answer = await readiness(checks())
        return JSONResponse(answer, status_code=200 if answer["ready"] else 503)

    return router
