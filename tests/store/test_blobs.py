"""Blob stores: the database (both backends) and an S3 bucket (moto's S3,
the library's own fake: no AWS account is reachable here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from apportion.exceptions import InvalidInput
from apportion.store.blobs import PART, BlobStore, DatabaseBlobs, S3Blobs
from apportion.store.database import create_engine, migrate


@pytest.fixture
def database_blobs(store_url: str) -> Iterator[DatabaseBlobs]:
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield DatabaseBlobs(engine)
    finally:
        engine.dispose()


@pytest.fixture
def s3_blobs() -> Iterator[S3Blobs]:
    import boto3
    from moto import mock_aws

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test")
        client.create_bucket(Bucket="ckpt")
        yield S3Blobs("s3://ckpt/apportion", client=client)


def _round_trip(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * PART + 123)  # three parts
    path = tmp_path / "c.tar"
    path.write_bytes(data)
    assert not blobs.exists("checkpoints/j/t.tar")
    assert blobs.chunks("checkpoints/j/t.tar") is None
    assert blobs.put_file("checkpoints/j/t.tar", path) == len(data)
    assert blobs.exists("checkpoints/j/t.tar")
    parts = blobs.chunks("checkpoints/j/t.tar")
    assert parts is not None and b"".join(parts) == data
    path.write_bytes(b"second")
    assert blobs.put_file("checkpoints/j/t.tar", path) == 6  # replaced whole
    parts = blobs.chunks("checkpoints/j/t.tar")
    assert parts is not None and b"".join(parts) == b"second"
    blobs.delete("checkpoints/j/t.tar")
    assert not blobs.exists("checkpoints/j/t.tar")


def test_database_blobs_round_trip(database_blobs: DatabaseBlobs, tmp_path: Path) -> None:
    _round_trip(database_blobs, tmp_path)
    with database_blobs.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM blobs")).scalar_one() == 0


def test_s3_blobs_round_trip(s3_blobs: S3Blobs, tmp_path: Path) -> None:
    _round_trip(s3_blobs, tmp_path)
    assert s3_blobs.where == "s3://ckpt/apportion"


def test_a_blob_url_that_is_not_s3_is_refused() -> None:
    with pytest.raises(InvalidInput, match="is not s3://bucket"):
        S3Blobs("https://example.com/x", client=object())
