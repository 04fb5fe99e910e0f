"""The gateway's proxy and a pooled connection the service closed (issue 13, item 4): an idempotent request
is sent again once; a POST is not (the service may have acted on it)."""

from __future__ import annotations

import httpx
import pytest

from gateway.proxy import _send


def _closing_once(calls: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
async def test_an_idempotent_request_on_a_connection_closed_before_the_response_is_sent_again(method: str) -> None:
    calls: list[str] = []
    async with httpx.AsyncClient(transport=_closing_once(calls)) as client:
        response = await _send(client, client.build_request(method, "http://screening/api/labs"))
    assert response.status_code == 200 and calls == [method, method]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_non_idempotent_request_is_not_sent_twice(method: str) -> None:
    calls: list[str] = []
    async with httpx.AsyncClient(transport=_closing_once(calls)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _send(client, client.build_request(method, "http://screening/api/labs", json={}))
    assert calls == [method]


async def test_a_second_failure_is_not_retried_again() -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ReadError("connection reset", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(httpx.ReadError):
            await _send(client, client.build_request("GET", "http://screening/api/labs"))
    assert calls == ["GET", "GET"]
