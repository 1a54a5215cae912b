"""Access control over real HTTP: a second API process on the session's stores with API_KEYS and
CORS_ORIGINS set, next to the open `live_service` API (no keys, CORS off)."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from tests.helpers import assert_same_probabilities, top_label
from tests.integration.reliability_support import (
    PROBE_COLOURS,
    assert_baseline_intact,
    predict,
    tiny_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = ("alpha-7d1e5c0f93b2a4e8-SECRET", "beta-0c9b8a7f6e5d4c3b-SECRET")
WRONG_KEYS = (
    "alpha-7d1e5c0f93b2a4e8-SECRE",
    "alpha-7d1e5c0f93b2a4e8-SECRETX",
    "ALPHA-7D1E5C0F93B2A4E8-SECRET",
    "Bearer",
    "wrong-key-2f4e6a8c0b1d3f5e",
)
ORIGIN = "https://dashboard.example.org"
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz")}
WARNING = "API_KEYS is not set"


@pytest.fixture(scope="module")
def open_client(client):
    """The shared live service runs without API_KEYS."""
    return client


@pytest.fixture(scope="module")
def secured(live_service, tmp_path_factory, baseline):
    """The API with two keys and one allowed origin, on the same Redis and stores as `live_service`."""
    with live_service.extra_api(
        tmp_path_factory.mktemp("secured-api"), API_KEYS=",".join(KEYS), CORS_ORIGINS=ORIGIN
    ) as http:
        yield http


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def operations(client: httpx.Client, baseline) -> list[tuple[str, str]]:
    """Every operation in the API's own OpenAPI schema, path parameters filled in."""
    schema = client.get("/openapi.json").json()
    filled = {
        "dataset_id": baseline.dataset["id"],
        "job_id": baseline.job["id"],
        "model_id": baseline.model["id"],
        "name": "mobilenet",
        "path": "red/red_000.png",
        "format": "onnx",
        "batch_id": "0123456789abcdef",
    }
    result = []
    for path, methods in schema["paths"].items():
        concrete = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: filled[m.group(1)], path)
        for method in methods:
            result.append((method.upper(), concrete))
    return result


def test_every_route_but_health_and_readiness_needs_a_key(secured, baseline):
    ops = operations(secured, baseline)
    assert len(ops) >= 15, ops
    checked = 0
    for method, path in ops:
        template_open = (method, path) in OPEN_ROUTES
        response = secured.request(method, path)
        if template_open:
            assert response.status_code == 200, (method, path, response.text)
            continue
        assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
        assert "API key" in response.json()["detail"]
        for wrong in WRONG_KEYS:
            for headers in (bearer(wrong), {"X-API-Key": wrong}, {"Authorization": f"Basic {wrong}"}):
                response = secured.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.status_code)
        checked += 1
    assert checked == len(ops) - len(OPEN_ROUTES)
    # the key check runs before the body is parsed: a valid-looking job without a key is not created
    before = secured.get("/jobs", headers=bearer(KEYS[0])).json()["count"]
    assert secured.post("/jobs", json=tiny_spec(baseline.dataset["id"])).status_code == 401
    assert secured.get("/jobs", headers=bearer(KEYS[0])).json()["count"] == before
    assert_baseline_intact(secured, baseline, **bearer(KEYS[0]))


def test_bearer_and_x_api_key_both_work_with_either_key(secured, baseline):
    for key in KEYS:
        for headers in (bearer(key), {"Authorization": f"bearer {key}"}, {"X-API-Key": key}):
            response = secured.get("/datasets", headers=headers)
            assert response.status_code == 200, (headers, response.text)
            assert baseline.dataset["id"] in [d["id"] for d in response.json()["data"]]
            assert secured.get("/metrics", headers=headers).status_code == 200
        result = predict(secured, baseline.model["id"], baseline.images, **{"X-API-Key": key})
        assert result["model_id"] == baseline.model["id"]
        # the probe images' own classes, with the probabilities the Python Predictor gave (see make_baseline)
        assert [top_label(r) for r in result["results"]] == list(PROBE_COLOURS), result
        assert_same_probabilities(result["results"], baseline.predictions["results"])
    assert_baseline_intact(secured, baseline, **{"X-API-Key": KEYS[1]})


def test_no_key_ever_reaches_the_api_log(secured, baseline):
    for key in (*KEYS, *WRONG_KEYS):
        secured.get("/datasets", headers=bearer(key))
        secured.get(f"/models/{baseline.model['id']}", headers={"X-API-Key": key})
        secured.post("/predict", headers=bearer(key), files=[("file", ("a.png", b"not an image", "image/png"))])
    secured.get("/no-such-route", headers=bearer(KEYS[0]))
    log = secured.process.output()
    assert "GET /datasets" in log, log[-2000:]  # the access log is there, so the check below means something
    for key in (*KEYS, *(k for k in WRONG_KEYS if len(k.strip()) > 8)):
        assert key not in log and key.lower() not in log.lower()
    assert WARNING not in log
    assert_baseline_intact(secured, baseline, **bearer(KEYS[1]))


def test_an_api_without_keys_says_so_loudly_at_start_up(live_service, open_client, baseline):
    log = live_service.api.output()
    assert WARNING in log, log[-2000:]
    line = next(line for line in log.splitlines() if WARNING in line)
    assert line.startswith("***") and line.rstrip().endswith("***")
    assert open_client.get("/datasets").status_code == 200
    assert_baseline_intact(open_client, baseline)


def test_cors_is_off_by_default(open_client, baseline):
    response = open_client.get("/datasets", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = open_client.options(
        "/datasets",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (400, 401, 404, 405)
    assert_baseline_intact(open_client, baseline)


def test_cors_allows_only_the_configured_origin(secured, baseline):
    preflight = secured.options(
        "/predict",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text  # a preflight carries no key and must not need one
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = secured.get("/datasets", headers={"Origin": ORIGIN, **bearer(KEYS[0])})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    for other in ("https://evil.example.org", "null", "https://dashboard.example.org.evil.net"):
        response = secured.get("/datasets", headers={"Origin": other, **bearer(KEYS[0])})
        assert "access-control-allow-origin" not in response.headers, other
        preflight = secured.options("/datasets", headers={"Origin": other, "Access-Control-Request-Method": "GET"})
        assert preflight.headers.get("access-control-allow-origin") in (None, ""), other
    assert_baseline_intact(secured, baseline, **bearer(KEYS[0]))


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(secured, baseline):
    """Without a key the API answers 401 instead of reading (and spooling) a large body first: only
    64 KiB of the 200 MB announced are ever sent, so any answer at all came before the body was read.
    (The socket's 120 s timeout only guards against a hang.)"""
    port = int(str(secured.base_url).rsplit(":", 1)[1].rstrip("/"))
    head = (
        f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 209715200\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head.encode() + b"x" * 65536)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert_baseline_intact(secured, baseline, **bearer(KEYS[0]))
