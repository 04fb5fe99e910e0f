"""Wiring of the inference worker: load and verify the model, subscribe, serve health on HTTP."""

from __future__ import annotations

import json

from faststream.asgi import AsgiFastStream, AsgiResponse, get

from inference import api, handlers
from inference.model import B12Model, ModelArtifactError
from inference.settings import InferenceSettings
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import ServiceCredential


def create_app() -> AsgiFastStream:
    settings = load_or_exit(InferenceSettings, "inference")
    configure_logging("inference", settings.log_level)
    try:
        model = B12Model.load(settings.model_dir)
    except ModelArtifactError as problem:
        raise SystemExit(f"inference: refusing to start: {problem}") from None
    credential = load_or_exit(ServiceCredential, "inference")
    broker = make_broker(settings, "clinomic-inference")
    handlers.register(broker, settings, model, settings.batch_size)
    state = {"ready": False}

    @get
    async def live(scope: object) -> AsgiResponse:
        return AsgiResponse(b'{"status": "alive"}', 200, {"content-type": "application/json"})

    @get
    async def ready(scope: object) -> AsgiResponse:
        body = json.dumps({"ready": state["ready"], "model_version": model.version,
                           "model_sha256": model.identity.artifacts_sha256}).encode()
        return AsgiResponse(body, 200 if state["ready"] else 503, {"content-type": "application/json"})

    async def create_topics() -> None:
        await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)

    async def mark_ready() -> None:
        state["ready"] = True

    return AsgiFastStream(
        broker,
        asgi_routes=[("/health/live", live), ("/health/ready", ready),
                     (api.MODEL_CARD_PATH, api.model_card_route(model, credential))],
        on_startup=[create_topics],
        after_startup=[mark_ready],
    )
