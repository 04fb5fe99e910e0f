"""Reading uv.lock: the packages a workspace member installs at run time (its dependency closure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def closure(lock: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """Names of every package installed with ``roots``: their dependencies, with the extras they ask for,
    transitively; development groups are not followed (``uv sync --no-dev``) and every platform's
    markers count, so the answer is never smaller than what an image gets."""
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(root, ()) for root in roots]
    visited: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        seen.add(name)
        package = packages[name]
        wanted = list(package.get("dependencies", []))
        for extra in extras:
            wanted += package.get("optional-dependencies", {}).get(extra, [])
        pending += [(dep["name"], tuple(dep.get("extra", ()))) for dep in wanted]
    return seen
