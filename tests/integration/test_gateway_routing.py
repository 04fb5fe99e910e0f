"""The gateway forwards only the public routes it names: no path can be bent to reach another one."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("path", ["/api/screening/%2e%2e/patients", "/api/patients/%2e%2e/%2e%2e/internal/admissions",
                                  "/api/audit/%2E/entries"])
async def test_a_path_with_dot_segments_is_not_found(gateway: httpx.AsyncClient, lab: dict, path: str) -> None:
    response = await gateway.get(path, headers=lab)
    assert response.status_code == 404, response.text
