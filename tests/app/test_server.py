"""`python -m app.server`: its defaults, the cores shared out among its processes, and the folders of
servers that were killed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app import server
from finetune.ml.devices import usable_cores
from finetune.settings import Settings, get_settings


@pytest.fixture
def fresh_settings(monkeypatch):
    for name in ("PORT", "API_WORKERS", "PREDICT_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_server_listens_everywhere_on_port_and_runs_api_workers(fresh_settings):
    fresh_settings.setenv("PORT", "8123")
    fresh_settings.setenv("API_WORKERS", "3")
    args = server.parse_args([])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 8123, 3)
    assert server.parse_args(["--workers", "1", "--port", "9000"]).workers == 1


def test_workers_below_one_are_refused(fresh_settings):
    with pytest.raises(SystemExit) as refused:
        server.parse_args(["--workers", "0"])
    assert refused.value.code == 2


def test_each_api_process_runs_its_share_of_the_cores_as_forward_passes(fresh_settings):
    cores = usable_cores()
    assert Settings().api_workers == cores
    assert Settings(api_workers=1).predict_concurrency == cores
    assert Settings(api_workers=cores).predict_concurrency == 1
    assert Settings(api_workers=cores + 1).predict_concurrency == 1  # at least one
    assert Settings(api_workers=2, predict_concurrency=3).predict_concurrency == 3  # given: kept


def test_folders_of_killed_servers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"{int(dead.stdout)}-abc"
    live = tmp_path / f"{os.getpid()}-def"
    other = tmp_path / "notes-1"
    for folder in (killed, live, other):
        (folder / "metrics").mkdir(parents=True)
    server.remove_dead_servers_folders(tmp_path)
    assert not killed.exists()
    assert live.exists() and other.exists()
