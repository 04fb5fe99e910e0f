"""compose.yaml: valid against the Compose Specification's JSON schema (vendored, no Docker needed), every
container health-checked, start order by health, each service handed only the secrets it reads."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deployment.repository import (ROOT, SECRETS, SERVICES, fetches_token_keys, secrets_read_by,
                                         uses_database)

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SCHEMA = json.loads((ROOT / "deploy" / "compose-spec" / "compose-spec.json").read_text())
#: The schema names draft 2019-09 by a non-canonical URL, so its validator is chosen here.
SPECIFICATION = jsonschema.Draft201909Validator(SCHEMA)
#: Each production service and its live-reload twin of the dev profile.
CONTAINERS = [(name, service) for service in SERVICES for name in (service, f"{service}-dev")]
#: Compose passes PostgreSQL's credentials inside the database URLs, and its Kafka has no SASL.
NOT_IN_COMPOSE = {"POSTGRES_USER", "POSTGRES_PASSWORD", "KAFKA_SASL_PASSWORD"}


def healthy(depends_on: dict[str, Any], name: str) -> bool:
    return depends_on.get(name, {}).get("condition") == "service_healthy"


def twin(name: str, container: str) -> str:
    """The dependency ``name`` as the container's profile runs it (dev containers wait for dev twins)."""
    return f"{name}-dev" if container.endswith("-dev") else name


def test_compose_file_conforms_to_the_compose_specification() -> None:
    SPECIFICATION.validate(COMPOSE)


def test_compose_schema_rejects_an_unknown_service_key() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["auth"]["healthchek"] = broken["services"]["auth"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        SPECIFICATION.validate(broken)


@pytest.mark.parametrize("name", [*(c for c, _ in CONTAINERS), "postgres", "kafka", "redis"])
def test_every_container_has_a_health_check(name: str) -> None:
    assert COMPOSE["services"][name]["healthcheck"]["test"]


@pytest.mark.parametrize(("name", "service"), CONTAINERS)
def test_service_health_check_asks_its_readiness(name: str, service: str) -> None:
    test = " ".join(COMPOSE["services"][name]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{SERVICES[service]}/health/ready" in test


@pytest.mark.parametrize(("name", "service"), CONTAINERS)
def test_service_starts_once_the_broker_and_its_database_are_healthy(name: str, service: str) -> None:
    depends_on = COMPOSE["services"][name]["depends_on"]
    assert healthy(depends_on, "kafka")
    assert healthy(depends_on, "postgres") == uses_database(service)


@pytest.mark.parametrize(("name", "service"), CONTAINERS)
def test_service_that_fetches_token_keys_starts_once_auth_is_healthy(name: str, service: str) -> None:
    depends_on = COMPOSE["services"][name]["depends_on"]
    assert healthy(depends_on, twin("auth", name)) == fetches_token_keys(service)


@pytest.mark.parametrize("name", ["gateway", "gateway-dev"])
def test_gateway_starts_once_everything_it_routes_to_is_healthy(name: str) -> None:
    depends_on = COMPOSE["services"][name]["depends_on"]
    assert all(healthy(depends_on, twin(s, name)) for s in SERVICES if s != "gateway")
    assert healthy(depends_on, "redis")


@pytest.mark.parametrize(("name", "service"), CONTAINERS)
def test_service_receives_exactly_the_secrets_its_settings_read(name: str, service: str) -> None:
    received = set(COMPOSE["services"][name]["environment"]) & SECRETS
    assert received == secrets_read_by(service) - NOT_IN_COMPOSE


@pytest.mark.parametrize(("name", "service"), CONTAINERS)
def test_every_secret_must_be_set_rather_than_defaulted(name: str, service: str) -> None:
    environment = COMPOSE["services"][name]["environment"]
    for variable in set(environment) & secrets_read_by(service):
        assert re.search(r"\$\{[A-Z_]+:\?", environment[variable]), variable


@pytest.mark.parametrize("service", SERVICES)
def test_dev_profile_reloads_the_service_from_the_mounted_source(service: str) -> None:
    dev = COMPOSE["services"][f"{service}-dev"]
    assert dev["profiles"] == ["dev"]
    assert "--reload" in dev["command"] and f"/app/services/{service}/src" in dev["command"]
    assert {"./services:/app/services:ro", "./shared:/app/shared:ro"} <= set(dev["volumes"])
    assert dev["networks"]["default"]["aliases"] == [service]


@pytest.mark.parametrize("service", SERVICES)
def test_production_profile_runs_the_service_image(service: str) -> None:
    prod = COMPOSE["services"][service]
    assert prod["profiles"] == ["prod"]
    assert prod["build"]["dockerfile"] == f"deploy/docker/{service}.Dockerfile"
    assert prod["environment"]["DEBUG"] == "false"
