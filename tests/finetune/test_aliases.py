"""Aliases in the model store: set, move, history, roll back, delete; resolving a reference; the publish gate."""

from __future__ import annotations

import threading

import pytest

from finetune.errors import Conflict, NotFound
from finetune.stores.aliases import ALIASES_DIR, AliasStore, publish
from finetune.stores.models import ModelStore


@pytest.fixture
def store(tmp_path):
    return ModelStore(str(tmp_path / "models"))


@pytest.fixture
def two_models(store, fake_result):
    first = store.save(fake_result())
    second = store.save(fake_result())
    return first["id"], second["id"]


def test_a_new_alias_points_at_its_model_with_a_one_entry_history(store, two_models):
    a, _ = two_models
    record = store.aliases.set("production", a)
    assert record["name"] == "production" and record["model_id"] == a
    assert [(h["model_id"], h["to"]) for h in record["history"]] == [(a, None)]
    assert record["history"][0]["from"] == record["updated_at"]
    assert store.aliases.get("production") == record
    assert [r["name"] for r in store.aliases.list()] == ["production"]


def test_moving_an_alias_closes_the_old_period_and_rollback_points_it_back(store, two_models):
    a, b = two_models
    store.aliases.set("production", a)
    moved = store.aliases.set("production", b)
    assert moved["model_id"] == b
    assert [h["model_id"] for h in moved["history"]] == [a, b]
    assert moved["history"][0]["to"] == moved["history"][1]["from"] == moved["updated_at"]
    rolled = store.aliases.rollback("production")
    assert rolled["model_id"] == a
    assert [h["model_id"] for h in rolled["history"]] == [a, b, a]
    assert store.aliases.rollback("production")["model_id"] == b  # the previous model again


def test_setting_an_alias_to_its_own_model_changes_nothing(store, two_models):
    a, _ = two_models
    first = store.aliases.set("staging", a)
    assert store.aliases.set("staging", a) == first


def test_rollback_without_a_previous_model_is_a_conflict(store, two_models):
    store.aliases.set("production", two_models[0])
    with pytest.raises(Conflict, match="no previous model"):
        store.aliases.rollback("production")


def test_unknown_and_malformed_aliases_are_not_found(store):
    for name in ("nope", "../models", "Production", "a" * 41):
        with pytest.raises(NotFound):
            store.aliases.get(name)
        assert store.aliases.find(name) is None
    with pytest.raises(NotFound):
        store.aliases.delete("nope")


def test_delete_removes_the_alias_and_nothing_else(store, two_models):
    a, b = two_models
    store.aliases.set("production", a)
    store.aliases.set("staging", b)
    store.aliases.delete("production")
    assert [r["name"] for r in store.aliases.list()] == ["staging"]
    assert {m["id"] for m in store.list()} == {a, b}


def test_aliases_are_kept_with_the_models_and_not_listed_as_models(store, two_models, tmp_path):
    a, b = two_models
    store.aliases.set("production", a)
    assert (tmp_path / "models" / ALIASES_DIR / "production.json").is_file()
    assert {m["id"] for m in store.list()} == {a, b}
    again = ModelStore(str(tmp_path / "models"))  # another process on the same folder
    assert again.aliases.get("production")["model_id"] == a
    assert AliasStore(str(tmp_path / "models")).pointing_to(a) == ["production"]


def test_resolve_takes_an_alias_an_id_or_the_default(store, two_models):
    a, b = two_models
    newest = store.newest()["id"]
    assert store.resolve(None)["id"] == newest  # no `default` alias: the newest model
    older = a if newest == b else b
    store.aliases.set("default", older)
    assert store.resolve(None)["id"] == older
    store.aliases.set("production", a)
    assert store.resolve("production")["id"] == a
    assert store.resolve(b)["id"] == b
    with pytest.raises(NotFound):
        store.resolve("unknown")


def test_an_alias_to_a_deleted_model_says_so(store, two_models):
    a, _ = two_models
    store.aliases.set("production", a)
    store.delete(a)
    with pytest.raises(NotFound, match="points to model"):
        store.resolve("production")


def test_concurrent_moves_are_never_lost(store, fake_result):
    """Eight threads each move the alias to a model of their own at the same moment: every move is in
    the history once (a read-modify-write without the lock would lose some)."""
    models = [store.save(fake_result())["id"] for _ in range(9)]
    store.aliases.set("production", models[0])
    barrier = threading.Barrier(8)

    def move(target):
        barrier.wait()
        store.aliases.set("production", target)

    threads = [threading.Thread(target=move, args=(model_id,)) for model_id in models[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    history = store.aliases.get("production")["history"]
    assert history[0]["model_id"] == models[0]
    assert sorted(h["model_id"] for h in history[1:]) == sorted(models[1:])
    assert all(earlier["to"] == later["from"] for earlier, later in zip(history, history[1:]))


def test_publish_moves_the_alias_only_when_the_accuracy_passes(store, fake_result):
    good = store.save(fake_result(metrics={"accuracy": 0.95}))
    bad = store.save(fake_result(metrics={"accuracy": 0.87}))
    passed = publish(store.aliases, good, alias="production", min_accuracy=0.9)
    assert passed.published and passed.accuracy == 0.95 and passed.split == "validation"
    refused = publish(store.aliases, bad, alias="production", min_accuracy=0.9)
    assert not refused.published and refused.reason == "accuracy 0.87 < 0.9"
    assert store.aliases.get("production")["model_id"] == good["id"]
