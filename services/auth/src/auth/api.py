"""HTTP routes of the auth service (reached through the gateway under ``/api/auth``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from auth.service import AuthenticationFailed, IdentityService, RefreshRejected, TokenPair
from shared.events import Actor
from shared.tokens import Principal, Role
from shared.web import current_principal, require_roles

router = APIRouter(prefix="/api/auth", tags=["auth"])


def identity(request: Request) -> IdentityService:
    return request.app.state.identity


Identity = Annotated[IdentityService, Depends(identity)]


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in)


class Me(BaseModel):
    id: uuid.UUID
    username: str
    role: Role
    organization_id: uuid.UUID | None


class NewOrganization(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")


class NewUser(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{3,150}$")
    password: str = Field(min_length=12, max_length=128)
    role: Role
    organization_id: uuid.UUID | None = Field(
        None, description="Platform admins only: the organisation of a new org admin"
    )


class Created(BaseModel):
    id: uuid.UUID


def _client_ip(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    return forwarded.split(",")[0].strip() if forwarded else (request.client.host if request.client else None)


@router.post("/login", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request, identity: Identity) -> TokenResponse:
    try:
        return TokenResponse.of(await identity.login(body.username, body.password, _client_ip(request)))
    except AuthenticationFailed:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid username or password") from None


@router.post("/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, identity: Identity) -> TokenResponse:
    try:
        return TokenResponse.of(await identity.refresh(body.refresh_token))
    except RefreshRejected:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "refresh token rejected") from None


@router.get("/jwks")
async def jwks(request: Request) -> dict:
    return {"keys": [request.app.state.signing_key.public_jwk()]}


@router.get("/me", response_model=Me)
async def me(principal: Annotated[Principal, Depends(current_principal)], identity: Identity) -> Me:
    user = await identity.user(principal.user_id)
    if user is None or not user.active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or expired token")
    return Me(id=user.id, username=user.username, role=Role(user.role), organization_id=user.org_id)


@router.post("/organizations", response_model=Created, status_code=201)
async def create_organization(
    body: NewOrganization, identity: Identity,
    principal: Annotated[Principal, Depends(require_roles(Role.PLATFORM_ADMIN))],
) -> Created:
    try:
        org_id = await identity.create_organization(
            body.name, body.slug, Actor(user_id=principal.user_id, role=principal.role)
        )
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "an organisation with this slug exists") from None
    return Created(id=org_id)


@router.post("/users", response_model=Created, status_code=201)
async def create_user(
    body: NewUser, identity: Identity,
    principal: Annotated[Principal, Depends(require_roles(Role.PLATFORM_ADMIN, Role.ORG_ADMIN))],
) -> Created:
    if principal.role is Role.PLATFORM_ADMIN:
        if body.role is not Role.ORG_ADMIN or body.organization_id is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "platform admins create only organisation admins")
        org_id = body.organization_id
    else:
        if body.role is Role.PLATFORM_ADMIN or body.organization_id not in (None, principal.org_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "you manage users of your own organisation only")
        org_id = principal.org_id
    try:
        user_id = await identity.create_user(
            org_id=org_id, username=body.username, password=body.password, role=body.role,
            actor=Actor(user_id=principal.user_id, role=principal.role),
        )
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "this username is taken") from None
    return Created(id=user_id)
