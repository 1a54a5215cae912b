"""Serving a saved model: Predictor, the serving cache (PredictorCache) and the MicroBatcher."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

import finetune.serving.batcher as batching
import finetune.serving.cache as cache_module
from finetune.errors import BadImage, NotAnImage, NotFound
from finetune.ml.predictor import WARM_BATCH_SIZES, ImageInput, Predictor
from finetune.serving.batcher import MicroBatcher
from finetune.serving.cache import BatchingOptions, PredictorCache
from finetune.serving.changes import SharedChangeCounter
from finetune.stores.models import ModelStore
from tests.helpers import make_image_bytes

CLASSES = ["blue", "green", "red"]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_input(colour: str, size: int = 40, seed: int = 0, fmt: str = "PNG") -> ImageInput:
    return ImageInput(f"{colour}-{seed}.{fmt.lower()}", make_image_bytes(colour, size, fmt, seed=seed))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, factories):
    """A store holding one model that tells blue, green and red apart (see conftest.colour_classifier)."""
    store = ModelStore(tmp_path_factory.mktemp("models"))
    result = factories.FakeResult(
        model=factories.colour_classifier(),
        spec=factories.tiny_spec(backbone="vgg16", alpha=None),
        classes=list(CLASSES),
    )
    manifest = store.save(result)
    return store, manifest


@pytest.fixture(scope="module")
def predictor(saved_model):
    store, manifest = saved_model
    predictor = Predictor(store.model_file(manifest["id"]), manifest, max_batch=8)
    predictor.warm_up()
    return predictor


def test_warm_sizes_are_capped_by_max_batch(saved_model):
    store, manifest = saved_model
    assert Predictor(store.model_file(manifest["id"]), manifest, max_batch=4).warm_sizes == (1, 2, 4)
    assert Predictor(store.model_file(manifest["id"]), manifest).warm_sizes == WARM_BATCH_SIZES


# --- Predictor ---------------------------------------------------------------------------


def test_predictor_reads_its_manifest(predictor, saved_model):
    _, manifest = saved_model
    assert predictor.model_id == manifest["id"]
    assert predictor.classes == CLASSES
    assert predictor.image_size == 32


@pytest.mark.parametrize("colour", CLASSES)
def test_predict_names_the_right_colour_first(predictor, colour):
    [result] = predictor.predict([colour_input(colour)], top_k=3)
    assert result["filename"] == f"{colour}-0.png"
    assert result["predictions"][0]["label"] == colour
    assert result["predictions"][0]["probability"] > 0.8  # Pillow's "green" is (0, 128, 0)


def test_top_k_is_sorted_descending_and_sums_to_one(predictor):
    [result] = predictor.predict([colour_input("purple")], top_k=3)
    probabilities = [p["probability"] for p in result["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert sorted(p["label"] for p in result["predictions"]) == CLASSES
    assert all(isinstance(p["probability"], float) for p in result["predictions"])


@pytest.mark.parametrize(("k", "expected"), [(1, 1), (2, 2), (3, 3), (5, 3), (100, 3), (0, 1), (-4, 1)])
def test_top_k_is_clipped_to_the_classes(predictor, k, expected):
    [result] = predictor.predict([colour_input("red")], top_k=k)
    assert len(result["predictions"]) == expected
    assert result["predictions"][0]["label"] == "red"


def test_several_images_in_one_call_keep_their_order(predictor):
    images = [colour_input(c, seed=i) for i, c in enumerate(["red", "blue", "green", "red", "blue"])]
    results = predictor.predict(images, top_k=1)
    assert [r["filename"] for r in results] == [image.name for image in images]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "blue", "green", "red", "blue"]


def test_an_image_gives_the_same_probabilities_alone_or_in_a_batch(predictor):
    image = colour_input("orange", seed=3)
    alone = predictor.predict_pixels(predictor.load_pixels(image, max_pixels=10**7)[None])
    others = [colour_input(c, seed=i) for i, c in enumerate(["red", "blue", "green", "yellow", "pink"])]
    batch = np.stack([predictor.load_pixels(i, max_pixels=10**7) for i in [*others[:3], image, *others[3:]]])
    together = predictor.predict_pixels(batch)
    np.testing.assert_allclose(together[3], alone[0], atol=1e-6)


def test_predict_pixels_handles_more_than_max_batch(predictor):
    pixels = np.stack(
        [predictor.load_pixels(colour_input(c, seed=i), max_pixels=10**7) for i, c in enumerate(CLASSES * 7)]
    )  # 21 images, max_batch 8
    probabilities = predictor.predict_pixels(pixels)
    assert probabilities.shape == (21, 3)
    assert [CLASSES[i] for i in probabilities.argmax(axis=1)] == CLASSES * 7
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predict_pixels_of_nothing_is_an_empty_array(predictor):
    out = predictor.predict_pixels(np.zeros((0, 32, 32, 3), np.uint8))
    assert out.shape == (0, 3)


def test_warm_up_traces_once_so_no_batch_size_retraces(predictor):
    assert predictor.warm_sizes == (1, 2, 4, 8)
    traced = predictor._forward.experimental_get_tracing_count()
    assert traced == 1
    for count in (3, 1, 8, 5, 13, 7):
        predictor.predict_pixels(np.zeros((count, 32, 32, 3), np.uint8))
    assert predictor._forward.experimental_get_tracing_count() == traced


def test_each_batch_runs_at_its_own_size_not_padded(predictor, monkeypatch):
    sizes = []
    concrete = predictor._concrete
    monkeypatch.setattr(predictor, "_concrete", lambda pixels: sizes.append(int(pixels.shape[0])) or concrete(pixels))
    for count in (3, 5, 13):
        assert predictor.predict_pixels(np.zeros((count, 32, 32, 3), np.uint8)).shape == (count, 3)
    assert sizes == [3, 5, 8, 5]


def test_the_same_preprocessing_as_training_is_applied(predictor):
    # vgg16 preprocessing (BGR, mean-subtracted) is what makes the hand-set classifier right:
    # without it, every colour would look alike to the identity kernel.
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    pixels[..., 0] = 255
    assert CLASSES[int(predictor.predict_pixels(pixels).argmax())] == "red"


def test_a_corrupt_image_raises_bad_image_naming_the_file(predictor):
    data = make_image_bytes("red", 40)
    with pytest.raises(BadImage) as caught:
        predictor.predict([colour_input("red"), ImageInput("broken.png", data[: len(data) // 3])])
    assert "broken.png" in caught.value.message
    assert caught.value.status_code == 400


def test_a_text_file_raises_not_an_image_naming_the_file(predictor):
    with pytest.raises(NotAnImage) as caught:
        predictor.predict([ImageInput("notes.txt", b"just some words, not pixels")])
    assert "notes.txt" in caught.value.message
    assert caught.value.status_code == 415


def test_an_empty_file_raises_bad_image(predictor):
    with pytest.raises(BadImage, match="empty.jpg"):
        predictor.predict([ImageInput("empty.jpg", b"")])


def test_greyscale_rgba_and_other_sizes_work(predictor):
    grey = ImageInput("grey.png", png(Image.new("L", (50, 30), 128)))
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba_input = ImageInput("rgba.png", png(rgba))
    jpeg = colour_input("green", size=100, fmt="JPEG")
    results = predictor.predict([grey, rgba_input, jpeg], top_k=1)
    assert [r["filename"] for r in results] == ["grey.png", "rgba.png", "green-0.jpeg"]
    assert results[1]["predictions"][0]["label"] == "blue"
    assert results[2]["predictions"][0]["label"] == "green"


# --- PredictorCache -----------------------------------------------------------------------


@pytest.fixture
def three_models(tmp_path, factories):
    store = ModelStore(tmp_path / "models")
    ids = []
    for _ in range(3):
        result = factories.FakeResult(
            model=factories.colour_classifier(),
            spec=factories.tiny_spec(backbone="vgg16", alpha=None),
            classes=list(CLASSES),
        )
        ids.append(store.save(result)["id"])
    return store, ids


@pytest.fixture
def load_counter(monkeypatch):
    """Counts Predictor constructions by model id."""
    loads: dict[str, int] = {}
    real = cache_module.Predictor

    class CountingPredictor(real):
        def __init__(self, model_path, manifest, **kwargs):
            loads[manifest["id"]] = loads.get(manifest["id"], 0) + 1
            super().__init__(model_path, manifest, **kwargs)

    monkeypatch.setattr(cache_module, "Predictor", CountingPredictor)
    return loads


def test_cache_loads_a_model_once_when_asked_twice(three_models, load_counter):
    store, ids = three_models
    cache = PredictorCache(store, size=2, batching=BatchingOptions(max_batch=2))
    first = cache.get(ids[0])
    assert cache.get(ids[0]) is first
    assert load_counter == {ids[0]: 1}
    assert first.predictor.warm_sizes == (1, 2)
    assert first.predictor._concrete is not None  # warmed up on load
    assert first.batcher.max_batch == 2  # each loaded model comes with its own batcher


def test_cache_loads_once_under_concurrent_requests(three_models, load_counter):
    store, ids = three_models
    cache = PredictorCache(store, size=2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(ids[1]))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)  # a hang guard
    assert len(got) == 4 and all(p is got[0] for p in got)
    assert load_counter == {ids[1]: 1}


def test_cache_evicts_the_least_recently_used_beyond_its_size(three_models, load_counter):
    store, (a, b, c) = three_models
    cache = PredictorCache(store, size=2, batching=BatchingOptions(max_batch=1))
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)  # evicts b
    assert cache.loaded_ids() == [a, c]
    assert len(cache) == 2
    cache.get(b)  # loads b again, evicting a
    assert cache.loaded_ids() == [c, b]
    assert load_counter == {a: 1, b: 2, c: 1}


def test_cache_without_an_id_serves_the_newest_model(three_models):
    store, ids = three_models
    cache = PredictorCache(store, size=1, batching=BatchingOptions(max_batch=1))
    assert cache.get(None).model_id == ids[-1]


def test_cache_unknown_id_is_not_found(three_models, load_counter):
    store, _ = three_models
    cache = PredictorCache(store, size=2)
    with pytest.raises(NotFound):
        cache.get("nope")
    with pytest.raises(NotFound):
        cache.get("../x")
    assert load_counter == {} and len(cache) == 0


def test_cache_evict_forgets_a_model(three_models, load_counter):
    store, (a, _, _) = three_models
    cache = PredictorCache(store, size=2, batching=BatchingOptions(max_batch=1))
    cache.get(a)
    cache.evict(a)
    assert cache.loaded_ids() == []
    cache.get(a)
    assert load_counter == {a: 2}


def test_fresh_answers_from_memory_only_within_revalidate_s(three_models, monkeypatch):
    store, (a, b, _) = three_models
    clock = [1000.0]
    cache = PredictorCache(
        store, size=2, batching=BatchingOptions(max_batch=1), revalidate_s=1.0, clock=lambda: clock[0]
    )
    assert cache.fresh(a) is None  # never confirmed by the store
    loaded = cache.get(a)
    reads = []
    monkeypatch.setattr(store, "get", lambda model_id: reads.append(model_id))
    clock[0] += 0.9
    assert cache.fresh(a) is loaded and cache.fresh(b) is None and cache.fresh(None) is None
    clock[0] += 0.2  # past revalidate_s: the caller must ask the store again
    assert cache.fresh(a) is None
    assert reads == []


def test_fresh_newest_and_eviction(three_models, monkeypatch):
    store, ids = three_models
    cache = PredictorCache(store, size=2, batching=BatchingOptions(max_batch=1), revalidate_s=60.0)
    newest = cache.get(None)
    assert cache.fresh(None) is newest and newest.model_id == ids[-1]
    cache.evict(ids[-1])  # deleted through this process: no longer served from memory
    assert cache.fresh(None) is None and cache.fresh(ids[-1]) is None


def test_fresh_is_none_for_a_model_evicted_by_the_lru(three_models):
    store, (a, b, c) = three_models
    cache = PredictorCache(store, size=1, batching=BatchingOptions(max_batch=1), revalidate_s=60.0)
    cache.get(a)
    cache.get(b)  # evicts a
    assert cache.fresh(a) is None and cache.fresh(b) is not None


def test_a_change_through_one_process_makes_the_other_ask_the_store_at_once(three_models, tmp_path):
    """Two caches sharing one change counter (as the processes of `python -m app.server` do): a model
    deleted through one is no longer served from the other's memory, though its second is not over."""
    store, (a, b, _) = three_models
    here = PredictorCache(store, size=2, revalidate_s=60.0, changes=SharedChangeCounter(tmp_path / "changes"))
    there = PredictorCache(store, size=2, revalidate_s=60.0, changes=SharedChangeCounter(tmp_path / "changes"))
    there.get(a)
    there.get(b)
    assert there.fresh(a) is not None
    here.evict(a)
    assert there.fresh(a) is None and there.fresh(b) is None  # both asked again: any may have changed
    assert there.get(b).model_id == b and there.fresh(b) is not None  # confirmed again after the change


