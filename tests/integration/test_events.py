"""A job's server-sent events over real HTTP, on a job that stays quiet: a second API on the live
service's stores but on a Redis database of its own, where no worker listens, so its job stays queued
and nothing changes. The keep-alive comment arrives on the quiet stream; a client that goes away
frees its stream on the server (the open streams are counted in /metrics)."""

from __future__ import annotations

import contextlib
import json
import re

import httpx
import pytest
import redis

from tests.integration.reliability_support import submit_job, tiny_spec, upload_archive, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 120  # the keep-alive is due 15 s into a quiet stream


@pytest.fixture(scope="module")
def quiet_api(live_service, redis_db, tmp_path_factory):
    redis.Redis.from_url(redis_db).flushdb()
    with live_service.extra_api(tmp_path_factory.mktemp("events-api"), REDIS_URL=redis_db) as client:
        yield client
    redis.Redis.from_url(redis_db).flushdb()


@pytest.fixture(scope="module")
def quiet_job(quiet_api, tiny_dataset_zip) -> str:
    dataset = upload_archive(quiet_api, "tiny.zip", tiny_dataset_zip.read_bytes())
    assert dataset.status_code == 201, dataset.text
    job = submit_job(quiet_api, tiny_spec(dataset.json()["id"]))
    assert job["status"] == "queued"
    return job["id"]


def open_streams(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    found = re.search(r"^finetune_event_streams (\S+)$", text, re.MULTILINE)
    assert found, text[-2000:]
    return int(float(found.group(1)))


def test_a_quiet_job_gets_the_keep_alive_comment(quiet_api, quiet_job):
    lines = []
    with quiet_api.stream(
        "GET", f"/jobs/{quiet_job}/events", timeout=httpx.Timeout(10.0, read=HANG_GUARD_S)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                break
    assert lines[0] == "event: job" and lines[1].startswith("data: "), lines
    assert json.loads(lines[1][len("data: ") :])["id"] == quiet_job
    assert lines[2:] == ["", ": keep-alive"], lines  # nothing else while the job stays queued
    assert quiet_api.get(f"/jobs/{quiet_job}").json()["status"] == "queued"


def test_a_client_that_disconnects_frees_its_stream(quiet_api, quiet_job):
    """Three clients follow the quiet job; two hang up mid-stream: the server ends their streams (the
    count of open streams falls back) while the third goes on."""
    # this module's API serves no other stream (one an earlier test closed may take a moment to end)
    wait_for(lambda: open_streams(quiet_api) == 0, timeout=HANG_GUARD_S, what="no stream open")
    before = 0
    with contextlib.ExitStack() as everything:
        followers = []
        for _ in range(3):
            connection = contextlib.ExitStack()
            everything.enter_context(connection)
            client = connection.enter_context(
                httpx.Client(base_url=quiet_api.base_url, timeout=httpx.Timeout(10.0, read=HANG_GUARD_S))
            )
            response = connection.enter_context(client.stream("GET", f"/jobs/{quiet_job}/events"))
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines) == "event: job"  # the server's stream is running
            followers.append((connection, lines))
        assert open_streams(quiet_api) == before + 3
        for connection, _ in followers[:2]:
            connection.close()  # hang up mid-stream: the response and the client's connection closed
        wait_for(
            lambda: open_streams(quiet_api) == before + 1,
            timeout=HANG_GUARD_S,
            what="the server to end the streams of the clients that hung up",
        )
        assert next(followers[2][1]).startswith("data: ")  # the third stream still answers
    wait_for(lambda: open_streams(quiet_api) == before, timeout=HANG_GUARD_S, what="every stream ended")
