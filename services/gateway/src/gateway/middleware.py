"""Edge protections: the client's address, a request-size ceiling and security headers on every response."""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.web import EdgeAbort

SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"strict-transport-security": b"max-age=63072000; includeSubDomains",
    b"cache-control": b"no-store",
    b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
}
# The interactive docs load their own scripts and styles; everything else is JSON.
DOCS_CSP = b"default-src 'self' 'unsafe-inline' cdn.jsdelivr.net; img-src 'self' data: fastapi.tiangolo.com"

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def trusted_networks(spec: str) -> Networks:
    """``FORWARDED_ALLOW_IPS``: comma-separated addresses or CIDR networks of our own reverse proxies."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _trusted(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str | None:
    """The address a request comes from: the peer, unless the peer is one of our proxies.

    Then ``X-Forwarded-For`` is read from the right (each proxy appends the address it saw) and the first
    address that is not one of our proxies is the client: anything left of it was written by the client
    and proves nothing. With no trusted proxies (the default) the header is never read.
    """
    if peer is None or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # our proxy wrote something that is not an address: trust nothing it says
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_limits: dict[str, int] | None = None,
                 trusted_proxies: Networks = ()) -> None:
        """``body_limits``: other ceilings for exact paths (a bulk upload is larger than any other request)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_limits = body_limits or {}
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope.get("client"):
            forwarded = headers.get(b"x-forwarded-for")
            host, port = scope["client"]
            resolved = client_address(host, forwarded.decode("latin-1") if forwarded else None,
                                      self.trusted_proxies)
            scope = {**scope, "client": (resolved, port)}
        is_docs = scope["path"] in ("/docs", "/redoc")

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS.items() if k not in present]
                if is_docs:
                    extra = [(k, DOCS_CSP if k == b"content-security-policy" else v) for k, v in extra]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(secured_send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, secured_send)
        except _BodyTooLarge:
            await _too_large(secured_send, limit)


class _BodyTooLarge(EdgeAbort):
    pass


async def _too_large(send: Send, limit: int) -> None:
    """413 in the platform's error shape; ``send`` adds the security headers like on every other answer."""
    body = json.dumps({"detail": "request body too large", "errors": [{
        "field": "body", "message": f"must be at most {limit} bytes", "type": "body_too_large"}]}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