def test_a_change_while_the_store_is_read_leaves_that_confirmation_stale(three_models, tmp_path, monkeypatch):
    """The other process deletes the model after this one read the store and before it noted the read:
    the confirmation is not trusted, so the next request asks again."""
    store, (a, _, _) = three_models
    counter = SharedChangeCounter(tmp_path / "changes")
    cache = PredictorCache(store, size=2, revalidate_s=60.0, changes=counter)
    resolve = store.resolve

    def resolve_then_another_process_changes(ref):
        manifest = resolve(ref)
        SharedChangeCounter(tmp_path / "changes").bump()
        return manifest

    monkeypatch.setattr(store, "resolve", resolve_then_another_process_changes)
    cache.get(a)
    assert cache.fresh(a) is None


def test_the_shared_change_counter_counts_across_openings(tmp_path):
    first, second = SharedChangeCounter(tmp_path / "c"), SharedChangeCounter(tmp_path / "c")
    assert first.value() == second.value() == 0
    first.bump()
    second.bump()
    assert first.value() == second.value() == 2
    assert (tmp_path / "c").read_bytes() == (2).to_bytes(8, "little")


# --- MicroBatcher -------------------------------------------------------------------------


class EchoPredictor:
    """predict_pixels returns each image's first pixel as its 'probabilities', and counts calls."""

    model_id = "echo"

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def predict_pixels(self, pixels):
        self.calls.append(len(pixels))
        if self.fail:
            raise RuntimeError("the model fell over")
        return pixels[:, 0, 0, :].astype(np.float32)


