"""HTTP pieces every FastAPI service shares: bearer authentication, role checks, uniform error bodies, the
service credential on internal routes."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio.to_thread

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import StatementError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.deadletter import is_transient
from shared.settings import load_or_exit
from shared.tokens import SERVICE_TOKEN_HEADER, InvalidToken, Principal, Role, Scope, ServiceCredential, TokenVerifier

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


def verifier_of(request: Request) -> TokenVerifier:
    return request.app.state.token_verifier


async def any_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The verified caller, whatever the token allows (restricted tokens included): use through
    :func:`current_principal` or :func:`principal_allowing`, never directly in a route."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not authenticated",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return await verifier_of(request).verify(credentials.credentials)
    except InvalidToken:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or expired token",
                            headers={"WWW-Authenticate": "Bearer"}) from None


def _refuse_restricted(principal: Principal) -> None:
    if principal.scope == Scope.MFA_ENROLMENT:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "multi-factor authentication must be enrolled first",
                            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
    if principal.restricted:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the password must be changed first",
                            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


async def current_principal(principal: Annotated[Principal, Depends(any_principal)]) -> Principal:
    """The verified caller holding a full token: restricted tokens (MFA enrolment, password change) get 403."""
    _refuse_restricted(principal)
    return principal


def principal_allowing(*scopes: Scope) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits full tokens and restricted tokens of the given scopes (auth routes only)."""

    async def dependency(principal: Annotated[Principal, Depends(any_principal)]) -> Principal:
        if principal.scope is not None and principal.scope not in scopes:
            _refuse_restricted(principal)
        return principal

    return dependency


def require_roles(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits only the given roles (403 otherwise)."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        return principal

    return dependency


def tenant_of(principal: Principal) -> Any:
    """The organisation a clinical request acts in: always the verified token's, never the client's word."""
    if principal.org_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "no organisation: clinical data is out of reach")
    return principal.org_id


def is_service_call(request: Request) -> bool:
    """Whether the caller presented the platform's service credential (another service, e.g. the gateway)."""
    credential: ServiceCredential = request.app.state.service_credential
    return credential.accepts(request.headers.get(SERVICE_TOKEN_HEADER))


def install_error_handlers(app: FastAPI) -> None:
    """422 bodies list each field and why; unexpected errors are logged and answered without internals.

    Also what every service's HTTP edge needs whatever its routes (:class:`ServiceEdge`): ``/internal/...``
    answers only callers presenting ``INTERNAL_SERVICE_TOKEN`` (the service refuses to start without one),
    JSON bodies are checked for depth and syntax before any route parses them, and an unexpected error is
    answered (500) without closing the connection.
    """
    app.state.service_credential = load_or_exit(ServiceCredential, app.title)
    app.add_middleware(ServiceEdge)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"] if p not in ("body",)) or "body",
                "message": str(err["msg"]).removeprefix("Value error, "),
                "type": err["type"],
            }
            for err in exc.errors()
        ]
        return invalid(errors)

    @app.exception_handler(StatementError)
    async def _database(request: Request, exc: StatementError) -> JSONResponse:
        if _unstorable_text(exc):  # a string field without the Text type: still the client's fault, not ours
            return invalid([{"field": "body", "message": "contains characters that cannot be stored",
                             "type": "control_character"}])
        if is_transient(exc):
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
            return unavailable("the database is unavailable")
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)


#: What a 503 asks the client to wait before trying again (seconds).
RETRY_AFTER_SECONDS = 2


def unavailable(what: str) -> JSONResponse:
    """503 with ``Retry-After``: a dependency is down for a while; nothing was done, the request may be retried."""
    return JSONResponse({"detail": f"{what}; nothing was done, retry later"}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def invalid(errors: list[dict[str, str]], status_code: int = 422) -> JSONResponse:
    """The platform's error shape: ``{"detail", "errors": [{"field", "message", "type"}]}``."""
    return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=status_code)


