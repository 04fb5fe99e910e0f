"""HTTP routes of the auth service (reached through the gateway under ``/api/auth``).

``/internal/revocations`` is outside ``/api``: the gateway never routes it; other services fetch it
directly, presenting the service credential (``shared.web`` refuses anyone else; see docs/security.md).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.exc import IntegrityError

from auth.service import IdentityError, IdentityService, LoginOutcome, PolicyViolation, TokenPair
from shared.events import Actor
from shared.tokens import Principal, Role, Scope
from shared.text import Text
from shared.web import current_principal, is_service_call, principal_allowing, require_roles

router = APIRouter(prefix="/api/auth", tags=["auth"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


def identity(request: Request) -> IdentityService:
    return request.app.state.identity


Identity = Annotated[IdentityService, Depends(identity)]
Caller = Annotated[Principal, Depends(current_principal)]
Enrolling = Annotated[Principal, Depends(principal_allowing(Scope.MFA_ENROLMENT))]
ChangingPassword = Annotated[Principal, Depends(principal_allowing(Scope.PASSWORD_CHANGE))]
Administrator = Annotated[Principal, Depends(require_roles(Role.PLATFORM_ADMIN, Role.ORG_ADMIN))]

Password = Annotated[Text, Field(min_length=1, max_length=1024)]
TotpCode = Annotated[Text, Field(min_length=6, max_length=12, description="The 6-digit code of the authenticator")]


class LoginRequest(BaseModel):
    username: Text = Field(min_length=1, max_length=150)
    password: Password


class RefreshRequest(BaseModel):
    refresh_token: Text = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in)


class LoginResponse(BaseModel):
    """``authenticated``: a full session. ``mfa_required``: send a code with ``mfa_token`` to /mfa/verify.
    ``mfa_enrolment_required`` / ``password_change_required``: ``access_token`` only allows that step."""

    status: Literal["authenticated", "mfa_required", "mfa_enrolment_required", "password_change_required"]
    mfa_required: bool = False
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: str = "bearer"
    expires_in: int | None = None
    mfa_token: str | None = Field(None, description="Pending second factor: single use, short-lived")
    scope: str | None = Field(None, description="What a restricted access token allows")

    @classmethod
    def of(cls, outcome: LoginOutcome) -> LoginResponse:
        return cls(status=outcome.status.value, mfa_required=outcome.mfa_token is not None,  # type: ignore[arg-type]
                   access_token=outcome.access_token, refresh_token=outcome.refresh_token,
                   expires_in=outcome.expires_in, mfa_token=outcome.mfa_token,
                   scope=outcome.scope.value if outcome.scope else None)


class MfaVerifyRequest(BaseModel):
    mfa_token: Text = Field(min_length=1, max_length=512)
    code: Text | None = Field(None, min_length=6, max_length=12, description="A TOTP code")
    backup_code: Text | None = Field(None, min_length=8, max_length=64, description="Or a backup code")

    @model_validator(mode="after")
    def _exactly_one(self) -> MfaVerifyRequest:
        if (self.code is None) == (self.backup_code is None):
            raise ValueError("send either code or backup_code")
        return self


class CodeRequest(BaseModel):
    code: TotpCode


class MfaSetupResponse(BaseModel):
    secret: str = Field(description="For manual entry; the same secret as in the URI and the QR code")
    otpauth_uri: str
    qr_code: str = Field(description="PNG data URL of the otpauth URI")


class MfaEnabledResponse(LoginResponse):
    backup_codes: list[str] = Field(description="Single-use codes, shown only now: store them safely")


class BackupCodesResponse(BaseModel):
    backup_codes: list[str]


class MfaStatusResponse(BaseModel):
    enabled: bool
    backup_codes_left: int
    required: bool = Field(description="Whether the user's role must use MFA")


class PasswordChange(BaseModel):
    current_password: Password
    new_password: Password


class OrganizationOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str


class Me(BaseModel):
    id: uuid.UUID
    username: str
    role: Role
    organization_id: uuid.UUID | None
    organization: OrganizationOut | None
    mfa_enabled: bool
    must_change_password: bool


class FirstAdmin(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{3,150}$")
    password: Password


class NewOrganization(BaseModel):
    name: Text = Field(min_length=1, max_length=200)
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    admin: FirstAdmin | None = Field(None, description="The organisation's first admin")


class NewUser(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{3,150}$")
    password: Password
    role: Role
    organization_id: uuid.UUID | None = Field(
        None, description="Platform admins only: the organisation of a new org admin"
    )


class Created(BaseModel):
    id: uuid.UUID
    admin_id: uuid.UUID | None = None


class UserOut(BaseModel):
    id: uuid.UUID
    username: str
    role: Role
    active: bool
    mfa_enabled: bool
    must_change_password: bool


class RoleChange(BaseModel):
    role: Role


class ResetRequest(BaseModel):
    reset_mfa: bool = Field(False, description="Also remove the user's MFA (a lost authenticator); an "
                                               "administrator of the user's own organisation only")


class ResetResponse(BaseModel):
    temporary_password: str = Field(description="Shown once; the user must change it at the next login")


def _client_ip(request: Request) -> str | None:
    """The address recorded in identity events: the gateway's word (it resolved the client) when the caller is
    the gateway, proven by the service credential; otherwise the peer, whatever headers it sends."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and is_service_call(request):
        return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else None


