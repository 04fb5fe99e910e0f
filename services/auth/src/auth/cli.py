"""Operator commands of the auth service: the first platform administrator, and the demo organisation."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import typer

from auth import store
from auth.keys import SigningKeys
from auth.service import IdentityError, IdentityService
from auth.settings import AuthSettings
from shared.db import create_engine, migrate
from shared.events import Actor
from shared.kafka import ensure_topics, make_broker
from shared.settings import load_or_exit
from shared.tokens import Role

app = typer.Typer(help="Clinomic auth service commands", no_args_is_help=True)

DEMO_ORG = ("Demo Clinic", "demo")
DEMO_USERS = (("admin_demo", Role.ORG_ADMIN), ("lab_demo", Role.LAB_TECHNICIAN), ("doctor_demo", Role.DOCTOR),
              ("auditor_demo", Role.AUDITOR))
PLATFORM_DEMO_USER = "platform_demo"


@contextlib.asynccontextmanager
async def identity_service(settings: AuthSettings, name: str) -> AsyncIterator[IdentityService]:
    """The identity service on a migrated schema and a started broker, as the API runs it, so an operator
    command goes through the same rules and emits the same (audited) events."""
    from auth.app import MIGRATIONS

    engine = create_engine(settings.dsn, application_name=name, search_path=store.SCHEMA, pool_size=2)
    broker = make_broker(settings, name)
    try:
        await migrate(engine, MIGRATIONS, store.SCHEMA)
        await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
        await broker.start()
        assert settings.jwt_private_key is not None
        yield IdentityService(settings, engine, broker, SigningKeys.from_pem(settings.jwt_private_key.get_secret_value()))
    finally:
        await broker.stop()
        await engine.dispose()


def demo_usernames(slug: str) -> list[tuple[str, Role]]:
    """The demo users of an organisation: ``admin_demo`` ... for ``demo``, ``admin_<slug>`` ... for another."""
    return [(f"{username.removesuffix('_demo')}_{slug}", role) for username, role in DEMO_USERS]


async def seed_demo(settings: AuthSettings, password: str, org: tuple[str, str] = DEMO_ORG) -> uuid.UUID:
    """Create a demo organisation (name, slug) and its users unless they exist (safe to run on every start);
    returns the organisation's id."""
    async with identity_service(settings, "clinomic-auth-seed") as identity:
        actor = Actor(role="service", service="auth-seed")
        users = demo_usernames(org[1])
        async with identity.engine.begin() as conn:
            org_id = await store.org_by_slug(conn, org[1])
            existing = {u for (u, _) in users + [(PLATFORM_DEMO_USER, Role.PLATFORM_ADMIN)]
                        if await store.user_by_username(conn, u)}
        if org_id is None:
            org_id, _ = await identity.create_organization(*org, actor)
        # Demo data only: the shared demo password (9 characters) is below the policy's minimum of 12, so the
        # policy is bypassed here, explicitly, and the service logs it. No other caller bypasses it.
        for username, role in users:
            if username not in existing:
                await identity.create_user(org_id=org_id, username=username, password=password, role=role,
                                           actor=actor, enforce_password_policy=False)
        if PLATFORM_DEMO_USER not in existing:
            await identity.create_user(org_id=None, username=PLATFORM_DEMO_USER, password=password,
                                       role=Role.PLATFORM_ADMIN, actor=actor, enforce_password_policy=False)
        return org_id


async def create_platform_admin(settings: AuthSettings, username: str, password: str) -> uuid.UUID:
    """The first (or another) platform administrator of a deployment, under the full password policy; the role
    requires MFA, so the first login enrols an authenticator before anything else is allowed."""
    async with identity_service(settings, "clinomic-auth-admin") as identity:
        return await identity.create_user(org_id=None, username=username, password=password,
                                          role=Role.PLATFORM_ADMIN, actor=Actor(role="service", service="auth-cli"))


@app.command("seed-demo")
def seed_demo_command(password: str = typer.Option(..., envvar="DEMO_PASSWORD", prompt=True, hide_input=True)) -> None:
    """Create the demo organisation and its users (admin_demo, lab_demo, doctor_demo, auditor_demo)."""
    asyncio.run(seed_demo(load_or_exit(AuthSettings, "auth"), password))
    typer.echo("demo organisation and users are in place")


@app.command("create-platform-admin")
def create_platform_admin_command(
    username: str = typer.Option(..., help="The administrator's user name"),
    password: str = typer.Option(..., envvar="ADMIN_PASSWORD", prompt=True, hide_input=True,
                                 confirmation_prompt=True, help="Typed at the prompt (or ADMIN_PASSWORD)"),
) -> None:
    """Create a platform administrator for a deployment without demo data. The password policy applies in
    full; MFA enrolment is required at the first login. Run it once per administrator."""
    try:
        user_id = asyncio.run(create_platform_admin(load_or_exit(AuthSettings, "auth"), username, password))
    except IdentityError as refused:
        typer.echo(f"error: {refused.detail}", err=True)
        raise typer.Exit(code=1) from None
    except OSError as unreachable:
        typer.echo(f"error: the database or the broker cannot be reached: {unreachable}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"platform administrator {username} created ({user_id}); at the first login they enrol an "
               "authenticator (MFA) before anything else")
