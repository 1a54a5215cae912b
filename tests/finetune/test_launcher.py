from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis

from finetune.launcher import (
    ManagedProcess,
    find_redis_server,
    free_port,
    http_status,
    start_redis,
)
from tests.processes import announced_service, isolated_env, python_module


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_redis_server_is_an_executable_redis():
    path = find_redis_server()
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Redis server" in version


def test_redis_answers_ping_and_stop_leaves_no_process(tmp_path):
    port = free_port()
    server = start_redis(port=port, data_dir=tmp_path)
    try:
        assert redis.Redis(port=port).ping()
    finally:
        server.stop()
    assert not pid_exists(server.pid)


def test_the_embedded_redis_appends_every_write_and_flushes_it_every_second(tmp_path):
    port = free_port()
    server = start_redis(port=port, data_dir=tmp_path)
    try:
        config = redis.Redis(port=port, decode_responses=True).config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
    finally:
        server.stop()


def test_redis_aof_survives_a_restart(tmp_path):
    port = free_port()
    server = start_redis(port=port, data_dir=tmp_path)
    try:
        redis.Redis(port=port).set("survivor", "yes")
    finally:
        server.stop()

    server = start_redis(port=port, data_dir=tmp_path)
    try:
        assert redis.Redis(port=port).get("survivor") == b"yes"
    finally:
        server.stop()


def test_stop_kills_the_whole_process_group(tmp_path):
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    process = ManagedProcess("sleeper", [sys.executable, "-c", script], log_path=tmp_path / "sleeper.log")
    deadline = time.monotonic() + 120  # a hang guard
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(process.pid).children()[0].pid
    process.stop(timeout=5)
    assert not pid_exists(process.pid)
    assert wait_until_dead(grandchild, timeout=120)  # a hang guard


def wait_until_dead(pid: int, timeout: float) -> bool:
    """True once `pid` is gone or a zombie (an orphan may wait a while for init to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.integration
def test_launcher_serves_and_stops_cleanly_on_sigint(tmp_path):
    port = free_port()
    env = isolated_env(tmp_path, PORT=str(port))
    argv = python_module("finetune.launcher")
    with announced_service(argv, env, tmp_path / "launcher.log", port) as (launcher, children):
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200
        assert {"redis", "celery", "app.server"} <= {_role(child) for child in children}

        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=120)  # a hang guard
        output = (tmp_path / "launcher.log").read_text()
        assert launcher.returncode == 0, output
        survivors = [child.pid for child in children if pid_exists(child.pid)]
        assert survivors == []
        assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or any(
            (tmp_path / "data" / "redis").glob("appendonly*")
        )


def _role(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    return next((role for role in ("redis", "celery", "app.server") if role in command), "other")
