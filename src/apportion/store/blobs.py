"""Blobs every server can reach: task checkpoints.

Two places hold them, behind one small interface:

- the database (default): a blob is rows of ``blobs`` in parts of 1 MiB, so
  no statement carries more than a part and a read streams part by part;
  a blob is written under a temporary key and renamed in one transaction,
  so a reader sees the old blob or the new one, never half of one;
- an S3-compatible bucket, when ``APPORTION_BLOB_URL`` names one
  (``s3://bucket/prefix``; ``APPORTION_BLOB_ENDPOINT`` for a non-AWS
  endpoint), through boto3 (the ``s3`` extra). Tested against moto's S3.

Every call blocks: callers run them in a worker thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

import sqlalchemy as sa

from apportion.exceptions import InvalidInput
from apportion.store.schema import blobs

PART = 1 << 20


class BlobStore(Protocol):
    """Where checkpoints are kept."""

    where: str

    def put_file(self, key: str, path: Path) -> int: ...
    def chunks(self, key: str) -> Iterator[bytes] | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


class DatabaseBlobs:
    """Blobs as rows of parts in the database."""

    where = "database"

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _write(self, work: Callable[[sa.Connection], Any]) -> Any:
        # Its own short transactions: on SQLite they wait for the group
        # committer's (busy timeout), and never hold the lock for long.
        with self.engine.begin() as conn:
            return work(conn)

    def put_file(self, key: str, path: Path) -> int:
        staging = f"staging/{uuid.uuid4().hex}"
        size = 0
        with path.open("rb") as fh:
            part = 0
            while data := fh.read(PART):
                # One transaction a part: a large blob never holds the
                # database's write lock for long.
                self._write(partial(_insert_part, row={"key": staging, "part": part,
                                                       "data": data}))
                size += len(data)
                part += 1

        def publish(conn: sa.Connection) -> None:
            conn.execute(blobs.delete().where(blobs.c.key == key))
            conn.execute(blobs.update().where(blobs.c.key == staging).values(key=key))

        self._write(publish)
        return size

    def chunks(self, key: str) -> Iterator[bytes] | None:
        if not self.exists(key):
            return None
        return self._parts(key)

    def _parts(self, key: str) -> Iterator[bytes]:
        part = 0
        while True:
            with self.engine.connect() as conn:
                data = conn.execute(sa.select(blobs.c.data).where(
                    blobs.c.key == key, blobs.c.part == part)).scalar_one_or_none()
            if data is None:
                return
            yield bytes(data)
            part += 1

    def exists(self, key: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(blobs.c.part).where(
                blobs.c.key == key, blobs.c.part == 0)).first() is not None

    def delete(self, key: str) -> None:
        self._write(lambda conn: conn.execute(blobs.delete().where(blobs.c.key == key)))


class S3Blobs:
    """Blobs as objects in an S3-compatible bucket (boto3)."""

    def __init__(self, url: str, *, endpoint: str | None = None, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidInput(f"APPORTION_BLOB_URL: {url!r} is not s3://bucket[/prefix]",
                               field="APPORTION_BLOB_URL")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if client is None:
            try:
                import boto3
            except ImportError as exc:  # pragma: no cover - the s3 extra is missing
                raise InvalidInput("APPORTION_BLOB_URL needs boto3: pip install "
                                   "'apportion[s3]'", field="APPORTION_BLOB_URL") from exc
            client = boto3.client("s3", endpoint_url=endpoint)
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> int:
        # upload_file goes multipart above its threshold and never holds the
        # whole file in memory.
        self.client.upload_file(str(path), self.bucket, self._key(key))
        return path.stat().st_size

    def chunks(self, key: str) -> Iterator[bytes] | None:
        try:
            body: BinaryIO = self.client.get_object(Bucket=self.bucket,
                                                    Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return _read_parts(body)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def _insert_part(conn: sa.Connection, row: dict[str, Any]) -> None:
    conn.execute(blobs.insert().values(row))


def _read_parts(body: BinaryIO) -> Iterator[bytes]:
    try:
        while data := body.read(PART):
            yield data
    finally:
        body.close()
