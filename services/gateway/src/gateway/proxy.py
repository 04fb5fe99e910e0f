"""Forwarding of REST calls to the service that owns them; the caller's token travels with the request."""

from __future__ import annotations

import httpx
from fastapi import Request, Response

_FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "idempotency-key")
_FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate", "location")


def _has_dot_segment(path: str) -> bool:
    """httpx normalises ``.``/``..`` away, so such a path could reach a route the gateway never exposes."""
    return any(segment in (".", "..") for segment in path.split("/"))


async def forward(client: httpx.AsyncClient, base_url: str, request: Request) -> Response:
    """Relay the request to ``base_url`` with the same path; a path with dot segments is not found (404)."""
    if _has_dot_segment(request.url.path):
        return Response('{"detail": "not found"}', status_code=404, media_type="application/json")
    headers = {h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers}
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    try:
        upstream = await client.request(
            request.method, base_url + request.url.path, params=request.query_params,
            content=await request.body(), headers=headers,
        )
    except httpx.HTTPError:
        return Response('{"detail": "service unavailable"}', status_code=503,
                        media_type="application/json", headers={"retry-after": "5"})
    return Response(
        upstream.content, status_code=upstream.status_code,
        headers={h: upstream.headers[h] for h in _FORWARDED_RESPONSE_HEADERS if h in upstream.headers},
    )
