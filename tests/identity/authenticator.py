"""A test user's authenticator app: TOTP codes (pyotp) and backup codes, one per user for the session.

``complete_login`` finishes whatever a login asks for, as a person would: a code from the authenticator
when MFA is on, enrolment when the role requires MFA and none is enrolled yet. A code is never used twice
(the server refuses replays and earlier steps), so the authenticator remembers the last step it used and
falls back to a backup code, or waits for the next step, when several logins fall in one 30 s step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp

PERIOD = 30


@dataclass
class Authenticator:
    secret: str
    backup_codes: list[str] = field(default_factory=list)
    last_step: int | None = None

    def code_at(self, step: int) -> str:
        return pyotp.TOTP(self.secret).generate_otp(step)

    def code(self) -> str | None:
        """A code of the current or next step that is later than any used so far, or None."""
        current = int(time.time() // PERIOD)
        for step in (current, current + 1):
            if self.last_step is None or step > self.last_step:
                self.last_step = step
                return self.code_at(step)
        return None

    async def fresh_code(self) -> str:
        while (code := self.code()) is None:
            assert self.last_step is not None
            await asyncio.sleep(max(0.05, self.last_step * PERIOD - time.time() + 0.05))
        return code


#: Authenticators by username (case-folded), filled as users enrol.
AUTHENTICATORS: dict[str, Authenticator] = {}


def bearer_of(body: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['access_token']}"}


async def enrol(gateway: httpx.AsyncClient, username: str, headers: dict[str, str]) -> dict[str, Any]:
    """Set up TOTP with a (restricted or full) token; returns the verify-setup answer (tokens, backup codes)."""
    setup = await gateway.post("/api/auth/mfa/setup", headers=headers)
    assert setup.status_code == 200, setup.text
    authenticator = Authenticator(secret=setup.json()["secret"])
    verified = await gateway.post("/api/auth/mfa/verify-setup", json={"code": await authenticator.fresh_code()},
                                  headers=headers)
    assert verified.status_code == 200, verified.text
    body = verified.json()
    authenticator.backup_codes = list(body["backup_codes"])
    AUTHENTICATORS[username.casefold()] = authenticator
    return body


async def second_factor(gateway: httpx.AsyncClient, username: str, mfa_token: str) -> dict[str, Any]:
    authenticator = AUTHENTICATORS.get(username.casefold())
    assert authenticator is not None, f"{username} has MFA enabled, but no authenticator is known for it"
    code = authenticator.code()
    if code is not None:
        proof = {"code": code}
    elif authenticator.backup_codes:
        proof = {"backup_code": authenticator.backup_codes.pop()}
    else:
        proof = {"code": await authenticator.fresh_code()}
    response = await gateway.post("/api/auth/mfa/verify", json={"mfa_token": mfa_token, **proof})
    assert response.status_code == 200, response.text
    return response.json()


async def complete_login(gateway: httpx.AsyncClient, username: str, body: dict[str, Any]) -> dict[str, Any]:
    """Follow a login answer until it is a full session; returns its tokens."""
    for _ in range(3):
        status = body.get("status", "authenticated")
        if status == "authenticated":
            return body
        if status == "mfa_required":
            body = await second_factor(gateway, username, body["mfa_token"])
        elif status == "mfa_enrolment_required":
            body = await enrol(gateway, username, bearer_of(body))
        else:
            raise AssertionError(f"the login of {username} needs {status}; tests must handle that themselves")
    raise AssertionError(f"the login of {username} did not complete: {body.get('status')}")
