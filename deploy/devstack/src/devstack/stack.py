"""The whole platform as local processes: infrastructure, migrations, demo data, five services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack import infra, secrets

DEMO_PASSWORD = "Demo@2024"
#: Auth starts first: every other service fetches its signing keys when it starts (``Platform.start_all``).
SERVICES = (
    ("auth", "auth.app:create_app"),
    ("screening", "screening.app:create_app"),
    ("audit", "audit.app:create_app"),
    ("inference", "inference.app:create_app"),
    ("gateway", "gateway.app:create_app"),
)
DEFAULT_PORTS = {"gateway": 8000, "auth": 8001, "screening": 8002, "audit": 8003, "inference": 8004}


class PortTaken(RuntimeError):
    """A port the platform needs is held by another process: starting anyway would have the readiness checks
    answered by whatever holds it (another platform's services) and report a platform that is not running."""


def port_in_use(port: int) -> bool:
    """Whether a service could not listen on 127.0.0.1:``port`` (as uvicorn does, address reuse allowed: a port
    whose last connections are still closing is free)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise :class:`PortTaken` naming the first port in use and what to do."""
    for name, port in ports.items():
        if port_in_use(port):
            raise PortTaken(f"port {port} ({name}) is already in use, probably by another Clinomic platform: stop "
                            f"it (`ss -ltnp 'sport = :{port}'` shows which process holds it) and start again")


@dataclass
class Platform:
    urls: dict[str, str]
    env: dict[str, str]
    infra: str
    bundled_broker: infra.BundledBroker | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return self.urls["gateway"]

    def stop_service(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill_service(self, name: str) -> None:
        """Simulate a crash: SIGKILL, no shutdown hooks."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def start_service(self, name: str, timeout: float = 90.0) -> None:
        self._spawn(name, dict(SERVICES)[name], timeout)

    def start_replica(self, name: str, number: int, timeout: float = 90.0) -> str:
        """Another process of service ``name`` on a free port, with its own log: the key (``gateway-2``) under
        which ``urls``, ``logs`` and ``processes`` hold it. ``stop`` stops it with the rest."""
        key = f"{name}-{number}"
        self.urls[key] = f"http://127.0.0.1:{infra.free_port()}"
        self.logs[key] = self.logs[name].with_name(f"{key}.log")
        self._spawn(key, dict(SERVICES)[name], timeout)
        return key

    def _spawn(self, key: str, target: str, timeout: float) -> None:
        self.launch(key, target)
        self.serve(key)
        wait_ready(key, self.urls[key], self.processes[key], self.logs[key], timeout)

    def launch(self, key: str, target: str) -> None:
        """Start the process of ``key``: it imports its application, then waits for :meth:`serve`
        (``devstack.launch``), so its imports need not wait for the infrastructure."""
        port = self.urls[key].rsplit(":", 1)[1]
        log = open(self.logs[key], "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.processes[key] = subprocess.Popen(
            # --no-proxy-headers: the gateway alone resolves client addresses (FORWARDED_ALLOW_IPS).
            [sys.executable, "-m", "devstack.launch", target, "--host", "127.0.0.1", "--port", port,
             "--no-access-log", "--no-proxy-headers", "--timeout-graceful-shutdown", "10"],
            env=os.environ | {"PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT,
            # Its input unbuffered: writing to a process that has ended fails at once, closing never.
            stdin=subprocess.PIPE, bufsize=0,
        )

    def serve(self, key: str) -> None:
        """Hand a launched process its environment (``env``, its port): it starts serving."""
        process = self.processes[key]
        assert process.stdin is not None
        environment = self.env | {"PORT": self.urls[key].rsplit(":", 1)[1]}
        with contextlib.suppress(BrokenPipeError):  # it ended while importing: wait_ready shows its log
            process.stdin.write(json.dumps(environment).encode() + b"\n")
        process.stdin.close()

    def start_all(self, timeout: float = 90.0) -> None:
        """Serve the launched services: auth first (the others fetch its signing keys as they start), then the
        other four at once."""
        self.serve("auth")
        wait_ready("auth", self.urls["auth"], self.processes["auth"], self.logs["auth"], timeout)
        others = [name for name, _ in SERVICES if name != "auth"]
        for name in others:
            self.serve(name)
        for name in others:
            wait_ready(name, self.urls[name], self.processes[name], self.logs[name], timeout)

    def stop(self) -> None:
        for replica in [key for key in self.processes if key not in dict(SERVICES)]:
            self.stop_service(replica)
        for name, _ in reversed(SERVICES):
            if name in self.processes:
                self.stop_service(name)


def wait_ready(name: str, url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{name} exited with status {process.returncode}:\n" + "\n".join(tail))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{name} was not ready after {timeout:.0f} s (log: {log})")


def service_env(database_url: str, bootstrap: str, secret_env: dict[str, str], urls: dict[str, str],
                extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **secret_env,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AUTH_JWKS_URL": f"{urls['auth']}/api/auth/jwks",
        "AUTH_URL": urls["auth"],
        "SCREENING_URL": urls["screening"],
        "AUDIT_URL": urls["audit"],
        "INFERENCE_URL": urls["inference"],
        "DEBUG": os.environ.get("DEBUG", "true"),
        # No trusted reverse proxy in front of a local platform (uvicorn reads the same variable).
        "FORWARDED_ALLOW_IPS": os.environ.get("FORWARDED_ALLOW_IPS", ""),
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


#: The audit service's own login role: it may only SELECT and INSERT the ledger (see docs/audit-ledger.md).
AUDIT_DB_ROLE = "clinomic_audit"


def audit_env(database_url: str, secret_env: dict[str, str], state_dir: Path) -> dict[str, str]:
    """The audit service connects as its own unprivileged role and also writes tree heads to a directory."""
    from audit.ops import runtime_url

    return {
        "AUDIT_DATABASE_URL": runtime_url(database_url, AUDIT_DB_ROLE, secret_env.get("AUDIT_DB_PASSWORD")),
        "AUDIT_TREE_HEAD_DIR": str(state_dir / "audit-tree-heads"),
        "AUDIT_TREE_HEAD_INTERVAL_SECONDS": os.environ.get("AUDIT_TREE_HEAD_INTERVAL_SECONDS", "2"),
    }


async def prepare(env: dict[str, str]) -> None:
    """Create the database and the audit ledger's roles and schema (idempotent). The ledger is migrated here, as
    the database's admin who thereby owns it, so that the audit service itself never holds a role that could
    disable its triggers."""
    from audit.ops import prepare_database

    from shared.db import ensure_database

    await ensure_database(env["DATABASE_URL"])
    await prepare_database(env["DATABASE_URL"], AUDIT_DB_ROLE, env.get("AUDIT_DB_PASSWORD"))


def demo_users_seeder(env: dict[str, str]) -> Callable[[], None]:
    """What makes the demo organisation with its users (idempotent), as the auth service's own command does, to
    run in another thread; its settings are read now, in the caller's, as reading them swaps the environment."""
    from auth.settings import AuthSettings

    with environment(env):
        settings = AuthSettings()

    def seed() -> None:
        from auth.cli import seed_demo

        asyncio.run(seed_demo(settings, env.get("DEMO_PASSWORD", DEMO_PASSWORD)))

    return seed


def seed_demo_data(running: Platform, log: Path) -> subprocess.Popen[bytes] | None:
    """With ``CLINOMIC_DEMO_DATA=1``: demo labs, doctors, patients and screenings through the API, in the
    background once the services are up (``clinomic-ops seed-demo --if-empty``: a reused state that holds
    them is left as it is). Without it, nothing: the default start stays as fast as before."""
    if os.environ.get("CLINOMIC_DEMO_DATA", "") in ("", "0"):
        return None
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "clinomic_ops.cli", "seed-demo", "--if-empty", "--no-progress",
             "--gateway-url", running.gateway_url], env=running.env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Temporarily make ``env`` the process environment (settings classes read only from there)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def platform(state_dir: Path, *, ports: dict[str, int] | None = None, ephemeral: bool = False,
             prefer_containers: bool = False, extra_env: dict[str, str] | None = None) -> Iterator[Platform]:
    """Start everything, yield the running platform, stop everything (services first, then infrastructure).
    Refuses (:class:`PortTaken`) before starting anything when a service's port is in use."""
    ports = ports or DEFAULT_PORTS
    check_ports_free(ports)
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in DEFAULT_PORTS}
    running = Platform(urls=urls, env={}, infra="", logs={name: logs / f"{name}.log" for name, _ in SERVICES})
    # Auth imports while the infrastructure starts; the others once it is prepared, while auth finishes (on two
    # cores, five imports at once made auth, which the others wait for, the last to be ready to serve).
    running.launch(*SERVICES[0])
    try:
        with (
            infra.postgres(state_dir / "pgdata", prefer_containers=prefer_containers,
                           ephemeral=ephemeral) as (dsn, pg),
            infra.kafka(prefer_containers=prefer_containers, log_file=logs / "broker.log") as (bootstrap, broker,
                                                                                               bundled),
        ):
            tuned = {"KAFKA_TOPIC_PARTITIONS": "1"} if broker.startswith("bundled") else {}
            secret_env = secrets.load_or_create(state_dir / "dev.env")
            running.env = service_env(dsn, bootstrap, secret_env, urls,
                                      tuned | audit_env(dsn, secret_env, state_dir) | (extra_env or {}))
            running.infra, running.bundled_broker = f"{pg}; {broker}", bundled
            asyncio.run(prepare(running.env))
            for name, target in SERVICES[1:]:
                running.launch(name, target)
            seeding = None
            try:
                # The demo users are made while the services start: it costs seconds of CPU (the auth service's
                # imports and migrations once more) that their consumer-group joins leave idle.
                with ThreadPoolExecutor(1) as pool:
                    demo_users = pool.submit(demo_users_seeder(running.env))
                    running.start_all()
                    demo_users.result()
                seeding = seed_demo_data(running, logs / "seed-demo.log")
                yield running
            finally:
                if seeding is not None and seeding.poll() is None:
                    seeding.terminate()
                    seeding.wait(15)
                running.stop()
    finally:
        running.stop()  # processes never served: the infrastructure or its preparation failed
