"""The local model store: complete folders only, newest first, safe ids, atomic saves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import finetune.stores.models as models_module
from finetune.errors import NotFound
from finetune.stores.models import MANIFEST_FILE, MODEL_FILE, ModelStore


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "models", cache_dir=tmp_path / "cache")


def entries(store) -> list[str]:
    return sorted(os.listdir(store.location.root))


def test_save_writes_a_folder_with_the_model_and_its_manifest(store, fake_result):
    result = fake_result()
    manifest = store.save(result, job_id="job1", dataset_id="ds1")
    folder = store.location.local_path(manifest["id"])
    assert sorted(os.listdir(folder)) == sorted([MODEL_FILE, MANIFEST_FILE])
    on_disk = json.loads((folder / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    assert on_disk["job_id"] == "job1" and on_disk["dataset_id"] == "ds1"
    assert on_disk["classes"] == ["blue", "green", "red"]
    assert on_disk["image_size"] == 32
    assert on_disk["backbone"] == "vgg16"
    assert on_disk["spec"] == result.spec.model_dump()
    assert on_disk["metrics"] == result.metrics
    assert on_disk["warmup_metrics"] == result.warmup_metrics
    assert on_disk["history"] == result.history
    assert on_disk["timings"] == result.timings
    assert on_disk["num_train"] == 12 and on_disk["num_validation"] == 4
    assert on_disk["model_file"] == MODEL_FILE
    assert set(on_disk["versions"]) == {"tensorflow", "keras"}
    assert on_disk["created_at"].endswith("+00:00")


def test_save_leaves_no_temporary_folder(store, fake_result):
    manifest = store.save(fake_result())
    assert entries(store) == [manifest["id"]]


def test_save_uses_a_given_model_id(store, fake_result):
    manifest = store.save(fake_result(), model_id="chosen-id")
    assert manifest["id"] == "chosen-id"
    assert store.get("chosen-id")["id"] == "chosen-id"


def test_saved_skipped_files_are_listed_in_the_manifest(store, fake_result):
    from finetune.ml.scan import Skipped

    manifest = store.save(fake_result(skipped=[Skipped("red/x.txt", "not an image file (.txt)")]))
    assert store.get(manifest["id"])["skipped"] == [{"path": "red/x.txt", "reason": "not an image file (.txt)"}]


def test_list_is_newest_first(store, fake_result):
    ids = [store.save(fake_result())["id"] for _ in range(3)]
    listed = store.list()
    assert [manifest["id"] for manifest in listed] == ids[::-1]
    assert store.newest()["id"] == ids[-1]


def test_an_empty_store_lists_nothing_and_has_no_newest(store):
    assert store.list() == []
    with pytest.raises(NotFound):
        store.newest()


def test_half_written_and_temporary_folders_are_not_listed(store, fake_result):
    saved = store.save(fake_result())
    root = store.location.local_path()
    (root / "halfway").mkdir()
    (root / "halfway" / MODEL_FILE).write_bytes(b"partial")
    temporary = root / ".tmp-abc123-xyz"
    temporary.mkdir()
    (temporary / MANIFEST_FILE).write_text(json.dumps({**saved, "id": "abc123"}))
    (root / "garbled").mkdir()
    (root / "garbled" / MANIFEST_FILE).write_text("{not json")
    assert [manifest["id"] for manifest in store.list()] == [saved["id"]]
    for name in ("halfway", "garbled"):
        with pytest.raises(NotFound):
            store.get(name)


def test_get_returns_the_manifest(store, fake_result):
    saved = store.save(fake_result())
    assert store.get(saved["id"]) == saved


@pytest.mark.parametrize("model_id", ["nope", "0123456789abcdef"])
def test_get_unknown_is_not_found(store, model_id):
    with pytest.raises(NotFound) as caught:
        store.get(model_id)
    assert caught.value.status_code == 404
    assert model_id in caught.value.message


@pytest.mark.parametrize("model_id", ["../x", "..", "a/b", "/etc", ".tmp-x", "", "a..b"])
def test_path_like_ids_are_not_found(store, fake_result, model_id, tmp_path):
    # a manifest that a traversal would reach must stay out of reach
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / MANIFEST_FILE).write_text(json.dumps({"id": "x"}))
    store.save(fake_result())
    with pytest.raises(NotFound):
        store.get(model_id)
    with pytest.raises(NotFound):
        store.delete(model_id)
    with pytest.raises(NotFound):
        store.model_file(model_id)
    assert (tmp_path / "x" / MANIFEST_FILE).exists()


def test_model_file_is_the_saved_keras_file(store, fake_result):
    saved = store.save(fake_result())
    path = store.model_file(saved["id"])
    assert path.name == MODEL_FILE and path.is_file()
    assert path.parent.name == saved["id"]


def test_load_returns_a_working_model(store, fake_result):
    result = fake_result()
    saved = store.save(result)
    model = store.load(saved["id"])
    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 150, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(result.model(x)), atol=1e-6)
    red = np.zeros((1, 32, 32, 3), np.float32)
    red[..., 2] = 131.0  # VGG-preprocessed pure red: the R channel (last, BGR) is the large one
    assert saved["classes"][int(np.argmax(model(red)))] == "red"


def test_delete_removes_the_model(store, fake_result):
    keep = store.save(fake_result())
    doomed = store.save(fake_result())
    store.delete(doomed["id"])
    assert [manifest["id"] for manifest in store.list()] == [keep["id"]]
    assert entries(store) == [keep["id"]]
    with pytest.raises(NotFound):
        store.get(doomed["id"])
    with pytest.raises(NotFound):
        store.delete(doomed["id"])


def test_a_save_failing_midway_leaves_nothing_behind(store, fake_result, monkeypatch):
    result = fake_result()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(result.model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.save(result)
    assert store.list() == []
    assert entries(store) == []


def test_a_save_failing_after_the_model_file_leaves_nothing_behind(store, fake_result, monkeypatch):
    class FailingJson:
        @staticmethod
        def dumps(*args, **kwargs):
            raise TypeError("the manifest could not be written")

    monkeypatch.setattr(models_module, "json", FailingJson)  # fails after model.keras was written
    with pytest.raises(TypeError, match="manifest could not be written"):
        store.save(fake_result())
    assert store.list() == []
    assert entries(store) == []


def test_a_second_store_on_the_same_folder_sees_the_models(store, fake_result, tmp_path):
    saved = store.save(fake_result())
    again = ModelStore(str(tmp_path / "models"))
    assert [manifest["id"] for manifest in again.list()] == [saved["id"]]
