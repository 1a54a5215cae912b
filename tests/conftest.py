"""Shared fixtures. Integration fixtures start their own Redis, worker and API; they never touch another Redis."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from finetune.launcher import ManagedProcess, free_port, start_api, start_redis, start_worker  # noqa: E402
from tests.helpers import make_dataset_zip  # noqa: E402
from tests.processes import isolated_env  # noqa: E402


class RedisServer:
    """A redis-server the tests started; `stop()`/`start()`/`restart()` keep its port and data dir."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.process: ManagedProcess | None = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        if not self.is_running():
            self.process = start_redis(port=self.port, data_dir=self.data_dir)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class RedisDatabases:
    """The one place that hands out the databases of the session's Redis: each owner (a test module,
    or a named stack) gets a number of its own, so clearing it touches no one else's keys.
    Database 0 is the shared `live_service`'s."""

    LIVE_SERVICE = "live_service"
    COUNT = 16  # redis-server's default `databases`

    def __init__(self, server: RedisServer):
        self.server = server
        self.owners: dict[str, int] = {self.LIVE_SERVICE: 0}

    def number(self, owner: str) -> int:
        number = self.owners.setdefault(owner, len(self.owners))
        if number >= self.COUNT:
            raise RuntimeError(f"more than {self.COUNT} Redis databases asked for: {sorted(self.owners)}")
        return number

    def url(self, owner: str) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{self.number(owner)}"


@pytest.fixture(scope="session")
def redis_databases(redis_server) -> RedisDatabases:
    return RedisDatabases(redis_server)


@pytest.fixture(scope="module")
def redis_db(redis_databases, request) -> str:
    """The URL of a database of the session's Redis that belongs to the requesting test module alone."""
    return redis_databases.url(request.module.__name__)


@pytest.fixture(scope="session")
def service_env(tmp_path_factory, redis_databases) -> dict[str, str]:
    """Environment for child processes: this session's Redis and directories, no stray settings."""
    root = tmp_path_factory.mktemp("service")
    redis_url = redis_databases.url(RedisDatabases.LIVE_SERVICE)
    return isolated_env(root, REDIS_URL=redis_url, JOB_STALE_AFTER_S="10", HEARTBEAT_S="1")


class LiveService:
    """One API and one or more workers, sharing `env`."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.model_dir = Path(env["MODEL_DIR"])
        self.data_dir = Path(env["DATA_DIR"])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[ManagedProcess] = []
        self.api: ManagedProcess | None = None

    @property
    def worker(self) -> ManagedProcess:
        """The first worker."""
        return self.workers[0]

    def start_worker(self, hostname: str | None = None) -> ManagedProcess:
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        process = start_worker(env=self.env, log_path=log_path, hostname=hostname)
        self.workers.append(process)
        return process

    @contextmanager
    def extra_api(self, log_dir: Path, *, timeout: float = 120, **overrides: str) -> Iterator[httpx.Client]:
        """A second API on this service's Redis and stores with some settings changed, and a client of
        it (carrying `.port` and `.process`); stopped on leaving."""
        port = free_port()
        process = start_api(
            env={**self.env, **{key: str(value) for key, value in overrides.items()}},
            port=port,
            log_path=Path(log_dir) / "api.log",
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
                client.port, client.process = port, process
                yield client
        finally:
            process.stop()

    def start(self) -> None:
        self.start_worker()
        self.api = start_api(env=self.env, port=self.port, log_path=self.log_dir / "api.log")

    def stop(self) -> None:
        for process in [self.api, *self.workers]:
            if process is not None:
                process.stop()


@pytest.fixture(scope="session")
def live_service(service_env, tmp_path_factory):
    service = LiveService(service_env, tmp_path_factory.mktemp("logs"))
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def tiny_dataset_zip(tmp_path_factory) -> Path:
    return make_dataset_zip(tmp_path_factory.mktemp("datasets") / "tiny.zip")
