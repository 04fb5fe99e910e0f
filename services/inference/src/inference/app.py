"""Wiring of the inference worker: load and verify the model, subscribe, serve health on HTTP."""

from __future__ import annotations

import json

import numpy as np
from faststream.asgi import AsgiFastStream, AsgiResponse, get

from inference import api, handlers
from inference.model import B12Model, ModelArtifactError
from inference.settings import InferenceSettings
from shared import health, metrics, tracing
from shared.events.screening import CompleteBloodCount
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import ServiceCredential

#: Readiness asks the model to assess this blood count (a healthy adult's).
REFERENCE_CBC = CompleteBloodCount(hb=14.2, rbc=4.8, hct=42.5, mcv=88.5, mch=29.6, mchc=33.4, rdw=12.9, wbc=6.8,
                                   platelets=260, neutrophils_pct=58, lymphocytes_pct=32, age=46, sex="male")


def model_check(model: B12Model) -> health.Check:
    """The loaded model assesses a reference row (its artifacts were hash-checked when loaded)."""
    row = np.array([REFERENCE_CBC.as_features()], dtype=np.float64)

    async def check() -> None:
        if len(model.assess(row, [None])) != 1:
            raise health.NotReady("the model gave no assessment of the reference row")

    return check


def create_app() -> AsgiFastStream:
    settings = load_or_exit(InferenceSettings, "inference")
    configure_logging("inference", settings.log_level)
    try:
        model = B12Model.load(settings.model_dir)
    except ModelArtifactError as problem:
        raise SystemExit(f"inference: refusing to start: {problem}") from None
    credential = load_or_exit(ServiceCredential, "inference")
    tracing.configure_tracing("inference")  # before make_broker; off unless OTEL_* ask for it
    broker = make_broker(settings, "clinomic-inference")
    handlers.register(broker, settings, model, settings.batch_size)
    state = {"ready": False}
    checks = {"broker": health.broker(broker), "model": model_check(model)}

    @get
    async def live(scope: object) -> AsgiResponse:
        return AsgiResponse(b'{"status": "alive"}', 200, {"content-type": "application/json"})

    @get
    async def ready(scope: object) -> AsgiResponse:
        answer = await health.readiness(checks if state["ready"] else None)
        body = json.dumps(answer | {"model_version": model.version,
                                    "model_sha256": model.identity.artifacts_sha256}).encode()
        return AsgiResponse(body, 200 if answer["ready"] else 503, {"content-type": "application/json"})

    async def create_topics() -> None:
        await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)

    async def mark_ready() -> None:
        state["ready"] = True

    routes = {"/health/live": live, "/health/ready": ready,
              api.MODEL_CARD_PATH: api.model_card_route(model, credential),
              "/metrics": metrics.MetricsEndpoint(lambda: credential, [metrics.consumer_lag(broker)])}
    return AsgiFastStream(
        broker,
        asgi_routes=[(path, metrics.HttpInstrumentation(route, path)) for path, route in routes.items()],
        on_startup=[create_topics],
        after_startup=[mark_ready],
    )
