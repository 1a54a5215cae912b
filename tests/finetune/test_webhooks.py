"""Webhooks below the API: which addresses are refused, the outbox written with a job's status change
(a real Redis), and one delivery attempt against a receiver on loopback (signature, retry, give-up)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from finetune.errors import InvalidSpec
from finetune.execution.webhooks import (
    WebhookTargetRefused,
    address_refusal,
    check_webhook_url,
    deliver,
    resolve_target,
)
from finetune.ml.spec import JobSpec
from finetune.settings import Settings
from finetune.stores.jobs import JobStore, job_key
from finetune.stores.webhooks import DUE_KEY, WebhookOutbox
from tests.webhook_support import TEST_WEBHOOK_SECRET, WebhookReceiver


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.5", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.10.20", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a public address"),
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_refusal(address, reason):
    assert address_refusal(address) == reason


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "169.254.10.20"])
def test_allow_private_lets_non_public_addresses_through(address):
    assert address_refusal(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_metadata_addresses_stay_refused_with_allow_private(address):
    assert address_refusal(address, allow_private=True) == "a cloud metadata address"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https"),
        ("http:///hook", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.0.0.7/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ],
)
def test_resolve_target_refuses(url, words):
    with pytest.raises(WebhookTargetRefused, match=words) as refused:
        resolve_target(url, allow_private=False)
    assert refused.value.status_code == 422


def test_resolve_target_keeps_the_checked_addresses_and_the_path():
    target = resolve_target("http://127.0.0.1:8123/a/b?x=1", allow_private=True)
    assert (target.scheme, target.host, target.port, target.path) == ("http", "127.0.0.1", 8123, "/a/b?x=1")
    assert target.addresses == ("127.0.0.1",)


def test_a_server_without_a_secret_refuses_webhook_urls():
    with pytest.raises(InvalidSpec, match="WEBHOOK_SECRET"):
        check_webhook_url(Settings(webhook_secret=None, webhook_allow_private=True), "http://127.0.0.1/hook")


@pytest.mark.parametrize("secret", ["hello", "whsec_c2hvcnQ=", "whsec_not*base64*at*all*but*long*enough*"])
def test_a_malformed_secret_is_refused_without_being_printed(secret):
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET must be") as error:
        Settings(webhook_secret=secret)
    assert secret not in str(error.value)


# --- the outbox, written with the job's status change --------------------------------------------


def settings_for(redis_url: str, **overrides) -> Settings:
    values = {
        "redis_url": redis_url,
        "webhook_secret": TEST_WEBHOOK_SECRET,
        "webhook_allow_private": True,
        "webhook_backoff_s": 0.5,
        **overrides,
    }
    return Settings(**values)


def job_spec(**fields) -> JobSpec:
    return JobSpec(dataset_id="ds1", backbone="mobilenet", alpha=0.25, weights="none", warmup={"epochs": 2}, **fields)


def queued_messages(jobs: JobStore) -> list:
    outbox = WebhookOutbox(jobs.redis)
    return [outbox.get(message_id) for message_id in jobs.redis.zrange(DUE_KEY, 0, -1)]


def test_a_final_status_queues_one_message_in_its_own_write(jobs):
    job = jobs.create(job_spec(webhook_url="http://127.0.0.1:9/hook"))
    jobs.update(job["id"], {"status": "running"})
    assert queued_messages(jobs) == []
    jobs.update(job["id"], {"status": "succeeded", "model_id": "m1"})
    jobs.update(job["id"], {"status": "succeeded"})  # already final: no second message
    [message] = queued_messages(jobs)
    body = json.loads(message.body)
    assert message.event == body["type"] == "job.succeeded"
    assert message.url == "http://127.0.0.1:9/hook" and message.record_key == job_key(job["id"])
    assert body["data"]["id"] == job["id"] and body["data"]["model_id"] == "m1"
    assert message.id.startswith("msg_")


def test_epoch_messages_only_when_asked(jobs):
    finals_only = jobs.create(job_spec(webhook_url="http://127.0.0.1:9/a"))
    with_epochs = jobs.create(job_spec(webhook_url="http://127.0.0.1:9/b", webhook_events=["epoch", "final"]))
    for job in (finals_only, with_epochs):
        jobs.update(job["id"], {"status": "running"})
        jobs.update(job["id"], {"history": [{"epoch": 1}], "epoch": 1})
        jobs.update(job["id"], {"batch": 3})  # not an epoch
        jobs.update(job["id"], {"status": "cancelled"})
    events = sorted((message.url, message.event) for message in queued_messages(jobs))
    assert events == [
        ("http://127.0.0.1:9/a", "job.cancelled"),
        ("http://127.0.0.1:9/b", "job.cancelled"),
        ("http://127.0.0.1:9/b", "job.epoch"),
    ]


def test_no_webhook_url_no_message(jobs):
    job = jobs.create(job_spec())
    jobs.update(job["id"], {"status": "failed"})
    assert queued_messages(jobs) == []


# --- one delivery attempt -----------------------------------------------------------------------


def failed_job_with_message(jobs: JobStore, url: str) -> tuple[dict, str]:
    job = jobs.create(job_spec(webhook_url=url))
    jobs.update(job["id"], {"status": "failed", "error": {"type": "Boom", "message": "it broke"}})
    [message_id] = WebhookOutbox(jobs.redis).claim_due(lease_s=60, limit=10)
    return job, message_id


def test_a_delivery_is_signed_and_recorded(jobs, redis_db):
    with WebhookReceiver() as receiver:
        job, message_id = failed_job_with_message(jobs, receiver.url)
        attempt = deliver(settings_for(redis_db), WebhookOutbox(jobs.redis), message_id)
        [received] = receiver.received
    payload = received.verified(TEST_WEBHOOK_SECRET)
    assert payload["type"] == "job.failed" and payload["data"]["error"]["type"] == "Boom"
    assert received.headers["webhook-id"] == message_id and received.path == "/hook"
    assert attempt.delivered and attempt.status_code == 200 and attempt.next_attempt_at is None
    [recorded] = jobs.get(job["id"])["webhook_deliveries"]
    assert recorded == attempt.model_dump(mode="json")
    assert jobs.redis.zcard(DUE_KEY) == 0  # delivered: out of the outbox


def test_a_refused_answer_is_retried_later_then_given_up(jobs, redis_db):
    with WebhookReceiver(statuses=[503, 500]) as receiver:
        job, message_id = failed_job_with_message(jobs, receiver.url)
        outbox = WebhookOutbox(jobs.redis)
        first = deliver(settings_for(redis_db), outbox, message_id)
        assert not first.delivered and first.status_code == 503 and first.next_attempt_at is not None
        assert jobs.redis.zscore(DUE_KEY, message_id) is not None  # still queued, for later
        # a retry budget already spent: this attempt is the last
        second = deliver(settings_for(redis_db, webhook_retry_for_s=0), outbox, message_id)
        assert [r.headers["webhook-id"] for r in receiver.received] == [message_id, message_id]
    assert (second.attempt, second.status_code, second.next_attempt_at) == (2, 500, None)
    recorded = jobs.get(job["id"])["webhook_deliveries"]
    assert [(a["attempt"], a["status_code"], a["delivered"]) for a in recorded] == [(1, 503, False), (2, 500, False)]
    assert jobs.redis.zcard(DUE_KEY) == 0


def test_an_unreachable_receiver_is_an_error_on_the_record(jobs, redis_db):
    with WebhookReceiver() as receiver:
        url = receiver.url
    job, message_id = failed_job_with_message(jobs, url)  # nothing listens there any more
    attempt = deliver(settings_for(redis_db), WebhookOutbox(jobs.redis), message_id)
    assert attempt.status_code is None and "ConnectionRefusedError" in attempt.error
    assert jobs.get(job["id"])["webhook_deliveries"][0]["error"] == attempt.error


def test_a_target_refused_at_delivery_is_not_retried(jobs, redis_db):
    job, message_id = failed_job_with_message(jobs, "http://127.0.0.1:9/hook")
    attempt = deliver(settings_for(redis_db, webhook_allow_private=False), WebhookOutbox(jobs.redis), message_id)
    assert "loopback" in attempt.error and attempt.next_attempt_at is None
    assert jobs.redis.zcard(DUE_KEY) == 0
