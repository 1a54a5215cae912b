"""Runs bench/load_test.py briefly against the live service: 16 clients on /predict and a 50 Hz poll
of a job training meanwhile. No request may fail. How many requests were served and the API's memory
are printed, not asserted: speed and memory belong to `make bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.reliability_support import assert_baseline_intact, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "load_test.py"
DURATION_S = float(os.environ.get("LOAD_TEST_SECONDS", "10"))
CONCURRENCY = 16


def test_predict_and_job_polling_under_load(live_service, client, baseline, tmp_path):
    out = tmp_path / "load.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--url",
        live_service.url,
        "--duration",
        str(DURATION_S),
        "--concurrency",
        str(CONCURRENCY),
        "--model-id",
        baseline.model["id"],
        "--dataset-id",
        baseline.dataset["id"],
        "--poll-hz",
        "50",
        "--api-pid",
        str(live_service.api.pid),
        "--json",
        str(out),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=DURATION_S + 600)  # a hang guard
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0, summary
    assert summary["concurrency"] == CONCURRENCY
    assert summary["predict"]["requests"] > 0, summary["predict"]
    polls = summary["job_poll"]
    assert polls["requests"] > 0, polls
    print(f"load: predict {summary['predict']}, job polls {polls}, API RSS {summary['rss_mb']} (not asserted)")
    job = wait_for_job(client, polls["job_id"], diagnostics=lambda: live_service.worker.log_tail(60))
    assert job["status"] == "succeeded", job
    assert_baseline_intact(client, baseline)