def _unstorable_text(exc: BaseException) -> bool:
    """NUL (PostgreSQL text cannot hold it) or a lone surrogate (not encodable as UTF-8)."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, UnicodeEncodeError) or name in ("CharacterNotInRepertoireError",
                                                             "UntranslatableCharacterError"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


# -- the HTTP edge of every service ---------------------------------------------------------------------------

#: Deepest JSON nesting any body may have (the deepest legitimate body, a batch row, has 3 levels).
MAX_JSON_DEPTH = 32
#: Bodies up to this size are parsed once here, so malformed JSON gets the platform's 422 on every route;
#: larger ones (bulk uploads) are only checked for depth.
_PARSE_BELOW_BYTES = 1_048_576
_JSON_STRING = re.compile(rb'"[^"]*"')
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')


class EdgeAbort(Exception):  # noqa: N818 - a signal, not an error
    """Raised by an outer middleware's ``receive`` to abandon a request (a body over the size limit); the
    error container lets it through to that middleware."""


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests deeper than ``limit`` (or its brackets do not balance), found without parsing.

    Python's parser recurses per level, so a deep enough body raises RecursionError instead of a syntax
    error. Escapes and strings are removed first, then innermost bracket pairs are removed once per level:
    every step is a C-speed bytes operation (a 20 MB bulk upload takes about half a second).
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = _JSON_STRING.sub(b"", unescaped.translate(None, _NOT_STRUCTURE))
    for _ in range(limit):
        if not structure:
            return False
        reduced = _INNERMOST_PAIR.sub(b"", structure)  # one scan: exactly one level per step
        if reduced == structure:
            return True
        structure = reduced
    return bool(structure)


def _json_problem(body: bytes, declared: bool) -> dict[str, str] | None:
    """Depth always; syntax too when the body is declared JSON and small enough to parse twice cheaply."""
    if json_too_deep(body):
        return {"field": "body", "message": f"JSON nested deeper than {MAX_JSON_DEPTH} levels, or malformed",
                "type": "json_too_deep"}
    if declared and len(body) < _PARSE_BELOW_BYTES:
        try:
            json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            return {"field": "body", "message": f"not valid JSON: {type(exc).__name__}", "type": "json_invalid"}
    return None


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class ServiceEdge:
    """Internal routes behind the service credential; JSON bodies checked before any route parses them; an
    unexpected error answered without closing the connection.

    Pure ASGI (no per-request task or copy of streamed responses), innermost of the user middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/internal/") or path == "/internal":
            credential: ServiceCredential = scope["app"].state.service_credential
            if not credential.accepts(_header(scope, SERVICE_TOKEN_HEADER.encode())):
                await JSONResponse({"detail": "service credential required"}, status_code=401)(scope, receive, send)
                return
        content_type = _header_bytes(scope, b"content-type")
        # FastAPI parses a body sent without a content type as JSON too: that one is checked for depth.
        if scope["method"] in ("POST", "PUT", "PATCH") and (content_type is None or _is_json(content_type)):
            body, receive = await _buffered(receive)
            if body:
                declared = content_type is not None
                problem = (await anyio.to_thread.run_sync(_json_problem, body, declared) if len(body) > 65_536
                           else _json_problem(body, declared))
                if problem is not None:
                    await invalid([problem])(scope, receive, send)
                    return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except EdgeAbort:
            raise
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler, which re-raises to the server: the
            # server would then close a keep-alive connection the gateway's pool may already be reusing.
            if started:
                log.exception("unhandled error on %s %s", scope["method"], path)
                raise
            if is_transient(exc):  # a dependency (database, broker, network) is away: the client may retry
                log.warning("dependency unavailable on %s %s: %s", scope["method"], path, type(exc).__name__)
                await unavailable("a dependency is unavailable")(scope, receive, send)
                return
            log.exception("unhandled error on %s %s", scope["method"], path)
            await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)


def _header_bytes(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    value = _header_bytes(scope, name)
    return value.decode("latin-1") if value is not None else None


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it to the app as if unread."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: the app hears it on its first receive
            return b"", _replaying(message, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replaying({"type": "http.request", "body": body, "more_body": False}, receive)


def _replaying(first: Message, receive: Receive) -> Receive:
    pending: list[Message] = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
