"""MODEL_DIR and DATA_DIR on s3:// against a real S3 API (moto's server) on this machine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import httpx
import pytest

from finetune.ids import new_id
from finetune.launcher import free_port, start_api, start_worker
from tests.helpers import assert_same_probabilities, learnable_spec, make_image_bytes, predictor_results, top_label
from tests.integration.reliability_support import (
    PROBE_COLOURS,
    assert_deletion_is_seen,
    predict,
    predict_status,
    probe_images,
    wait_for_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_service(s3_server, service_env, redis_db, tmp_path_factory):
    """An API and a worker whose stores are buckets; a Redis database of its own keeps its queue apart."""
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"},
    )
    for bucket in ("models", "datasets"):
        s3.create_bucket(Bucket=bucket)
    cache = tmp_path_factory.mktemp("s3cache")
    env = {
        **service_env,
        **credentials,
        "REDIS_URL": redis_db,
        "MODEL_DIR": "s3://models/store",
        "DATA_DIR": "s3://datasets/uploads",
        "CACHE_DIR": str(cache),
    }
    logs = tmp_path_factory.mktemp("s3logs")
    worker = start_worker(env={**env, "CACHE_DIR": str(cache / "worker")}, log_path=logs / "worker.log")
    port = free_port()
    api = start_api(env={**env, "CACHE_DIR": str(cache / "api")}, port=port, log_path=logs / "api.log")
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", s3=s3, worker=worker, api=api, env=env, logs=logs)
    api.stop()
    worker.stop()


@pytest.fixture(scope="module")
def client(s3_service):
    with httpx.Client(base_url=s3_service.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def s3_model(s3_service, client, tiny_dataset_zip):
    """The tiny red/blue dataset uploaded and a model that learns it (both phases: the finetune's
    checkpoints go to the local cache when the store is remote), all on S3."""
    upload = client.post("/datasets", files={"file": ("tiny.zip", tiny_dataset_zip.read_bytes())})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    job = client.post("/jobs", json=learnable_spec(dataset_id, finetune={"epochs": 1}))
    assert job.status_code == 202, job.text
    record = wait_for_job(client, job.json()["id"], diagnostics=lambda: s3_service.worker.log_tail(60))
    assert record["status"] == "succeeded", record["error"]
    return SimpleNamespace(dataset_id=dataset_id, model_id=record["model_id"])


def test_a_job_on_s3_stores_trains_lists_and_predicts(s3_service, client, s3_model, tmp_path):
    s3, dataset_id, model_id = s3_service.s3, s3_model.dataset_id, s3_model.model_id
    dataset_keys = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets")["Contents"]]
    assert f"uploads/{dataset_id}/dataset.json" in dataset_keys
    assert any(key.startswith(f"uploads/{dataset_id}/images/red/") for key in dataset_keys)

    model_keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]}
    assert {f"store/{model_id}/model.keras", f"store/{model_id}/manifest.json"} <= model_keys

    assert model_id in [m["id"] for m in client.get("/models").json()["data"]]
    manifest = client.get(f"/models/{model_id}").json()
    assert manifest["classes"] == ["blue", "red"]

    images = probe_images()
    answer = predict(client, model_id, images)
    assert answer["model_id"] == model_id
    assert [top_label(result) for result in answer["results"]] == list(PROBE_COLOURS), answer
    # the same probabilities as the Python Predictor with the model file the API serves
    download = client.get(f"/models/{model_id}/download")
    assert download.status_code == 200
    (tmp_path / "model.keras").write_bytes(download.content)
    assert_same_probabilities(answer["results"], predictor_results(tmp_path / "model.keras", manifest, images))


def test_a_model_deleted_on_s3_is_404_at_once_here_and_soon_in_a_second_api(s3_service, client, s3_model):
    """A copy of the trained model under a new id (objects copied in the bucket), deleted through one API."""
    s3, source = s3_service.s3, s3_model.model_id
    copy_id = new_id()
    manifest = json.loads(s3.get_object(Bucket="models", Key=f"store/{source}/manifest.json")["Body"].read())
    s3.copy_object(
        Bucket="models",
        Key=f"store/{copy_id}/model.keras",
        CopySource={"Bucket": "models", "Key": f"store/{source}/model.keras"},
    )
    s3.put_object(Bucket="models", Key=f"store/{copy_id}/manifest.json", Body=json.dumps({**manifest, "id": copy_id}))
    port = free_port()
    second = start_api(
        env={**s3_service.env, "CACHE_DIR": str(s3_service.logs / "second-api-cache")},
        port=port,
        log_path=s3_service.logs / "second-api.log",
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as other:
            assert_deletion_is_seen(client, other, copy_id, make_image_bytes("red"))
    finally:
        second.stop()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models").get("Contents", [])}
    assert not [key for key in keys if copy_id in key], keys
    assert predict_status(client, source, make_image_bytes("red")) == 200  # the original is untouched


def test_a_model_without_its_manifest_is_never_listed(s3_service, client):
    s3_service.s3.put_object(Bucket="models", Key="store/halfuploaded/model.keras", Body=b"partial")
    assert "halfuploaded" not in [m["id"] for m in client.get("/models").json()["data"]]
    assert client.get("/models/halfuploaded").status_code == 404
