"""Batch predictions against real processes: a private stack (its own Redis, API and workers, since one
test SIGKILLs a worker) whose processes can reach a moto S3 server, with a model that learnt red/blue.

Chunks are small here (`chunk_size` 2 or 4) so a batch has many results parts to cancel between, kill
between, and resume from. No test asserts how fast anything happened; waits are hang guards."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import boto3
import httpx
import pytest

from tests.helpers import make_image_bytes, probabilities
from tests.integration.reliability_support import (
    FINAL,
    S3_CREDENTIALS,
    Stack,
    make_baseline,
    predict,
    wait_for,
)
from tests.webhook_support import TEST_WEBHOOK_SECRET, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 420
MANY = 1500  # images in the batches that are cancelled or killed mid-way: hundreds of 2-image parts


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server):
    stack = Stack(tmp_path_factory.mktemp("batches"))
    stack.env.update(S3_CREDENTIALS, AWS_ENDPOINT_URL=s3_server)
    stack.env.update(WEBHOOK_SECRET=TEST_WEBHOOK_SECRET, WEBHOOK_ALLOW_PRIVATE="true")  # receivers on loopback
    try:
        stack.start_worker()
        stack.start_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def baseline(stack, client, tiny_dataset_zip):
    return make_baseline(
        client, tiny_dataset_zip, data_dir=stack.data_dir, model_dir=stack.model_dir, diagnostics=stack.logs
    )


@pytest.fixture
def one_worker(stack):
    """Exactly one live worker before the test."""
    while len(stack.live_workers()) > 1:
        stack.live_workers()[-1].stop()
    if not stack.live_workers():
        stack.start_worker()
    return stack.live_workers()[0]


@pytest.fixture(scope="module")
def many_images_zip() -> bytes:
    return zip_of({f"set/{n // 100:02d}/img_{n:05d}.png": colour_image(n) for n in range(MANY)})


# --- helpers --------------------------------------------------------------------------------------


def colour_image(n: int) -> bytes:
    return make_image_bytes("red" if n % 2 else "blue", 40, seed=1000 + n)


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def post_archive(client: httpx.Client, data: bytes, **fields) -> httpx.Response:
    return client.post(
        "/batches",
        files={"file": ("photos.zip", data, "application/zip")},
        data={key: str(value) for key, value in fields.items()},
    )


def create_batch(client: httpx.Client, data: bytes, **fields) -> dict:
    response = post_archive(client, data, **fields)
    assert response.status_code == 202, response.text
    return response.json()


def get_batch(client: httpx.Client, batch_id: str) -> dict:
    response = client.get(f"/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_batch(client: httpx.Client, batch_id: str, until=None, *, stack=None, interval: float = 0.1) -> dict:
    until = until or (lambda batch: batch["status"] in FINAL)
    last: dict = {}

    def check():
        last.update(get_batch(client, batch_id))
        return dict(last) if until(last) else None

    def describe() -> str:
        return f"last seen: {json.dumps(last)}" + (f"\n{stack.logs()}" if stack else "")

    return wait_for(check, timeout=HANG_GUARD_S, interval=interval, what=f"batch {batch_id}", diagnostics=describe)


def results(client: httpx.Client, batch_id: str) -> list[dict]:
    response = client.get(f"/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def results_dir(stack, batch_id: str) -> Path:
    return stack.data_dir / ".batches" / batch_id / "results"


# --- an archive, with broken files ------------------------------------------------------------------


GOOD = {
    "top-red.png": make_image_bytes("red", 40, seed=501),
    "holiday/day1/blue.jpg": make_image_bytes("blue", 48, fmt="JPEG", seed=502),
    "holiday/day2/red.png": make_image_bytes("red", 40, seed=503),
    "holiday/blue.png": make_image_bytes("blue", 40, seed=504),
}
BROKEN = {
    "holiday/day1/truncated.png": make_image_bytes("red", 40, seed=505)[:60],
    "empty.jpg": b"",
    "notes/readme.txt": b"not an image at all",
}


@pytest.fixture(scope="module")
def archive_batch(client, baseline, stack):
    batch = create_batch(client, zip_of({**GOOD, **BROKEN}), model_id=baseline.model["id"], top_k=2, chunk_size=3)
    assert batch["status"] == "queued"
    assert batch["model_id"] == baseline.model["id"]
    assert batch["counts"]["total"] == len(GOOD) + len(BROKEN)
    assert batch["counts"]["chunks"] == 3
    done = wait_for_batch(client, batch["id"], stack=stack)
    assert done["status"] == "succeeded", done
    return done


def test_a_batch_over_an_archive_gives_one_row_per_file_and_the_labels_predict_gives(client, baseline, archive_batch):
    rows = results(client, archive_batch["id"])
    assert sorted(row["path"] for row in rows) == sorted([*GOOD, *BROKEN])
    assert archive_batch["counts"] | {"chunks_done": 3} == {
        "total": 7,
        "done": 7,
        "errors": 3,
        "chunks": 3,
        "chunks_done": 3,
    }
    assert archive_batch["progress"] == 1.0
    by_path = {row["path"]: row for row in rows}
    for path in BROKEN:
        row = by_path[path]
        assert row["error"]["type"] in ("BadImage", "NotAnImage"), row
        assert row["error"]["message"]
        assert (row["label"], row["predictions"]) == (None, [])
    answer = predict(client, baseline.model["id"], list(GOOD.items()))
    for expected in answer["results"]:
        row = by_path[expected["filename"]]
        assert row["error"] is None
        assert row["label"] == expected["label"]
        assert row["abstained"] is False
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in expected["predictions"]]
        for label, probability in probabilities(expected).items():
            assert probabilities(row)[label] == pytest.approx(probability, abs=1e-5)
    # the model learnt the colours: the file names say what each good image is
    assert {path: by_path[path]["label"] for path in GOOD} == {
        path: "red" if "red" in path else "blue" for path in GOOD
    }


def test_batch_results_as_csv(client, archive_batch):
    rows = {row["path"]: row for row in results(client, archive_batch["id"])}
    response = client.get(f"/batches/{archive_batch['id']}/results", params={"format": "csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert list(table[0]) == [
        "path",
        "label",
        "abstained",
        "error_type",
        "error_message",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
    ]
    assert sorted(line["path"] for line in table) == sorted(rows)
    for line in table:
        row = rows[line["path"]]
        assert line["label"] == (row["label"] or "")
        assert line["error_type"] == (row["error"] or {}).get("type", "")
        if row["predictions"]:
            assert line["label_1"] == row["predictions"][0]["label"]
            assert float(line["probability_1"]) == pytest.approx(row["predictions"][0]["probability"])
        else:
            assert line["label_1"] == ""


def test_batches_are_listed_and_found(client, archive_batch):
    listing = client.get("/batches").json()
    assert listing["count"] == len(listing["data"])
    assert archive_batch["id"] in [batch["id"] for batch in listing["data"]]
    succeeded = client.get("/batches", params={"status": "succeeded"}).json()["data"]
    assert archive_batch["id"] in [batch["id"] for batch in succeeded]
    assert client.post(f"/batches/{archive_batch['id']}/cancel").status_code == 409  # already final


# --- a dataset, an s3:// prefix -----------------------------------------------------------------------


def test_a_batch_over_a_dataset_labels_its_images(client, baseline, stack):
    response = client.post("/batches", json={"dataset_id": baseline.dataset["id"], "top_k": 1})
    assert response.status_code == 202, response.text
    done = wait_for_batch(client, response.json()["id"], stack=stack)
    assert done["status"] == "succeeded", done
    assert done["source"] == {"kind": "dataset", "dataset_id": baseline.dataset["id"], "url": None, "name": None}
    # the default model (the newest): the concrete id is recorded
    assert done["model_id"] == client.get("/models").json()["data"][0]["id"]
    rows = results(client, done["id"])
    assert len(rows) == baseline.dataset["num_images"] == done["counts"]["total"]
    assert {row["path"].split("/")[0] for row in rows} == set(baseline.dataset["classes"])
    assert all(row["error"] is None and len(row["predictions"]) == 1 for row in rows)


def test_a_batch_over_an_s3_prefix(client, baseline, stack, s3_server):
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **_boto_keys())
    s3.create_bucket(Bucket="photos")
    images = {
        f"2026/trip/{colour}_{n}.png": make_image_bytes(colour, 40, seed=700 + n)
        for n, colour in enumerate(["red", "blue", "red", "blue", "red"])
    }
    for key, data in images.items():
        s3.put_object(Bucket="photos", Key=key, Body=data)
    s3.put_object(Bucket="photos", Key="2026/trip/broken.png", Body=b"\x89PNG broken")
    s3.put_object(Bucket="photos", Key="elsewhere/blue.png", Body=make_image_bytes("blue"))
    response = client.post(
        "/batches", json={"source": "s3://photos/2026/trip", "model_id": baseline.model["id"], "chunk_size": 2}
    )
    assert response.status_code == 202, response.text
    done = wait_for_batch(client, response.json()["id"], stack=stack)
    assert done["status"] == "succeeded", done
    rows = {row["path"]: row for row in results(client, done["id"])}
    assert sorted(rows) == sorted([key.removeprefix("2026/trip/") for key in images] + ["broken.png"])
    assert rows["broken.png"]["error"] is not None
    for key in images:
        name = key.removeprefix("2026/trip/")
        assert rows[name]["label"] == name.split("_")[0], rows[name]
    missing = client.post("/batches", json={"source": "s3://photos/no/such/prefix"})
    assert missing.status_code == 404, missing.text


def _boto_keys() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# --- cancelled, killed ---------------------------------------------------------------------------------


def test_a_batch_cancelled_mid_way_keeps_the_parts_written_before(client, baseline, stack, one_worker, many_images_zip):
    batch = create_batch(client, many_images_zip, model_id=baseline.model["id"], chunk_size=2)
    running = wait_for_batch(
        client,
        batch["id"],
        lambda b: b["counts"]["chunks_done"] >= 1 or b["status"] in FINAL,
        interval=0.05,
        stack=stack,
    )
    assert running["status"] == "running", running
    assert client.get(f"/batches/{batch['id']}/results").status_code == 409  # not finished yet
    cancel = client.post(f"/batches/{batch['id']}/cancel")
    assert cancel.status_code == 200, cancel.text
    done = wait_for_batch(client, batch["id"], stack=stack)
    assert done["status"] == "cancelled", done
    written = done["counts"]["chunks_done"]
    assert 1 <= written < done["counts"]["chunks"]
    rows = results(client, batch["id"])
    assert len(rows) == done["counts"]["done"] == 2 * written
    # the parts written are the first chunks, in the order of the batch's files
    assert [row["path"] for row in rows] == [f"set/{n // 100:02d}/img_{n:05d}.png" for n in range(len(rows))]
    assert sorted(os.listdir(results_dir(stack, batch["id"]))) == [f"part-{i:05d}.jsonl" for i in range(written)]


def test_a_worker_killed_mid_batch_is_taken_over_without_redoing_written_parts(
    client, baseline, stack, one_worker, many_images_zip
):
    batch = create_batch(client, many_images_zip, model_id=baseline.model["id"], chunk_size=2)
    wait_for_batch(
        client,
        batch["id"],
        lambda b: b["counts"]["chunks_done"] >= 3 or b["status"] in FINAL,
        interval=0.05,
        stack=stack,
    )
    one_worker.kill()  # the worker and its batch process, at once
    folder = results_dir(stack, batch["id"])
    at_kill = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.glob("part-*.jsonl")}
    killed = get_batch(client, batch["id"])
    assert killed["status"] == "running", killed  # nobody has noticed yet
    assert 3 <= len(at_kill) < killed["counts"]["chunks"]

    stack.start_worker()
    done = wait_for_batch(client, batch["id"], stack=stack)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["resumed_at_chunk"] == len(at_kill)  # restarted at the first unwritten part, not from zero
    after = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.glob("part-*.jsonl")}
    assert {name: after[name] for name in at_kill} == at_kill  # the parts written before: untouched
    assert len(after) == done["counts"]["chunks"] == MANY // 2
    rows = results(client, batch["id"])
    assert [row["path"] for row in rows] == [f"set/{n // 100:02d}/img_{n:05d}.png" for n in range(MANY)]
    assert done["counts"]["done"] == MANY and done["counts"]["errors"] == 0
    assert all(row["label"] == ("red" if n % 2 else "blue") for n, row in enumerate(rows))


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_batch_requests_get_the_right_status_and_store_nothing(client, baseline, stack):
    before = client.get("/batches").json()["count"]
    image_zip = zip_of({"a.png": make_image_bytes("red")})
    model_id = baseline.model["id"]
    cases = {
        "no source (JSON)": (client.post("/batches", json={"top_k": 2}), 422),
        "no source (multipart)": (client.post("/batches", data={"top_k": "2"}, files={"x": ("x", b"")}), 422),
        "two sources (JSON)": (
            client.post("/batches", json={"dataset_id": baseline.dataset["id"], "source": "s3://photos/x"}),
            422,
        ),
        "two sources (multipart)": (post_archive(client, image_zip, dataset_id=baseline.dataset["id"]), 422),
        "unknown dataset": (client.post("/batches", json={"dataset_id": "0123456789abcdef"}), 404),
        "unknown model": (post_archive(client, image_zip, model_id="no-such-model"), 404),
        "unknown model (JSON)": (
            client.post("/batches", json={"dataset_id": baseline.dataset["id"], "model_id": "nosuchmodel"}),
            404,
        ),
        "top_k 0": (post_archive(client, image_zip, top_k=0), 422),
        "top_k not a number": (post_archive(client, image_zip, top_k="many"), 422),
        "top_k 0 (JSON)": (client.post("/batches", json={"dataset_id": baseline.dataset["id"], "top_k": 0}), 422),
        "threshold above 1": (post_archive(client, image_zip, threshold=1.5), 422),
        "thresholds of an unknown class": (post_archive(client, image_zip, thresholds='{"green": 0.5}'), 422),
        "a local path as source": (client.post("/batches", json={"source": "/etc"}), 422),
        "webhook not http(s)": (post_archive(client, image_zip, webhook_url="ftp://example.com/x"), 422),
        "not an archive": (post_archive(client, b"plain text, not a zip"), 400),
        "an archive escaping with ..": (post_archive(client, zip_of({"../evil.png": make_image_bytes("red")})), 400),
        "neither JSON nor multipart": (
            client.post("/batches", content=b"x", headers={"content-type": "text/plain"}),
            415,
        ),
    }
    for what, (response, expected) in cases.items():
        assert response.status_code == expected, (what, response.status_code, response.text)
        assert "detail" in response.json(), what
    assert client.get("/batches").json()["count"] == before
    for path in ("/batches/0123456789abcdef", "/batches/0123456789abcdef/results"):
        assert client.get(path).status_code == 404
    assert client.post("/batches/0123456789abcdef/cancel").status_code == 404
    assert client.get("/batches/..%2Fetc").status_code == 404
    with WebhookReceiver() as receiver:
        ok = post_archive(client, image_zip, model_id=model_id, webhook_url=receiver.url)
        assert ok.status_code == 202, ok.text
        assert ok.json()["webhook_url"] == receiver.url
        wait_for_batch(client, ok.json()["id"], stack=stack)
        (message,) = receiver.wait_for(1, timeout=HANG_GUARD_S)
    assert message.verified()["type"] == "batch.succeeded"
