"""The batch stores: records in a real Redis (their own database), files in a temporary folder."""

from __future__ import annotations

import time
import zipfile

import pytest

from finetune.errors import BadArchive, NotFound
from finetune.execution.reaper import requeue_stale_jobs
from finetune.stores.archive import ArchiveLimits
from finetune.stores.batches import BatchFileStore, BatchStore, chunk_of, part_name
from finetune.stores.jobs import JobStore
from finetune.stores.records import BatchSource
from tests.helpers import make_image_bytes

ROOMY = ArchiveLimits(max_bytes=50_000_000, max_files=1000, max_ratio=200.0)


@pytest.fixture
def batches(redis_db):
    store = BatchStore.from_url(redis_db)
    store.redis.flushdb()
    yield store
    store.redis.flushdb()


@pytest.fixture
def files(tmp_path):
    return BatchFileStore(tmp_path / "batches", cache_dir=tmp_path / "cache", limits=ROOMY)


def new_batch(batches: BatchStore, batch_id: str, *, total: int = 10, chunk_size: int = 4) -> dict:
    return batches.create_record(
        batch_id,
        model_id="m1",
        source=BatchSource(kind="url", url="s3://b/p"),
        total=total,
        chunk_size=chunk_size,
        top_k=3,
    )


def test_a_batch_record_counts_its_chunks_and_is_kept_apart_from_jobs(batches):
    record = new_batch(batches, "b1", total=10, chunk_size=4)
    assert (record["status"], record["counts"]["chunks"], record["counts"]["total"]) == ("queued", 3, 10)
    assert batches.get("b1") == record
    assert [b["id"] for b in batches.list()] == ["b1"]
    assert JobStore(batches.redis).list() == []
    with pytest.raises(NotFound, match="batch 'nope' not found"):
        batches.get("nope")


def test_a_running_batch_whose_worker_went_silent_is_requeued(batches):
    for batch_id, age in (("stale", 60), ("alive", 1)):
        new_batch(batches, batch_id)
        batches.update(batch_id, {"status": "running", "worker": "w1"})
        batches.redis.hset(batches.key(batch_id), "heartbeat", time.time() - age)
    enqueued: list[str] = []
    assert requeue_stale_jobs(batches, stale_after_s=30, enqueue=enqueued.append) == ["stale"] == enqueued
    assert (batches.get("stale")["status"], batches.get("alive")["status"]) == ("queued", "running")


def test_parts_written_are_listed_in_order_and_read_back(files):
    batch_id, _ = files.create_from_location(str(_folder_of_images(files.location.local_path("..", "src"))))
    files.write_part(batch_id, 2, [{"path": "c"}])
    files.write_part(batch_id, 0, [{"path": "a"}, {"path": "b"}])
    results = files.location.local_path(batch_id, "results")
    (results / (part_name(1) + ".tmp-123-456")).write_text("half a part")  # a write cut short
    assert files.done_chunks(batch_id) == [0, 2]
    assert [row["path"] for row in files.rows(batch_id)] == ["a", "b", "c"]
    assert (chunk_of("part-00012.jsonl"), chunk_of("part-00012.jsonl.tmp-1-2")) == (12, None)


def test_files_under_a_location_leave_hidden_ones_out_and_none_is_not_found(files, tmp_path):
    folder = _folder_of_images(tmp_path / "src")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "deep" / "Thumbs.db").write_bytes(b"x")
    listed = files.list_files(str(folder))
    assert listed.files == ["a.png", "deep/b.png", "deep/er/c.png"]
    assert listed.chunk(1, 2) == ["deep/er/c.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound):
        files.list_files(str(tmp_path / "empty"))


def test_an_archive_batch_keeps_paths_and_a_refused_one_leaves_nothing(files, tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("x/y/z.png", make_image_bytes("red"))
        zipped.writestr("top.png", make_image_bytes("blue"))
    batch_id, listed = files.create_from_archive(archive)
    assert listed.files == ["top.png", "x/y/z.png"]
    assert files.files(batch_id) == listed
    assert (files.location.local_path(batch_id, "inputs", "x", "y", "z.png")).is_file()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../evil.png", b"x")
    with pytest.raises(BadArchive):
        files.create_from_archive(archive)
    assert sorted(p.name for p in files.location.local_path().iterdir()) == [batch_id]


def _folder_of_images(folder):
    for relative in ("a.png", "deep/b.png", "deep/er/c.png"):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_image_bytes("red"))
    return folder
