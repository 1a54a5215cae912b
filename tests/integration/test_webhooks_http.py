"""Webhooks through the real processes: the live service (API, worker, Redis; WEBHOOK_SECRET set and
WEBHOOK_ALLOW_PRIVATE=true, see tests/conftest.py) POSTs to receivers on loopback run by the test.
A job's epochs and its final status arrive signed (checked with the `standardwebhooks` package); a
receiver that fails first is retried, each attempt on the job's `webhook_deliveries`; a second API
started without WEBHOOK_ALLOW_PRIVATE refuses private targets, and any API refuses non-http(s) ones.
Every process sharing a Redis must share the webhook settings: any of them may deliver a message."""

from __future__ import annotations

import pytest
import redis

from tests.helpers import learnable_spec
from tests.integration.reliability_support import (
    FINAL,
    get_job,
    submit_job,
    upload_archive,
    wait_for,
    wait_for_job,
)
from tests.webhook_support import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELIVERY_GUARD_S = 120  # hang guard: a delivery is due within a second or two of the event


@pytest.fixture(scope="module")
def dataset_id(client, tiny_dataset_zip) -> str:
    response = upload_archive(client, "webhooks.zip", tiny_dataset_zip.read_bytes())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_epochs_and_the_final_status_arrive_signed(client, dataset_id, live_service):
    with WebhookReceiver() as receiver:
        spec = learnable_spec(dataset_id, warmup={"epochs": 2, "optimizer": "adam", "learning_rate": 0.01})
        job = submit_job(client, {**spec, "webhook_url": receiver.url, "webhook_events": ["final", "epoch"]})
        done = wait_for_job(client, job["id"], diagnostics=lambda: live_service.worker.log_tail(40))
        assert done["status"] == "succeeded", done["error"]
        expected = len(done["history"]) + 1  # one per epoch, then the final status
        received = receiver.wait_for(expected, timeout=DELIVERY_GUARD_S)
    payloads = [message.verified() for message in received]
    assert sorted(payload["type"] for payload in payloads) == ["job.epoch"] * len(done["history"]) + ["job.succeeded"]
    assert all(payload["data"]["id"] == job["id"] for payload in payloads)
    final = next(payload for payload in payloads if payload["type"] == "job.succeeded")
    assert final["data"]["status"] == "succeeded" and final["data"]["model_id"] == done["model_id"]
    assert len({message.headers["webhook-id"] for message in received}) == expected  # one message per event

    def all_recorded():
        deliveries = get_job(client, job["id"])["webhook_deliveries"]
        return deliveries if len(deliveries) == expected else None

    deliveries = wait_for(all_recorded, timeout=DELIVERY_GUARD_S, what="every delivery recorded on the job")
    assert all(d["delivered"] and d["status_code"] == 200 and d["attempt"] == 1 for d in deliveries)
    assert {d["webhook_id"] for d in deliveries} == {message.headers["webhook-id"] for message in received}


def test_a_failing_receiver_is_retried_and_each_attempt_recorded(client, dataset_id):
    with WebhookReceiver(statuses=[500]) as receiver:
        job = submit_job(client, {**learnable_spec(dataset_id), "webhook_url": receiver.url})
        client.post(f"/jobs/{job['id']}/cancel")  # 409 if it ended first: any final status is told
        done = wait_for_job(client, job["id"])
        assert done["status"] in FINAL
        first, second = receiver.wait_for(2, timeout=DELIVERY_GUARD_S)[:2]

        def both_recorded():
            deliveries = get_job(client, job["id"])["webhook_deliveries"]
            return deliveries if len(deliveries) == 2 else None

        deliveries = wait_for(both_recorded, timeout=DELIVERY_GUARD_S, what="two attempts recorded on the job")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same message, retried
    assert first.verified() == second.verified()  # each attempt signed (its own timestamp), same body
    assert second.verified()["type"] == f"job.{done['status']}"
    assert [(d["attempt"], d["status_code"], d["delivered"]) for d in deliveries] == [(1, 500, False), (2, 200, True)]
    assert deliveries[0]["next_attempt_at"] is not None and deliveries[1]["next_attempt_at"] is None
    assert len(receiver.received) == 2  # delivered: no third attempt


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "no-scheme"])
def test_a_non_http_target_is_refused(client, dataset_id, url):
    response = client.post("/jobs", json={**learnable_spec(dataset_id), "webhook_url": url})
    assert response.status_code == 422, response.text
    assert "http or https" in response.json()["detail"]


@pytest.fixture(scope="module")
def strict_api(live_service, redis_db, tmp_path_factory):
    """A second API on the live service's stores without WEBHOOK_ALLOW_PRIVATE, on a Redis database of its
    own: its webhook dispatcher must not take the live service's messages (it would refuse their loopback
    receivers)."""
    redis.Redis.from_url(redis_db).flushdb()
    log_dir = tmp_path_factory.mktemp("strict-webhooks-api")
    with live_service.extra_api(log_dir, REDIS_URL=redis_db, WEBHOOK_ALLOW_PRIVATE="false") as api:
        yield api
    redis.Redis.from_url(redis_db).flushdb()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
    ],
)
def test_a_private_target_is_refused_without_the_setting(strict_api, dataset_id, url, reason):
    before = {job["id"] for job in strict_api.get("/jobs").json()["data"]}
    response = strict_api.post("/jobs", json={**learnable_spec(dataset_id), "webhook_url": url})
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert {job["id"] for job in strict_api.get("/jobs").json()["data"]} == before  # nothing stored


def test_a_batch_tells_its_final_status_signed(client, dataset_id, live_service):
    job = submit_job(client, learnable_spec(dataset_id))
    trained = wait_for_job(client, job["id"], diagnostics=lambda: live_service.worker.log_tail(40))
    assert trained["status"] == "succeeded", trained["error"]
    with WebhookReceiver() as receiver:
        body = {"dataset_id": dataset_id, "model_id": trained["model_id"], "webhook_url": receiver.url}
        response = client.post("/batches", json=body)
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]
        (message,) = receiver.wait_for(1, timeout=DELIVERY_GUARD_S)

        def recorded():
            batch = client.get(f"/batches/{batch_id}").json()
            return batch if batch["webhook_deliveries"] else None

        batch = wait_for(recorded, timeout=DELIVERY_GUARD_S, what="the delivery recorded on the batch")
    payload = message.verified()
    assert payload["type"] == "batch.succeeded" and batch["status"] == "succeeded"
    assert payload["data"]["id"] == batch_id and payload["data"]["counts"]["done"] == batch["counts"]["total"]
    (delivery,) = batch["webhook_deliveries"]
    assert delivery["delivered"] and delivery["status_code"] == 200
    assert delivery["webhook_id"] == message.headers["webhook-id"]
