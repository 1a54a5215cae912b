"""Fixtures of the modules that drive the shared live service (fault tests start a stack of their own)."""

from __future__ import annotations

import sys

import httpx
import pytest

from finetune.launcher import ManagedProcess, free_port, http_status
from tests.integration.reliability_support import make_baseline


@pytest.fixture(scope="module")
def client(live_service):
    with httpx.Client(base_url=live_service.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def baseline(client, live_service, tiny_dataset_zip):
    """A dataset and a model made before the module's tests, to check afterwards that they are untouched."""
    return make_baseline(
        client,
        tiny_dataset_zip,
        data_dir=live_service.data_dir,
        model_dir=live_service.model_dir,
        diagnostics=lambda: live_service.worker.log_tail(60),
    )


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server on a free loopback port (its URL): an object store on this machine."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = ManagedProcess(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=log
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: http_status(f"{url}/moto-api/") is not None, timeout=120, what="moto server")
    yield url
    process.stop()
