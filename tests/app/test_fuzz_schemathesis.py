"""Schemathesis against the app's own OpenAPI schema, in process (the ASGI app, this session's Redis on
a database of its own, a recording enqueue): uploads, /predict and the job routes with generated valid
and invalid input, a bounded number of examples each. No input may get a 5xx."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from finetune.settings import Settings  # noqa: E402
from tests.helpers import make_image_bytes  # noqa: E402

pytestmark = [pytest.mark.slow]

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))


def tiny_model_result():
    """A saved-model stand-in with the classifier's contract: 32x32x3 -> softmax over red, blue."""
    import keras

    from finetune.ml.spec import TrainingSpec

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    spec = TrainingSpec.model_validate(
        {
            "backbone": "vgg16",
            "weights": "none",
            "image_size": 32,
            "warmup": {"epochs": 1},
            "finetune": None,
            "augmentation": None,
        }
    )

    class Result:
        model = keras.Model(inputs, outputs)
        classes = ["blue", "red"]
        metrics = {"accuracy": 1.0}
        warmup_metrics = None
        history = [{"phase": "warmup", "epoch": 1, "loss": 0.5, "accuracy": 1.0, "seconds": 0.1}]
        timings = {"load_s": 0.0, "warmup_s": 0.1, "finetune_s": 0.0}
        skipped = []
        num_train, num_validation = 4, 2

    Result.spec = spec
    return Result()


def dataset_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for colour in ("red", "blue"):
            for n in range(3):
                archive.writestr(f"{colour}/{n}.png", make_image_bytes(colour, 32, seed=n))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fuzz_app(redis_db, tmp_path_factory):
    from app.main import create_app
    from finetune.stores.jobs import JobStore
    from finetune.stores.models import ModelStore

    root = tmp_path_factory.mktemp("fuzz")
    redis_url = redis_db  # the session's Redis, a database no other module reads
    JobStore.from_url(redis_url).redis.flushdb()
    settings_ = Settings(
        redis_url=redis_url,
        model_dir=str(root / "models"),
        data_dir=str(root / "data"),
        cache_dir=str(root / "cache"),
        max_upload_mb=4,
        max_image_pixels=4_000_000,
        archive_max_files=50,
    )
    manifest = ModelStore(settings_.model_dir, cache_dir=settings_.cache_dir).save(tiny_model_result())
    enqueued: list[str] = []
    app = create_app(settings_, enqueue=enqueued.append, enqueue_batch=lambda batch_id: None)
    archive = root / "seed.zip"
    archive.write_bytes(dataset_archive())
    dataset = app.state.service.datasets.create_from_archive(archive, name="seed")
    app.state.fuzz = {"dataset": dataset, "model": manifest, "enqueued": enqueued, "calls": {}}
    yield app
    JobStore.from_url(redis_url).redis.flushdb()


def openapi_document() -> dict:
    """The app's own OpenAPI document, from an app built only for it (the schema does not depend on the
    settings). Built at import, as parametrizing needs it at collection time."""
    import tempfile

    from app.main import create_app

    with tempfile.TemporaryDirectory(prefix="fuzz-schema-") as root:
        app = create_app(
            Settings(
                redis_url="redis://127.0.0.1:9/0", model_dir=f"{root}/m", data_dir=f"{root}/d", cache_dir=f"{root}/c"
            ),
            enqueue=lambda job_id: None,
            enqueue_batch=lambda batch_id: None,
        )
        return app.openapi()


schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(max_examples=MAX_EXAMPLES)
schema = (
    schema.include(path_regex=r"^/(datasets|predict|jobs|batches)")
    .exclude(path_regex=r"/events$")  # a server-sent event stream: it ends only when its job does
    .exclude(method="DELETE")
)


FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def with_real_ids(case, fuzz_app) -> None:
    """About half the generated ids are swapped for real ones (the seed dataset and model, a job made
    earlier), so generated specs reach the queue and generated paths reach the real dataset's files."""
    seed = fuzz_app.state.fuzz
    real = {
        "dataset_id": seed["dataset"]["id"],
        "model_id": seed["model"]["id"],
        "job_id": seed["enqueued"][-1] if seed["enqueued"] else None,
    }
    for values in (case.body if isinstance(case.body, dict) else None, case.path_parameters):
        for key, value in (values or {}).items():
            if key in real and real[key] and isinstance(value, str) and len(value) % 2 == 0:
                values[key] = real[key]


def count(calls: dict, case, response) -> None:
    counts = calls.setdefault(f"{case.method} {case.path}", {})
    counts[response.status_code] = counts.get(response.status_code, 0) + 1


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_input_gets_a_server_error(case, fuzz_app):
    with_real_ids(case, fuzz_app)
    response = case.call_and_validate(app=fuzz_app, checks=[not_a_server_error])
    count(fuzz_app.state.fuzz["calls"], case, response)


def test_the_seed_dataset_and_model_are_untouched_by_fuzzing(fuzz_app):
    """Fuzzes every operation once more here (so this test needs no other to have run), then: what was
    there before is listed and predicts the same."""
    seed = fuzz_app.state.fuzz
    calls: dict = {}

    @given(case=schema.as_strategy())
    @settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES * 2)
    def fuzz(case):
        with_real_ids(case, fuzz_app)
        response = case.call(app=fuzz_app)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
        count(calls, case, response)

    fuzz()
    print(f"fuzzed: {sum(sum(c.values()) for c in calls.values())} requests; by operation and status: {calls}")
    for operation in ("POST /datasets", "POST /predict", "POST /jobs"):
        assert sum(calls.get(operation, {}).values()) >= 1, (operation, calls)
    # the loaded predictor's micro-batcher lives on the event loop of the fuzzing client: load afresh here
    fuzz_app.state.service.predictors.evict(seed["model"]["id"])
    image = make_image_bytes("red", 32)
    model = {"model_id": seed["model"]["id"]}

    async def check():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fuzz_app), base_url="http://fuzz") as client:
            assert (await client.get(f"/datasets/{seed['dataset']['id']}")).json() == seed["dataset"]
            assert (await client.get(f"/models/{seed['model']['id']}")).json()["id"] == seed["model"]["id"]
            return [await client.post("/predict", data=model, files=[("file", ("a.png", image))]) for _ in range(2)]

    first, second = asyncio.run(check())
    assert first.status_code == 200 and first.json() == second.json()
    probabilities = [p["probability"] for p in first.json()["results"][0]["predictions"]]
    assert np.isclose(sum(probabilities), 1.0, atol=1e-4)
    data_dir = fuzz_app.state.settings.data_dir
    batches = ".batches"  # the default batch store (BATCH_DIR): batches fuzzed into being, never a dataset
    assert sorted(set(os.listdir(data_dir)) - {batches}) == [seed["dataset"]["id"]], os.listdir(data_dir)
