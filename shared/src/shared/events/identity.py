"""Identity events: organisations and the authentication trail. None carries a password, token or code."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict


class OrganizationCreatedV1(BaseModel):
    """Tells the screening service to provision the organisation's schema."""

    model_config = ConfigDict(frozen=True)

    organization_id: uuid.UUID
    slug: str


class UserCreatedV1(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID
    role: str


class LoginSucceededV1(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID
    client_ip: str | None


class LoginFailedV1(BaseModel):
    """A failed login; the username is a keyed hash so that typed-in passwords never land in the ledger."""

    model_config = ConfigDict(frozen=True)

    username_digest: str
    user_id: uuid.UUID | None
    client_ip: str | None


ORGANIZATION_CREATED = ("OrganizationCreated", 1)
USER_CREATED = ("UserCreated", 1)
LOGIN_SUCCEEDED = ("LoginSucceeded", 1)
LOGIN_FAILED = ("LoginFailed", 1)
