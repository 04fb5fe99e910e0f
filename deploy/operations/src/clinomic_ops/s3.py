"""Backups in S3-compatible storage: the upload after ``backup``, retention (``--keep N``), the listing,
and the download that lets ``restore`` and ``verify-backup`` take an ``s3://`` URL (docs/operations.md).

Layout: ``s3://<bucket>/<prefix><backup name>/<file>``, the backup directory's files under its name, the
manifest uploaded last. A backup counts as stored only when its manifest is there, so an interrupted upload
is never listed, restored or counted by retention. Retention deletes only names ``backup`` writes
(``clinomic-<UTC time>``), never another object under the prefix.

Bucket, prefix and endpoint come from options or ``S3_BUCKET``, ``S3_PREFIX``, ``S3_ENDPOINT_URL``;
credentials and region only from boto3's own chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``, a profile or an instance role), never from an option, so they appear
in no command line, manifest or message.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from clinomic_ops.backup import MANIFEST, bar
from clinomic_ops.pgtools import OpsError

SCHEME = "s3://"
#: The names ``backup`` gives; retention never deletes anything else.
BACKUP_NAME = re.compile(r"^clinomic-\d{8}T\d{6}Z$")
#: Seconds to wait for a connection, and attempts per request: an unreachable endpoint fails in seconds.
CONNECT_TIMEOUT = 5
ATTEMPTS = 3


def normalise_prefix(prefix: str) -> str:
    """``""`` or a key prefix ending in ``/`` (a leading ``/`` would make an empty first path segment)."""
    cleaned = prefix.strip().strip("/")
    return f"{cleaned}/" if cleaned else ""


def parse_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/some/prefix/clinomic-...`` → (bucket, prefix, backup name)."""
    if not url.startswith(SCHEME):
        raise OpsError(f"{url} is not an s3:// URL")
    bucket, _, path = url.removeprefix(SCHEME).partition("/")
    parts = [p for p in path.split("/") if p]
    if not bucket or not parts:
        raise OpsError(f"{url} does not name a backup: use s3://BUCKET[/PREFIX]/clinomic-<UTC time>")
    if any(p in (".", "..") for p in parts):
        raise OpsError(f"{url}: '.' and '..' are not allowed in the path")
    return bucket, normalise_prefix("/".join(parts[:-1])), parts[-1]


def stored_backups(keys: Iterable[str], prefix: str) -> list[str]:
    """Names of the complete backups (their manifest is stored) among keys under ``prefix``, oldest first."""
    names = set()
    for key in keys:
        rest = key.removeprefix(prefix) if key.startswith(prefix) else None
        if rest is None:
            continue
        name, _, file = rest.partition("/")
        if file == MANIFEST and BACKUP_NAME.match(name):
            names.add(name)
    return sorted(names)


def to_prune(names: Iterable[str], keep: int) -> list[str]:
    """The backups retention deletes: all but the ``keep`` newest (names sort by their UTC time)."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    ordered = sorted({n for n in names if BACKUP_NAME.match(n)})
    return ordered[: max(0, len(ordered) - keep)]


def relative_file(key: str, base: str) -> PurePosixPath:
    """A stored object's path inside the backup directory; refuses keys that would leave it."""
    rest = PurePosixPath(key.removeprefix(base))
    if not key.startswith(base) or rest.is_absolute() or not rest.parts or ".." in rest.parts:
        raise OpsError(f"object {key} is not inside {base}")
    return rest


@dataclass
class Upload:
    url: str
    objects: int
    bytes: int
    seconds: float


