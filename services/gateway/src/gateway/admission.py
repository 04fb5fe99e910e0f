"""The admission check of a classify request, asked of the screening service before anything is accepted.

The screening service owns patients, consents and the organisation's policy, so it decides: with the
caller's token (the tenant is the token's organisation there too) it answers 200 with the patient's id
and the consent in force, or refuses (403 consent required, 409 patient details differ, ...). The gateway
relays a refusal as it is; when the screening service cannot be asked, nothing is accepted (503).

Every classify makes this call, so it has its own aiohttp session (``app.state.admissions``, see
``gateway.app``): httpx's connection pool, which polls every pooled socket on each request, cost the
gateway a large share of its CPU at saturation.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

import aiohttp
from fastapi import Request, Response

from shared.events.screening import CompleteBloodCount

log = logging.getLogger(__name__)
PATH = "/internal/admissions"


@dataclass(frozen=True)
class Admitted:
    patient_id: uuid.UUID
    consent_id: uuid.UUID | None
    #: the organisation's declared prevalence of B12 < 200 pg/mL, carried into the command for the model
    expected_prevalence: float | None = None


def _unavailable() -> Response:
    return Response('{"detail": "screening records are unavailable; nothing was accepted, retry later"}',
                    status_code=503, media_type="application/json", headers={"retry-after": "5"})


async def admit(request: Request, *, external_id: str, name_ciphertext: str | None,
                cbc: CompleteBloodCount) -> Admitted | Response:
    settings = request.app.state.settings
    session: aiohttp.ClientSession = request.app.state.admissions
    for attempt in (1, 2):
        try:
            async with session.post(
                settings.screening_url + PATH,
                json={"external_id": external_id, "name_ciphertext": name_ciphertext, "sex": cbc.sex.value,
                      "age": cbc.age},
                headers={"authorization": request.headers["authorization"]},
                timeout=aiohttp.ClientTimeout(total=settings.admission_timeout_seconds),
                allow_redirects=False,  # aiohttp would follow one; like any other answer, it is relayed as is
            ) as answer:
                content = await answer.read()
            break
        except aiohttp.ServerDisconnectedError:
            # A pooled connection the screening service closed before answering: the check creates a patient
            # only if absent, so asking once more on a fresh connection cannot do anything twice.
            if attempt == 2:
                log.warning("admission check unavailable; classify refused with 503")
                return _unavailable()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("admission check unavailable; classify refused with 503")
            return _unavailable()
    if answer.status == 200:
        body = json.loads(content)
        return Admitted(uuid.UUID(body["patient_id"]),
                        uuid.UUID(body["consent_id"]) if body.get("consent_id") else None,
                        body.get("expected_prevalence"))
    if answer.status >= 500:
        return _unavailable()
    return Response(content, status_code=answer.status, media_type="application/json",
                    headers={h: answer.headers[h] for h in ("www-authenticate",) if h in answer.headers})
