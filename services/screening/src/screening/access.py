"""Who may do what, in which tenant: the dependency every clinical route starts with.

The tenant is the verified token's organisation (``shared.web.tenant_of``), never a header or a body field;
a platform admin has none and is refused. The route then works only through :meth:`Tenant.tx`, a
transaction whose search path is that tenant's schema and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from screening.outbox import Outbox
from screening.phi import PhiVault
from shared.db import in_schema
from shared.events import Actor, Envelope
from shared.tokens import Principal, Role
from shared.web import require_roles, tenant_of

ORG_ROLES = (Role.ORG_ADMIN, Role.LAB_TECHNICIAN, Role.DOCTOR, Role.AUDITOR)
ADMIN = (Role.ORG_ADMIN,)
#: Who creates and edits patients and records or revokes consents.
RECORD_KEEPERS = (Role.ORG_ADMIN, Role.LAB_TECHNICIAN)
#: Who reads patients, consents and screenings (and so PHI); a doctor only those referred to them.
CLINICIANS = (Role.ORG_ADMIN, Role.LAB_TECHNICIAN, Role.DOCTOR)


@dataclass
class Tenant:
    """The verified caller inside their organisation, with the means to act there."""

    principal: Principal
    org: uuid.UUID
    schema: str
    engine: Any
    vault: PhiVault
    outbox: Outbox
    _pending: list[Envelope[Any]]

    @property
    def actor(self) -> Actor:
        return Actor(user_id=self.principal.user_id, role=self.principal.role)

    @property
    def doctor_user(self) -> uuid.UUID | None:
        """For a doctor, their user id: every patient-bound query is narrowed to patients referred to them."""
        return self.principal.user_id if self.principal.role is Role.DOCTOR else None

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction in this tenant's schema; events emitted inside it are published after commit."""
        try:
            async with in_schema(self.engine, self.schema) as conn:
                yield conn
        except BaseException:
            self._pending = []  # rolled back: the events describe nothing that happened
            raise
        pending, self._pending = self._pending, []
        self.outbox.dispatch(pending)

    async def emit(self, conn: AsyncConnection, payload: Any) -> None:
        """Record an event in the outbox of the current transaction (committed, or not, with the change)."""
        self._pending.append(await self.outbox.add(conn, payload, tenant=self.org, actor=self.actor))


def tenant(*roles: Role) -> Callable[..., Coroutine[Any, Any, Tenant]]:
    """A dependency admitting ``roles`` of an organisation, resolving its schema (provisioned if new)."""
    guard = require_roles(*roles)

    async def dependency(request: Request, principal: Principal = Depends(guard)) -> Tenant:  # noqa: B008
        org = tenant_of(principal)
        state = request.app.state
        schema = await state.registry.ensure(org)
        return Tenant(principal, org, schema, state.registry.engine, state.vault, state.outbox, [])

    return dependency


def unprocessable(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 in the platform's error shape, for problems found after parsing (e.g. an unknown lab id)."""
    return RequestValidationError([{"loc": ("body", *field.split(".")), "msg": message, "type": kind}])
