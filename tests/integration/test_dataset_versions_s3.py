"""Dataset versions on an s3:// DATA_DIR against a real S3 API (moto's server): the version's shared
files are copied inside the store, the parent keeps its objects and bytes, and the version reads back."""

from __future__ import annotations

import sys

import boto3
import pytest

from finetune.launcher import ManagedProcess, free_port, http_status
from finetune.stores.archive import ArchiveLimits
from finetune.stores.datasets import DatasetStore
from finetune.stores.versions import Move, VersionEdits
from tests.helpers import make_dataset_zip

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LIMITS = ArchiveLimits(max_bytes=50_000_000, max_files=1000, max_ratio=200.0)


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto-versions") / "moto.log"
    process = ManagedProcess(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=log
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: http_status(f"{url}/moto-api/") is not None, timeout=120, what="moto server")
    yield url
    process.stop()


@pytest.fixture
def s3(s3_url, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_url,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_url)
    client.create_bucket(Bucket="versions")
    return client


def objects(s3, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="versions", Prefix=prefix).get("Contents", [])
    return {
        item["Key"][len(prefix) :]: s3.get_object(Bucket="versions", Key=item["Key"])["Body"].read() for item in listed
    }


def test_a_version_in_an_object_store_copies_shared_files_in_the_store_and_leaves_the_parent(s3, tmp_path):
    store = DatasetStore("s3://versions/data", cache_dir=tmp_path / "cache", limits=LIMITS, max_pixels=10_000_000)
    parent = store.create_from_archive(make_dataset_zip(tmp_path / "d.zip", per_class=3, size=16))
    before = objects(s3, f"data/{parent['id']}/")
    edits = VersionEdits(moves=[Move("red/red_000.png", "blue")], removals=["blue/blue_002.png"])
    version = store.create_version(parent["id"], edits=edits)
    assert version["counts"] == {"blue": 3, "red": 2} and version["change"] == {"added": 0, "moved": 1, "removed": 1}
    after = objects(s3, f"data/{version['id']}/")
    assert after["images/blue/red_000.png"] == before["images/red/red_000.png"]
    assert "images/blue/blue_002.png" not in after and "images/red/red_000.png" not in after
    assert sorted(key for key in after if key.startswith("images/")) == [
        "images/blue/blue_000.png",
        "images/blue/blue_001.png",
        "images/blue/red_000.png",
        "images/red/red_001.png",
        "images/red/red_002.png",
    ]
    assert objects(s3, f"data/{parent['id']}/") == before
    assert store.read_file(version["id"], "blue/red_000.png") == before["images/red/red_000.png"]
    assert store.children(parent["id"]) == [version["id"]]
