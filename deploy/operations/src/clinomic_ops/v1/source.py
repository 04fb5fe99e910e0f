"""Reading v1: a live MongoDB (``pymongo``) or a ``mongodump`` directory of BSON files (``bson``), the same way.

Both sources yield plain dicts of the collections the migration maps. Every failure to read (an unreachable
server, a refused login, a missing or corrupt file) is an :class:`OpsError` with one clear line, raised before
anything is written.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any, Protocol

from bson import decode_file_iter
from bson.codec_options import CodecOptions
from bson.errors import BSONError

from clinomic_ops.pgtools import OpsError

CODEC = CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC)
DEFAULT_DB = "clinomic"


class Source(Protocol):
    description: str

    def documents(self, collection: str, org: str | None) -> Iterator[dict[str, Any]]:
        """The collection's documents (of one organisation with ``org``); none if it was never written."""
        ...

    def close(self) -> None: ...


def redact_uri(uri: str) -> str:
    """The URI without its password, for messages and the report."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)


class DumpSource:
    """A ``mongodump`` directory: ``<dir>/<collection>.bson`` (``.bson.gz`` with ``--gzip``), or a dump root
    holding one database directory (``dump/clinomic/``), or several and ``database`` naming one."""

    def __init__(self, path: Path, database: str | None = None) -> None:
        if path.is_file():
            raise OpsError(f"{path} is a file: mongodump --archive output is not supported; dump to a directory "
                           "(mongodump --out DIR, with or without --gzip) and give that directory")
        if not path.is_dir():
            raise OpsError(f"{path}: no such directory")
        self.root = self._database_dir(path, database)
        self.description = f"dump:{self.root}"

    @staticmethod
    def _has_bson(path: Path) -> bool:
        return any(path.glob("*.bson")) or any(path.glob("*.bson.gz"))

    def _database_dir(self, path: Path, database: str | None) -> Path:
        if database is not None and (path / database).is_dir():
            return path / database
        if self._has_bson(path):
            return path
        found = sorted(p for p in path.iterdir() if p.is_dir() and self._has_bson(p))
        if len(found) == 1 and database is None:
            return found[0]
        if not found:
            raise OpsError(f"{path} holds no .bson files: not a mongodump directory")
        names = ", ".join(p.name for p in found)
        raise OpsError(f"{path} holds several databases ({names}); choose one with --db")

    def documents(self, collection: str, org: str | None) -> Iterator[dict[str, Any]]:
        plain, packed = self.root / f"{collection}.bson", self.root / f"{collection}.bson.gz"
        path = plain if plain.exists() else packed if packed.exists() else None
        if path is None:
            return
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as handle:
                for doc in decode_file_iter(handle, CODEC):
                    if org is None or doc.get("orgId") == org:
                        yield doc
        except (BSONError, OSError, EOFError) as exc:
            raise OpsError(f"{path}: not a readable BSON dump ({exc})") from None

    def close(self) -> None:
        return None


class MongoSource:
    """A live v1 database. The first command is a ``ping`` that fails within ``timeout`` seconds when no server
    answers (``serverSelectionTimeoutMS``), so an unreachable MongoDB is one clear line, not a hang."""

    def __init__(self, uri: str, database: str | None, *, timeout: float, batch_size: int) -> None:
        from pymongo import MongoClient
        from pymongo.errors import ConfigurationError, PyMongoError
        from pymongo.uri_parser import parse_uri

        safe = redact_uri(uri)
        try:
            parsed = parse_uri(uri)
            ms = max(1, int(timeout * 1000))
            self.client: Any = MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=
                                           max(ms, 60_000), appname="clinomic-ops-v1-migration",
                                           document_class=dict, tz_aware=True, tzinfo=UTC)
        except (ConfigurationError, ValueError) as exc:
            raise OpsError(f"invalid --mongodb-uri {safe}: {exc}") from None
        self.database = database or parsed.get("database") or DEFAULT_DB
        self.batch_size = batch_size
        self.description = f"{safe} (database {self.database})"
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            self.client.close()
            hosts = ", ".join(f"{h}:{p}" for h, p in parsed["nodelist"])
            raise OpsError(f"MongoDB at {hosts} cannot be reached or refused the connection within "
                           f"{timeout:g} s: {type(exc).__name__}: {str(exc).split(', Timeout')[0]}") from None

    def documents(self, collection: str, org: str | None) -> Iterator[dict[str, Any]]:
        from pymongo.errors import PyMongoError

        try:
            db = self.client[self.database]
            if collection not in db.list_collection_names():
                return
            yield from db[collection].find({"orgId": org} if org else {}, batch_size=self.batch_size)
        except PyMongoError as exc:
            raise OpsError(f"reading {self.database}.{collection} from MongoDB failed: {exc}") from None

    def close(self) -> None:
        self.client.close()
