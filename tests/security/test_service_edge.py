"""The edge every service installs (``shared.web.install_error_handlers``), on a small app served by uvicorn:
an unexpected error answers 500 and keeps the keep-alive connection (issue 13, item 4: the closed connection
was the next caller's 503); internal routes want the service credential; deep JSON never reaches a route."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared.tokens import SERVICE_TOKEN_HEADER
from shared.web import install_error_handlers

CREDENTIAL = "c" * 48


def _app() -> FastAPI:
    app = FastAPI(title="edge-test")
    install_error_handlers(app)

    @app.get("/peer")
    async def peer(request: Request) -> dict:
        assert request.client is not None
        return {"port": request.client.port}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("an unexpected error")

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/internal/secret")
    async def secret() -> dict:
        return {"revoked": []}

    return app


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INTERNAL_SERVICE_TOKEN", CREDENTIAL)
        app = _app()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           proxy_headers=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(served: str) -> None:
    with httpx.Client(base_url=served) as client:
        before = client.get("/peer").json()["port"]
        failed = client.get("/boom")
        after = client.get("/peer").json()["port"]
    assert failed.status_code == 500 and failed.json() == {"detail": "internal error"}
    assert after == before  # the same TCP connection: nothing for a pool to find closed


def test_an_internal_route_wants_the_service_credential(served: str) -> None:
    with httpx.Client(base_url=served) as client:
        assert client.get("/internal/secret").status_code == 401
        assert client.get("/internal/secret", headers={SERVICE_TOKEN_HEADER: "x" * 48}).status_code == 401
        assert client.get("/internal/secret", headers={SERVICE_TOKEN_HEADER: CREDENTIAL}).status_code == 200


@pytest.mark.parametrize(("body", "kind"), [(b"[" * 50_000, "json_too_deep"), (b'{"a": [1, 2}', "json_invalid"),
                                             (b"\xff", "json_invalid")])
def test_a_json_body_is_checked_before_any_route_parses_it(served: str, body: bytes, kind: str) -> None:
    with httpx.Client(base_url=served) as client:
        refused = client.post("/echo", content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 422
        assert refused.json()["errors"] == [{"field": "body", "message": refused.json()["errors"][0]["message"],
                                             "type": kind}]
        undeclared = client.post("/echo", content=b"[" * 50_000)  # FastAPI would parse it as JSON
        assert undeclared.status_code == 422 and undeclared.json()["errors"][0]["type"] == "json_too_deep"
        assert client.post("/echo", json={"a": [[1]]}).json() == {"a": [[1]]}
