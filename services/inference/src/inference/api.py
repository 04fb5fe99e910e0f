"""Internal HTTP routes of the inference worker besides health: the card of the model it serves.

``GET /internal/model-card`` is for other services (the screening service's model description and analytics
summary); the gateway routes no client to it, and like every internal route it answers only a caller that
presents the service credential (``INTERNAL_SERVICE_TOKEN``). It answers with what the verified model directory
says (``card.json``, the manifest's identity), never with figures of its own. The card holds no patient data.
"""

from __future__ import annotations

import json
from typing import Any

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import HttpHandler

from inference.model import B12Model
from shared.tokens import SERVICE_TOKEN_HEADER, ServiceCredential

MODEL_CARD_PATH = "/internal/model-card"


def card_summary(model: B12Model) -> dict[str, Any]:
    """Identity, data, out-of-sample metrics and operating point of each risk class (with bootstrap
    intervals), the aims and the limits of the model: what a lab needs to read a result."""
    card = model.card()
    metrics = card["metrics"]
    pooled = {outcome: {k: v for k, v in figures.items() if k not in ("reliability", "decision_curve")}
              for outcome, figures in metrics["pooled"].items()}
    return {
        "version": model.version,
        "artifacts_sha256": model.identity.artifacts_sha256,
        "name": card["model"]["name"],
        "family": card["model"]["family"],
        "status": card["status"],
        "intended_use": card["intended_use"],
        "data_source": model.identity.data_source,
        "outcomes": card["data"]["outcomes"],
        "validation": card["validation"],
        "metrics": {"pooled": pooled, "per_group": metrics["per_group"], "classes": metrics["classes"],
                    "decision_curve": metrics["calibrated_out_of_sample"]["decision_curve"]},
        "thresholds": card["thresholds"],
        "aims": card["aims"],
        "limitations": card["limitations"],
    }


def model_card_route(model: B12Model, credential: ServiceCredential) -> HttpHandler:
    body = json.dumps(card_summary(model)).encode()

    @get
    async def model_card(scope: dict[str, Any]) -> AsgiResponse:
        presented = dict(scope.get("headers") or []).get(SERVICE_TOKEN_HEADER.encode())
        if not credential.accepts(presented.decode("latin-1") if presented else None):
            return AsgiResponse(b'{"detail": "service credential required"}', 401,
                                {"content-type": "application/json"})
        return AsgiResponse(body, 200, {"content-type": "application/json"})

    return model_card