def tagged(*tags: int) -> np.ndarray:
    pixels = np.zeros((len(tags), 2, 2, 3), np.uint8)
    pixels[:, 0, 0, 0] = tags
    return pixels


def test_concurrent_requests_share_one_forward_pass():
    echo = EchoPredictor()
    batcher = MicroBatcher(echo.predict_pixels, max_batch=32, max_wait_s=0.2)

    async def main():
        return await asyncio.gather(*(batcher.predict(tagged(*range(10 * i, 10 * i + 1 + i % 3))) for i in range(8)))

    results = asyncio.run(main())
    assert len(echo.calls) < 8
    assert sum(echo.calls) == sum(1 + i % 3 for i in range(8))
    for i, rows in enumerate(results):
        assert rows[:, 0].tolist() == list(range(10 * i, 10 * i + 1 + i % 3))


def test_batches_stop_growing_at_max_batch():
    echo = EchoPredictor()
    batcher = MicroBatcher(echo.predict_pixels, max_batch=3, max_wait_s=0.2)

    async def main():
        return await asyncio.gather(*(batcher.predict(tagged(i)) for i in range(7)))

    results = asyncio.run(main())
    assert all(size <= 3 for size in echo.calls)
    assert sum(echo.calls) == 7 and len(echo.calls) >= 3
    assert [int(rows[0, 0]) for rows in results] == list(range(7))


