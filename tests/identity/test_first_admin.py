"""The first platform administrator of a deployment without demo data: created by an operator command with
the password typed by the operator, under the full policy, and required to enrol MFA at the first login."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx

from devstack.stack import Platform

STRONG = "Plinth-Harbour-Quartz-41"


def create_admin(platform: Platform, username: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from auth.cli import app; app()", "create-platform-admin", "--username", username],
        env=platform.env | {"ADMIN_PASSWORD": password, "LOG_LEVEL": "ERROR"}, capture_output=True, text=True,
        timeout=120)


async def test_a_password_the_policy_refuses_creates_no_administrator(platform: Platform,
                                                                      gateway: httpx.AsyncClient) -> None:
    username = f"ops_{uuid.uuid4().hex[:8]}"
    done = create_admin(platform, username, "Password1234")
    assert done.returncode == 1 and done.stderr.startswith("error: ")
    login = await gateway.post("/api/auth/login", json={"username": username, "password": "Password1234"})
    assert login.status_code == 401


async def test_the_new_administrator_must_enrol_mfa_before_anything_else(platform: Platform,
                                                                         gateway: httpx.AsyncClient) -> None:
    username = f"ops_{uuid.uuid4().hex[:8]}"
    done = create_admin(platform, username, STRONG)
    assert done.returncode == 0, done.stderr
    assert "enrol an authenticator" in done.stdout and STRONG not in done.stdout + done.stderr
    login = await gateway.post("/api/auth/login", json={"username": username, "password": STRONG})
    assert login.status_code == 200 and login.json()["status"] == "mfa_enrolment_required"


def test_the_same_name_twice_is_refused(platform: Platform) -> None:
    username = f"ops_{uuid.uuid4().hex[:8]}"
    assert create_admin(platform, username, STRONG).returncode == 0
    again = create_admin(platform, username, STRONG)
    assert again.returncode == 1 and "error" in again.stderr