def install_identity_errors(app: FastAPI) -> None:
    @app.exception_handler(IdentityError)
    async def _refused(_: Request, exc: IdentityError) -> JSONResponse:
        if isinstance(exc, PolicyViolation):
            errors = [{"field": exc.field, "message": m, "type": "password_policy"} for m in exc.problems]
            return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


# -- logging in and sessions -------------------------------------------------------------------------------------


@router.post("/login", response_model=LoginResponse, response_model_exclude_none=True)
async def login(body: LoginRequest, request: Request, identity: Identity) -> LoginResponse:
    return LoginResponse.of(await identity.login(body.username, body.password, _client_ip(request)))


@router.post("/mfa/verify", response_model=LoginResponse, response_model_exclude_none=True)
async def mfa_verify(body: MfaVerifyRequest, request: Request, identity: Identity) -> LoginResponse:
    """Second step of a login: a TOTP code or a backup code for the pending ``mfa_token``."""
    return LoginResponse.of(await identity.verify_mfa(body.mfa_token, code=body.code, backup_code=body.backup_code,
                                                      client_ip=_client_ip(request)))


@router.post("/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, request: Request, identity: Identity) -> TokenResponse:
    return TokenResponse.of(await identity.refresh(body.refresh_token, _client_ip(request)))


@router.post("/logout", status_code=204)
async def logout(body: RefreshRequest, identity: Identity) -> Response:
    """End the session of this refresh token (its access tokens stop working everywhere)."""
    await identity.logout(body.refresh_token)
    return Response(status_code=204)


@router.post("/logout-all", status_code=204)
async def logout_all(principal: Caller, identity: Identity) -> Response:
    """End every session of the caller, on every device."""
    await identity.logout_everywhere(principal)
    return Response(status_code=204)


@router.get("/jwks")
async def jwks(request: Request) -> dict:
    return request.app.state.signing_keys.jwks()


@router.get("/me", response_model=Me)
async def me(principal: Caller, identity: Identity) -> Me:
    user, org, mfa_enabled = await identity.profile(principal)
    return Me(id=user.id, username=user.username, role=Role(user.role), organization_id=user.org_id,
              organization=OrganizationOut(id=org.id, name=org.name, slug=org.slug) if org else None,
              mfa_enabled=mfa_enabled, must_change_password=user.must_change_password)


@router.post("/password", response_model=LoginResponse, response_model_exclude_none=True)
async def change_password(body: PasswordChange, request: Request, principal: ChangingPassword,
                          identity: Identity) -> LoginResponse:
    """Change the password (NIST SP 800-63B: 12–128 characters, any, not common); every session ends and a
    new one starts."""
    return LoginResponse.of(await identity.change_password(principal, body.current_password, body.new_password,
                                                           _client_ip(request)))


# -- MFA -------------------------------------------------------------------------------------------------------


@router.post("/mfa/setup", response_model=MfaSetupResponse)
async def mfa_setup(principal: Enrolling, identity: Identity) -> MfaSetupResponse:
    enrolment = await identity.mfa_setup(principal)
    return MfaSetupResponse(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri, qr_code=enrolment.qr_code)


@router.post("/mfa/verify-setup", response_model=MfaEnabledResponse, response_model_exclude_none=True)
async def mfa_verify_setup(body: CodeRequest, request: Request, principal: Enrolling,
                           identity: Identity) -> MfaEnabledResponse:
    codes, outcome = await identity.mfa_verify_setup(principal, body.code, _client_ip(request))
    return MfaEnabledResponse(**LoginResponse.of(outcome).model_dump(), backup_codes=codes)


@router.get("/mfa/status", response_model=MfaStatusResponse)
async def mfa_status(principal: Enrolling, identity: Identity) -> MfaStatusResponse:
    found = await identity.mfa_status(principal)
    return MfaStatusResponse(enabled=found.enabled, backup_codes_left=found.backup_codes_left, required=found.required)


@router.post("/mfa/disable", status_code=204)
async def mfa_disable(body: CodeRequest, request: Request, principal: Caller, identity: Identity) -> Response:
    await identity.mfa_disable(principal, body.code, _client_ip(request))
    return Response(status_code=204)


@router.post("/mfa/backup-codes", response_model=BackupCodesResponse)
async def regenerate_backup_codes(body: CodeRequest, request: Request, principal: Caller,
                                  identity: Identity) -> BackupCodesResponse:
    """New backup codes (the old ones stop working); needs a fresh TOTP code."""
    return BackupCodesResponse(backup_codes=await identity.regenerate_backup_codes(principal, body.code,
                                                                                   _client_ip(request)))


# -- organisations and users ---------------------------------------------------------------------------------------


@router.post("/organizations", response_model=Created, status_code=201, response_model_exclude_none=True)
async def create_organization(
    body: NewOrganization, identity: Identity,
    principal: Annotated[Principal, Depends(require_roles(Role.PLATFORM_ADMIN))],
) -> Created:
    try:
        org_id, admin_id = await identity.create_organization(
            body.name, body.slug, Actor(user_id=principal.user_id, role=principal.role),
            admin=(body.admin.username, body.admin.password) if body.admin else None,
        )
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "an organisation with this slug, or a user with this "
                                                      "username, exists") from None
    return Created(id=org_id, admin_id=admin_id)


