"""A minimal ASGI application for ``test_launch``: its readiness answer is the environment it was served with."""

from __future__ import annotations

import os
from typing import Any


def create_app() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = os.environ.get("PROBE", "").encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app
