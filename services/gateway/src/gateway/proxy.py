"""Forwarding of REST calls to the service that owns them; the caller's token travels with the request.

A response the service streams (chunked transfer encoding, e.g. an export) is relayed chunk by chunk as it
arrives, so the gateway holds no more of it than a chunk; any other response is read whole, as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

_FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "idempotency-key")
_FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate", "location", "content-disposition")


def _has_dot_segment(path: str) -> bool:
    """httpx normalises ``.``/``..`` away, so such a path could reach a route the gateway never exposes."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _unavailable() -> Response:
    return Response('{"detail": "service unavailable"}', status_code=503, media_type="application/json",
                    headers={"retry-after": "5"})


async def forward(client: httpx.AsyncClient, base_url: str, request: Request) -> Response:
    """Relay the request to ``base_url`` with the same path; a path with dot segments is not found (404)."""
    if _has_dot_segment(request.url.path):
        return Response('{"detail": "not found"}', status_code=404, media_type="application/json")
    headers = {h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers}
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    outgoing = client.build_request(request.method, base_url + request.url.path, params=request.query_params,
                                    content=await request.body(), headers=headers)
    try:
        upstream = await client.send(outgoing, stream=True)
    except httpx.HTTPError:
        return _unavailable()
    relayed = {h: upstream.headers[h] for h in _FORWARDED_RESPONSE_HEADERS if h in upstream.headers}
    if upstream.headers.get("transfer-encoding", "").lower() == "chunked":
        return StreamingResponse(_relay(upstream), status_code=upstream.status_code, headers=relayed,
                                 background=BackgroundTask(upstream.aclose))
    try:
        body = await upstream.aread()
    except httpx.HTTPError:
        return _unavailable()
    finally:
        await upstream.aclose()
    return Response(body, status_code=upstream.status_code, headers=relayed)


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives. Should the service fail midway, the error propagates and the client's
    response is cut off (no final chunk), so a truncated download is never mistaken for a complete one."""
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):  # also when the client went away: free the upstream connection
            await upstream.aclose()