@router.get("/users", response_model=list[UserOut])
async def list_users(principal: Administrator, identity: Identity) -> list[UserOut]:
    return [UserOut(id=u.id, username=u.username, role=Role(u.role), active=u.active, mfa_enabled=mfa,
                    must_change_password=u.must_change_password) for u, mfa in await identity.users_of(principal)]


@router.post("/users", response_model=Created, status_code=201, response_model_exclude_none=True)
async def create_user(body: NewUser, identity: Identity, principal: Administrator) -> Created:
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


@router.patch("/users/{user_id}", status_code=204)
async def change_role(user_id: uuid.UUID, body: RoleChange, principal: Administrator, identity: Identity) -> Response:
    """Takes effect at the user's next refresh."""
    await identity.change_role(principal, user_id, body.role)
    return Response(status_code=204)


@router.post("/users/{user_id}/deactivate", status_code=204)
async def deactivate(user_id: uuid.UUID, principal: Administrator, identity: Identity) -> Response:
    """The user can no longer log in, and every service refuses their access tokens within moments."""
    await identity.deactivate(principal, user_id)
    return Response(status_code=204)


@router.post("/users/{user_id}/reset", response_model=ResetResponse)
async def reset(user_id: uuid.UUID, principal: Administrator, identity: Identity,
                body: ResetRequest | None = None) -> ResetResponse:
    """A temporary password the user must change at the next login; the user's sessions end.

    A platform admin (who sees no clinical data) may reset only an admin whose MFA stays in place, so the
    temporary password alone never completes that admin's login; removing MFA takes an administrator of the
    user's own organisation (docs/security.md)."""
    return ResetResponse(temporary_password=await identity.reset(principal, user_id,
                                                                 reset_mfa=bool(body and body.reset_mfa)))


# -- for the other services only -------------------------------------------------------------------------------


@internal.get("/revocations")
async def revocations(identity: Identity) -> dict:
    """Users deactivated and sessions revoked whose access tokens may not have expired yet."""
    return await identity.revocation_snapshot()