def test_a_real_predictor_behind_the_batcher_gives_each_caller_its_rows(predictor, monkeypatch):
    calls = []
    real = predictor.predict_pixels

    def counting(pixels):
        calls.append(len(pixels))
        return real(pixels)

    monkeypatch.setattr(predictor, "predict_pixels", counting)
    batcher = MicroBatcher(predictor.predict_pixels, max_batch=8, max_wait_s=0.2)
    colours = ["red", "blue", "green", "blue", "red"]
    pixels = [predictor.load_pixels(colour_input(c, seed=i), max_pixels=10**7)[None] for i, c in enumerate(colours)]

    async def main():
        return await asyncio.gather(*(batcher.predict(p) for p in pixels))

    results = asyncio.run(main())
    assert len(calls) < len(colours)
    assert [CLASSES[int(rows.argmax())] for rows in results] == colours
    assert all(rows.shape == (1, 3) for rows in results)


def test_a_failing_forward_pass_fails_every_caller_in_the_batch():
    batcher = MicroBatcher(EchoPredictor(fail=True).predict_pixels, max_batch=8, max_wait_s=0.1)

    async def main():
        return await asyncio.gather(*(batcher.predict(tagged(i)) for i in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "fell over" in str(r) for r in results)


def test_the_batcher_loop_ends_when_idle_and_restarts(monkeypatch):
    monkeypatch.setattr(batching, "IDLE_EXIT_S", 0.05)
    echo = EchoPredictor()
    batcher = MicroBatcher(echo.predict_pixels, max_batch=4, max_wait_s=0.01)

    async def main():
        first = await batcher.predict(tagged(1))
        await asyncio.wait_for(batcher._task, 120)  # the loop ends by itself once idle (120 s: a hang guard)
        idle_done = batcher._task.done()
        second = await batcher.predict(tagged(2))
        return first, idle_done, second

    first, idle_done, second = asyncio.run(main())
    assert idle_done
    assert int(first[0, 0]) == 1 and int(second[0, 0]) == 2


class GatedPredictor(EchoPredictor):
    """Each forward pass waits at a barrier of `parties` passes (so `parties` of them must be running at
    the same moment to go on), and records the most that ran at once. The barrier's timeout only
    guards against a hang: a batcher that never runs `parties` passes together breaks it."""

    def __init__(self, parties: int):
        super().__init__()
        self.lock = threading.Lock()
        self.running = self.most_running = 0
        self.barrier = threading.Barrier(parties, timeout=120)

    def predict_pixels(self, pixels):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.running -= 1
        return super().predict_pixels(pixels)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_up_to_concurrency_batches_run_at_once_and_each_caller_gets_its_rows(concurrency):
    gated = GatedPredictor(parties=concurrency)
    batcher = MicroBatcher(gated.predict_pixels, max_batch=2, max_wait_s=0.0, concurrency=concurrency)

    async def main():
        return await asyncio.gather(*(batcher.predict(tagged(i)) for i in range(12)))

    results = asyncio.run(main())  # 6 batches of 2: rounds of `concurrency` passes, each let through together
    assert gated.most_running == concurrency
    assert sum(gated.calls) == 12 and all(size <= 2 for size in gated.calls)
    assert [int(rows[0, 0]) for rows in results] == list(range(12))


def test_set_threads_per_op_applies_before_tensorflow_starts_and_refuses_after():
    """In a fresh interpreter: TensorFlow's thread pool is fixed by its first op."""
    import subprocess
    import sys

    script = (
        "import tensorflow as tf\n"
        "from finetune.ml.predictor import set_threads_per_op\n"
        "assert set_threads_per_op(1)\n"
        "tf.constant(1) + 1\n"
        "assert tf.config.threading.get_intra_op_parallelism_threads() == 1\n"
        "assert set_threads_per_op(1) and set_threads_per_op(0)\n"
        "assert not set_threads_per_op(3)\n"
        "assert tf.config.threading.get_intra_op_parallelism_threads() == 1\n"
        "print('ok')\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().endswith("ok")


def test_loading_and_warming_a_predictor_writes_no_file_to_tmpdir(saved_model, tmp_path):
    """A killed API must leave nothing in its TMPDIR (the upload spool): no autograph-generated module."""
    import subprocess
    import sys

    store, manifest = saved_model
    spool = tmp_path / "spool"
    spool.mkdir()
    script = (
        "import sys\nfrom pathlib import Path\nfrom finetune.ml.predictor import Predictor\nimport json\n"
        f"p = Predictor(Path({str(store.model_file(manifest['id']))!r}), json.loads({json.dumps(json.dumps(manifest))}))\n"
        "p.warm_up()\nimport os\nprint(sorted(os.listdir(os.environ['TMPDIR'])))\nos._exit(0)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(spool)},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]"


# --- input_scaling: the served model is fed as it was trained ---------------------------------


def scaled_model_store(tmp_path, factories, spec) -> tuple[ModelStore, dict]:
    store = ModelStore(tmp_path)
    manifest = store.save(factories.FakeResult(model=factories.colour_classifier(), spec=spec, classes=list(CLASSES)))
    return store, manifest


@pytest.mark.parametrize("scaling", ["backbone", "unit"])
@pytest.mark.parametrize("backbone", ["mobilenet", "vgg16"])
def test_the_predictor_feeds_the_model_with_the_specs_input_scaling(tmp_path, factories, backbone, scaling):
    from finetune.ml.backbones import get_backbone

    spec = factories.tiny_spec(backbone=backbone, alpha=0.25 if backbone == "mobilenet" else None)
    spec = spec.model_copy(update={"input_scaling": scaling})
    store, manifest = scaled_model_store(tmp_path, factories, spec)
    assert manifest["spec"]["input_scaling"] == scaling
    predictor = Predictor(store.model_file(manifest["id"]), manifest)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    pixels[..., 0] //= 4  # channels of different means: the hand-set classifier's logits then depend on the scale
    got = predictor.predict_pixels(pixels)

    def through(chosen: str) -> np.ndarray:
        preprocess = get_backbone(backbone).preprocess(chosen)
        return np.asarray(predictor.model(preprocess(pixels.astype(np.float32)), training=False))

    np.testing.assert_allclose(got, through(scaling), atol=1e-6)
    other = "unit" if scaling == "backbone" else "backbone"
    assert not np.allclose(got, through(other), atol=1e-4)


def test_a_manifest_from_before_input_scaling_is_served_with_the_backbones_preprocessing(tmp_path, factories):
    from finetune.ml.predictor import input_scaling_of

    store, manifest = scaled_model_store(tmp_path, factories, factories.tiny_spec(backbone="vgg16", alpha=None))
    del manifest["spec"]["input_scaling"]
    assert input_scaling_of(manifest) == "backbone"
    assert input_scaling_of({"id": "x"}) == "backbone"
    predictor = Predictor(store.model_file(manifest["id"]), manifest)
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    pixels[..., 0] = 255
    assert CLASSES[int(predictor.predict_pixels(pixels).argmax())] == "red"  # vgg16's BGR mean subtraction


@pytest.mark.slow
@pytest.mark.parametrize(("scaling", "batchnorm"), [("unit", "trainable"), ("backbone", "frozen")])
def test_the_served_model_agrees_with_trainings_own_evaluation(tmp_path, factories, scaling, batchnorm):
    """Trained with an input scaling, saved, served: the predictor's confusion matrix on the held-out
    images is the one training computed."""
    from finetune.ml.evaluation import evaluate_predictions
    from finetune.ml.pipeline import decode_dataset
    from finetune.ml.scan import scan_dataset, stratified_split
    from finetune.ml.training.recipe import train

    data = factories.make_dataset_dir(tmp_path / "data", classes=("red", "green", "blue"), per_class=6, size=40)
    spec = factories.tiny_spec(
        input_scaling=scaling, augmentation=None, finetune={"epochs": 1, "batchnorm": batchnorm}, warmup={"epochs": 2}
    )
    result = train(spec, dataset_dir=data)
    store = ModelStore(tmp_path / "models")
    manifest = store.save(result)
    assert manifest["spec"]["input_scaling"] == scaling
    assert manifest["spec"]["finetune"]["batchnorm"] == batchnorm
    decoded = decode_dataset(scan_dataset(data, probe=False), size=spec.image_size, max_pixels=10**8)
    _, held_out = stratified_split(decoded.labels, validation_split=spec.validation_split, seed=spec.seed)
    predictor = Predictor(store.model_file(manifest["id"]), manifest)
    predicted = predictor.predict_pixels(decoded.pixels[held_out]).argmax(axis=1)
    served = evaluate_predictions(decoded.labels[held_out], predicted, result.classes)
    assert served["confusion_matrix"] == result.metrics["confusion_matrix"]
