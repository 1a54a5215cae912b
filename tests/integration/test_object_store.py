"""MODEL_DIR and DATA_DIR on s3:// against a real S3 API (moto's server) on this machine."""

from __future__ import annotations

import sys
import time

import boto3
import httpx
import pytest

from finetune.launcher import ManagedProcess, free_port, http_status, start_api, start_worker
from tests.helpers import make_image_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY_JOB = {
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 8,
    "augmentation": None,
    "warmup": {"epochs": 1},
    "finetune": {"epochs": 1},
}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = ManagedProcess(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=log
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: http_status(f"{url}/moto-api/") is not None, timeout=60, what="moto server")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def s3_service(s3_server, service_env, redis_server, tmp_path_factory):
    """An API and a worker whose stores are buckets; Redis database 1 keeps its queue apart."""
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
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/1",
        "MODEL_DIR": "s3://models/store",
        "DATA_DIR": "s3://datasets/uploads",
        "CACHE_DIR": str(cache),
    }
    logs = tmp_path_factory.mktemp("s3logs")
    worker = start_worker(env={**env, "CACHE_DIR": str(cache / "worker")}, log_path=logs / "worker.log")
    port = free_port()
    api = start_api(env={**env, "CACHE_DIR": str(cache / "api")}, port=port, log_path=logs / "api.log")
    yield f"http://127.0.0.1:{port}", s3, (worker, api)
    api.stop()
    worker.stop()


def test_a_job_on_s3_stores_trains_lists_and_predicts(s3_service, tiny_dataset_zip):
    url, s3, processes = s3_service
    with httpx.Client(base_url=url, timeout=60) as client:
        upload = client.post("/datasets", files={"file": ("tiny.zip", tiny_dataset_zip.read_bytes())})
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
        dataset_keys = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets")["Contents"]]
        assert f"uploads/{dataset_id}/dataset.json" in dataset_keys
        assert any(key.startswith(f"uploads/{dataset_id}/images/red/") for key in dataset_keys)

        job = client.post("/jobs", json={"dataset_id": dataset_id, **TINY_JOB})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 180
        while (record := client.get(f"/jobs/{job.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job still {record['status']}; worker log:\n{processes[0].log_tail()}"
            time.sleep(0.5)
        assert record["status"] == "succeeded", record["error"]
        model_id = record["model_id"]

        model_keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]}
        assert {f"store/{model_id}/model.keras", f"store/{model_id}/manifest.json"} <= model_keys

        listed = client.get("/models").json()
        assert [m["id"] for m in listed["data"]] == [model_id]
        assert client.get(f"/models/{model_id}").json()["classes"] == ["blue", "red"]

        prediction = client.post(
            "/predict",
            data={"model_id": model_id, "top_k": "1"},
            files=[("file", ("red.png", make_image_bytes("red"), "image/png"))],
        )
        assert prediction.status_code == 200, prediction.text
        assert prediction.json()["results"][0]["predictions"][0]["label"] in ("red", "blue")


def test_a_model_without_its_manifest_is_never_listed(s3_service):
    url, s3, _ = s3_service
    s3.put_object(Bucket="models", Key="store/halfuploaded/model.keras", Body=b"partial")
    with httpx.Client(base_url=url, timeout=30) as client:
        assert "halfuploaded" not in [m["id"] for m in client.get("/models").json()["data"]]
        assert client.get("/models/halfuploaded").status_code == 404
