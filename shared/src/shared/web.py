"""HTTP pieces every FastAPI service shares: bearer authentication, role checks, uniform error bodies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.tokens import InvalidToken, Principal, Role, Scope, TokenVerifier

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


def install_error_handlers(app: FastAPI) -> None:
    """422 bodies list each field and why; unexpected errors are logged and answered without internals."""

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
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)
