"""Forwarding of REST calls to the service that owns them; the caller's token travels with the request.

A response the service streams (chunked transfer encoding, e.g. an export) is relayed chunk by chunk as it
arrives, so the gateway holds no more of it than a chunk; any other response is read whole, as before.

The pool reuses connections across callers and tenants. A service may close an idle connection just as
the gateway sends on it; the request then fails before any response, through no fault of the caller. An
idempotent request is sent again, once, on a fresh connection, so one caller's bad luck (or an earlier
caller's error) never becomes the next caller's 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from shared.observability import correlation_id
from shared.text import has_control_character
from shared.web import invalid

log = logging.getLogger(__name__)

_FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "idempotency-key")
_FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate", "location", "content-disposition")
#: RFC 9110 §9.2.2: repeating these has the effect of sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Raised by httpx when a connection closes (or resets) before any byte of a response arrived.
_CLOSED_BEFORE_RESPONSE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _has_dot_segment(path: str) -> bool:
    """httpx normalises ``.``/``..`` away, so such a path could reach a route the gateway never exposes."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _unavailable() -> Response:
    return Response('{"detail": "service unavailable"}', status_code=503, media_type="application/json",
                    headers={"retry-after": "5"})


def _unsafe_text(request: Request) -> JSONResponse | None:
    """A control character in the path or query (``/api/patients/%00``) is a 422 here: httpx refuses to build
    such a URL, and no service could store or match it."""
    if has_control_character(request.url.path):
        return invalid([{"field": "path", "message": "must not contain control characters",
                         "type": "control_character"}])
    for name, value in request.query_params.multi_items():
        if has_control_character(name) or has_control_character(value):
            return invalid([{"field": f"query.{name if not has_control_character(name) else '?'}",
                             "message": "must not contain control characters", "type": "control_character"}])
    return None


async def forward(client: httpx.AsyncClient, base_url: str, request: Request) -> Response:
    """Relay the request to ``base_url`` with the same path; a path with dot segments is not found (404).

    ``X-Forwarded-For`` carries the client address the gateway resolved (its peer, or what its trusted proxies
    say), never the client's own header; services believe it only from a caller with the service credential.
    """
    if _has_dot_segment(request.url.path):
        return Response('{"detail": "not found"}', status_code=404, media_type="application/json")
    if (refusal := _unsafe_text(request)) is not None:
        return refusal
    headers = {h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers}
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    if (correlation := correlation_id()) is not None:  # the owning service logs under the same id
        headers["x-correlation-id"] = correlation
    try:
        outgoing = client.build_request(request.method, base_url + request.url.path, params=request.query_params,
                                        content=await request.body(), headers=headers)
    except (httpx.InvalidURL, UnicodeEncodeError):
        return invalid([{"field": "path", "message": "is not a valid URL path", "type": "invalid_path"}])
    try:
        upstream = await _send(client, outgoing)
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


async def _send(client: httpx.AsyncClient, outgoing: httpx.Request) -> httpx.Response:
    """Send; an idempotent request whose connection closed before a response is sent once more."""
    try:
        return await client.send(outgoing, stream=True)
    except _CLOSED_BEFORE_RESPONSE:
        if outgoing.method not in IDEMPOTENT_METHODS:
            raise
        log.info("connection to %s closed before a response; retrying %s once", outgoing.url.host, outgoing.method)
        return await client.send(outgoing, stream=True)


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives. Should the service fail midway, the error propagates and the client's
    response is cut off (no final chunk), so a truncated download is never mistaken for a complete one."""
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):  # also when the client went away: free the upstream connection
            await upstream.aclose()
