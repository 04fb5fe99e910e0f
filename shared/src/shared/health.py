"""Liveness and readiness routes; the dev launcher and orchestrators wait on ``/health/ready``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse


def health_router(readiness: Callable[[], dict[str, Any]]) -> APIRouter:
    """``readiness`` returns a dict whose ``ready`` key decides 200 or 503; the rest is reported as-is."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        report = readiness()
        return JSONResponse(report, status_code=200 if report.get("ready") else 503)

    return router