class S3Backups:
    """Backups under one bucket and prefix; each failure is an :class:`OpsError` naming bucket, endpoint."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None
    ) -> None:
        if not bucket:
            raise OpsError("no S3 bucket: set S3_BUCKET or pass --s3-bucket")
        self.bucket = bucket
        self.prefix = normalise_prefix(prefix)
        self.endpoint_url = endpoint_url or None
        self.client = client or _client(self.endpoint_url)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def url(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{name}"

    def check(self) -> None:
        """The endpoint answers, the credentials are accepted and the bucket exists (before any writing)."""
        self._call("reach the bucket", self.client.head_bucket, Bucket=self.bucket)

    def keys(self, under: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[str] = []

        def pages() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=under):
                found.extend(o["Key"] for o in page.get("Contents", []))

        self._call("list the bucket", pages)
        return found

    def backups(self) -> list[str]:
        return stored_backups(self.keys(self.prefix), self.prefix)

    def upload(self, backup: Path, *, progress: bool | None) -> Upload:
        """Upload a backup directory, manifest last. An upload that fails part-way deletes what it had
        stored, so the bucket holds the backup completely or not at all."""
        started = time.perf_counter()
        base = f"{self.prefix}{backup.name}/"
        if self.keys(base):
            raise OpsError(f"{self.url(backup.name)} already exists in the bucket; nothing was uploaded")
        files = sorted(
            (p for p in backup.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p))
        )
        total = sum(p.stat().st_size for p in files)
        stored: list[str] = []
        try:
            with bar(total, "uploading", "B", enabled=progress, unit_scale=True) as uploading:
                for path in files:
                    key = base + path.relative_to(backup).as_posix()
                    self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket, key,
                               Callback=uploading.update)
                    stored.append(key)
        except BaseException:
            self._delete_quietly(stored)
            raise
        return Upload(self.url(backup.name), len(stored), total, time.perf_counter() - started)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest complete backups under the prefix; returns the deleted names."""
        doomed = to_prune(self.backups(), keep)
        for name in doomed:
            keys = self.keys(f"{self.prefix}{name}/")
            # The manifest first: a backup whose deletion is interrupted is no longer listed as complete.
            keys.sort(key=lambda k: not k.endswith(f"/{MANIFEST}"))
            for start in range(0, len(keys), 1000):
                self._delete(keys[start:start + 1000])
        return doomed

    def download(self, name: str, dest: Path, *, progress: bool | None) -> Path:
        """Fetch a complete backup into ``dest/<name>``; the caller checks it against its manifest."""
        base = f"{self.prefix}{name}/"
        keys = self.keys(base)
        if base + MANIFEST not in keys:
            hint = f" (stored: {', '.join(self.backups()[-5:]) or 'none'})"
            raise OpsError(f"no complete backup at {self.url(name)}{hint}")
        target = dest / name
        sizes = {}
        for key in keys:
            head = self._call(f"read {key}", self.client.head_object, Bucket=self.bucket, Key=key)
            sizes[key] = int(head["ContentLength"])
        with bar(sum(sizes.values()), "downloading", "B", enabled=progress, unit_scale=True) as downloading:
            for key in keys:
                path = target / relative_file(key, base)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._call(f"download {key}", self.client.download_file, self.bucket, key, str(path),
                           Callback=downloading.update)
                path.chmod(0o600)
        return target

    def _delete(self, keys: list[str]) -> None:
        if not keys:
            return
        answer = self._call("delete objects", self.client.delete_objects, Bucket=self.bucket,
                            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise OpsError(f"{self.where}: could not delete {first.get('Key')}: {first.get('Message')}")

    def _delete_quietly(self, keys: list[str]) -> None:
        try:
            self._delete(keys)
        except OpsError:
            pass  # the upload's own error is the one to report; an incomplete backup is never listed

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            return function(*args, **kwargs)
        except (NoCredentialsError, PartialCredentialsError):
            raise OpsError(
                f"{self.where}: no S3 credentials "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            ) from None
        except ClientError as exc:
            raise OpsError(f"{self.where}: cannot {what}: {_client_problem(exc)}") from None
        except (BotoCoreError, Boto3Error, OSError) as exc:
            raise OpsError(f"{self.where}: cannot {what}: {exc}") from None


def _client_problem(exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code in ("404", "NoSuchBucket"):
        return "the bucket does not exist"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}): check the credentials and the bucket's policy"
    return f"{code or 'error'}: {error.get('Message') or exc}"


def _client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=60,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        # Path-style addressing: what S3-compatible servers (MinIO, Ceph, moto) answer without DNS set-up.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
