"""The two-host topology of docs/deploy.md on loopback, over s3://: a job resumes on another "host",
Redis is SIGKILLed, and leftovers are collected.

Host A holds Redis (append-only file, fsync every second), the object store (moto's S3 server
standing in for MinIO) and the API; host B's two workers each have a cache folder of their own
(`host-1`, `host-2`), so nothing but Redis and the bucket is shared between them — as between two
machines. MODEL_DIR and DATA_DIR are `s3://` URLs; checkpoints go to MODEL_DIR/.checkpoints.

Every test passes alone and in any order (the `intact` fixture brings both workers and Redis back).
No test asserts how fast something happened; every wait is a hang guard (HANG_GUARD_S).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import httpx
import pytest

from finetune.execution.reaper import collect_shared_checkpoints
from finetune.ids import new_id
from finetune.ml.spec import JobSpec
from finetune.stores.checkpoints import CheckpointStore
from finetune.stores.jobs import JobStore, job_key
from finetune.stores.models import ModelStore
from tests.integration.reliability_support import (
    FINAL,
    S3_CREDENTIALS,
    Stack,
    expected_history,
    finetune_rows,
    get_job,
    predict,
    probe_images,
    runner_processes,
    start_s3_server,
    submit_job,
    tiny_spec,
    upload_archive,
    wait_for,
    wait_for_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 420
BUCKET, STORE_PREFIX = "models", "store"
CHECKPOINTS = f"{STORE_PREFIX}/.checkpoints"
HOSTS = ("host-1", "host-2")


class TwoHosts:
    """Host A: Redis, the object store, the API. Host B: one worker per cache folder in HOSTS."""

    def __init__(self, root: Path, s3_url: str):
        self.stack = Stack(root)
        self.s3_url = s3_url
        self.stack.env.update(
            S3_CREDENTIALS,
            AWS_ENDPOINT_URL=s3_url,
            MODEL_DIR=f"s3://{BUCKET}/{STORE_PREFIX}",
            DATA_DIR="s3://datasets/uploads",
            CACHE_DIR=str(root / "host-a"),
        )
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        for bucket in (BUCKET, "datasets"):
            self.s3.create_bucket(Bucket=bucket)
        self.workers: dict[str, object] = {}

    def cache(self, host: str) -> Path:
        return self.stack.root / host

    def start_worker(self, host: str):
        self.workers[host] = self.stack.start_worker(CACHE_DIR=str(self.cache(host)))
        return self.workers[host]

    def ensure_up(self) -> None:
        if self.stack.redis is None or not self.stack.redis.is_alive():
            self.stack.start_redis()
        for host in HOSTS:
            if host not in self.workers or not self.workers[host].is_alive():
                self.start_worker(host)
        if self.stack.api is None or not self.stack.api.is_alive():
            self.stack.start_api()

    def keys(self, prefix: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]

    def shared_state(self, job_id: str) -> dict | None:
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=f"{CHECKPOINTS}/{job_id}/state.json")["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def models_of(self, job_id: str) -> list[str]:
        return [m["id"] for m in ModelStore(self.stack.env["MODEL_DIR"]).list() if m["job_id"] == job_id]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory, monkeypatch_module):
    process, url = start_s3_server(tmp_path_factory.mktemp("moto-two-hosts"))
    for key, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": url}.items():
        monkeypatch_module.setenv(key, value)  # this process reads the bucket through the stores too
    yield url
    process.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, s3_endpoint):
    hosts = TwoHosts(tmp_path_factory.mktemp("two-hosts"), s3_endpoint)
    try:
        hosts.ensure_up()
        yield hosts
    finally:
        hosts.stack.stop()


@pytest.fixture(scope="module")
def client(hosts):
    with httpx.Client(base_url=hosts.stack.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def dataset_id(hosts, client, tiny_dataset_zip):
    return upload_archive(client, "tiny.zip", tiny_dataset_zip.read_bytes()).json()["id"]


@pytest.fixture
def intact(hosts):
    hosts.ensure_up()
    yield


def holder_of(hosts: TwoHosts, job_id: str) -> str | None:
    for host, worker in hosts.workers.items():
        if worker.is_alive() and runner_processes(worker, job_id):
            return host
    return None


def test_a_job_whose_host_dies_mid_finetune_resumes_on_the_other_host_from_the_shared_checkpoint(
    hosts, client, dataset_id, intact
):
    job = submit_job(client, tiny_spec(dataset_id, warmup=2, finetune=8))
    wait_for(
        lambda: (
            (state := hosts.shared_state(job["id"])) is not None
            and any(row["phase"] == "finetune" for row in state["history"])
            or get_job(client, job["id"])["status"] in FINAL
        ),
        timeout=HANG_GUARD_S,
        interval=0.05,
        what="a finetune epoch's checkpoint in the bucket",
    )
    at_kill = get_job(client, job["id"])
    assert at_kill["status"] == "running", at_kill
    victim = holder_of(hosts, job["id"])
    assert victim is not None, hosts.stack.logs()
    survivor = next(host for host in HOSTS if host != victim)
    hosts.workers[victim].kill()  # the host dies: its worker and the job's process, at once
    shared = hosts.shared_state(job["id"])  # read after the kill: nothing can change it any more
    saved_rows = len(shared["history"])
    assert finetune_rows(shared) >= 1
    assert saved_rows < 10, "the job should still have had epochs to run"
    # the survivor has never seen this job: its cache holds no checkpoint of it
    assert not (hosts.cache(survivor) / "checkpoints" / job["id"]).exists()

    done = wait_for_job(client, job["id"], timeout=HANG_GUARD_S, diagnostics=hosts.stack.logs)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert [(row["phase"], row["epoch"]) for row in done["history"]] == expected_history(2, 8)
    # resumed, not restarted: the rows of the shared checkpoint are the very rows of the final history
    assert done["history"][:saved_rows] == shared["history"]
    # the record read at the kill may already hold an epoch whose checkpoint was not uploaded yet (the
    # uploader is paced): that epoch is redone; the rows the checkpoint covers are the record's own
    covered = min(len(at_kill["history"]), saved_rows)
    assert done["history"][:covered] == at_kill["history"][:covered]
    survivor_log = hosts.workers[survivor].output()
    assert f"job {job['id']}: resuming from the shared checkpoint after {saved_rows} epochs" in survivor_log
    assert hosts.models_of(job["id"]) == [done["model_id"]]
    # the job ended: its checkpoint is gone from the bucket and from the survivor's cache
    wait_for(lambda: not hosts.keys(f"{CHECKPOINTS}/{job['id']}/"), timeout=HANG_GUARD_S, what="checkpoint removed")
    assert not (hosts.cache(survivor) / "checkpoints" / job["id"]).exists()


def test_a_redis_sigkilled_after_a_model_is_saved_comes_back_and_the_records_are_reconciled(
    hosts, client, dataset_id, intact
):
    """What this simulates: Redis (appendonly yes, appendfsync everysec) losing the last second of writes
    to a SIGKILL, that second holding a job's final write (`succeeded`, its model id) — or, for a job
    submitted within that second, the whole record. A real SIGKILL cannot be timed to land between a
    model's upload and its record's write, so the lost writes are undone by hand before the kill: one
    record is rewound to what it said just before its final write (running, saving, no model), the
    other deleted. `appendfsync always` for that moment makes sure the undoing itself is on disk when
    Redis dies; Redis then restarts as deployed (everysec) from its append-only file.
    After the restart the service must not lie: the rewound job is reconciled to succeeded with the
    model its run saved (not run again: still one model names it), and the model of the forgotten job
    stays listed and serves predictions."""
    rewound_job = submit_job(client, tiny_spec(dataset_id, warmup=1))
    forgotten_job = submit_job(client, tiny_spec(dataset_id, warmup=1))
    rewound = wait_for_job(client, rewound_job["id"], timeout=HANG_GUARD_S, diagnostics=hosts.stack.logs)
    forgotten = wait_for_job(client, forgotten_job["id"], timeout=HANG_GUARD_S, diagnostics=hosts.stack.logs)
    assert rewound["status"] == forgotten["status"] == "succeeded", (rewound, forgotten)

    jobs = JobStore.from_url(hosts.stack.env["REDIS_URL"])
    jobs.redis.config_set("appendfsync", "always")
    before_final_write = {
        **rewound,
        "status": "running",
        "phase": "saving",
        "model_id": None,
        "finished_at": None,
        "progress": 0.99,
    }
    # the job process beats until its final write: a fresh beat keeps the stale-job sweep off it until
    # after the crash, so the restart's reconciliation is what repairs it
    jobs.redis.hset(
        job_key(rewound["id"]),
        mapping={"record": json.dumps(before_final_write), "status": "running", "heartbeat": time.time()},
    )
    jobs.delete(forgotten["id"])
    hosts.stack.redis.kill()
    hosts.stack.start_redis()
    jobs = JobStore.from_url(hosts.stack.env["REDIS_URL"])
    assert jobs.redis.config_get("appendfsync") == {"appendfsync": "everysec"}

    reconciled = wait_for_job(client, rewound["id"], timeout=HANG_GUARD_S, diagnostics=hosts.stack.logs)
    assert reconciled["status"] == "succeeded"
    assert reconciled["finished_at"] > rewound["finished_at"]  # written again, by the reconciliation
    assert reconciled["model_id"] == rewound["model_id"]
    assert reconciled["history"] == rewound["history"] and reconciled["progress"] == 1.0
    assert hosts.models_of(rewound["id"]) == [rewound["model_id"]]  # reconciled, not trained again
    assert any(
        "record reconciled to succeeded" in process.output() for process in [*hosts.stack.apis, *hosts.stack.workers]
    )

    assert client.get(f"/jobs/{forgotten['id']}").status_code == 404
    assert forgotten["model_id"] in [model["id"] for model in client.get("/models").json()["data"]]
    answer = predict(client, forgotten["model_id"], probe_images())
    assert answer["model_id"] == forgotten["model_id"] and len(answer["results"]) == len(probe_images())


def test_leftover_checkpoints_in_the_bucket_are_collected_after_the_grace_only_for_jobs_that_are_over(hosts):
    """A final job's checkpoint and an orphan's (record gone) are removed once the grace has passed; a
    running job's is kept whatever its age. (Objects cannot be back-dated in S3: the grace is the knob.)"""
    jobs = JobStore.from_url(hosts.stack.env["REDIS_URL"])
    spec = tiny_spec("ds")
    final_job, running_job = (jobs.create(_spec_of(spec))["id"] for _ in range(2))
    jobs.update(final_job, {"status": "cancelled"})
    jobs.update(running_job, {"status": "running"})
    orphan = new_id()
    store = CheckpointStore(f"s3://{BUCKET}/{CHECKPOINTS}", staging_root=hosts.stack.root / "collector")
    for job_id in (final_job, running_job, orphan):
        for name in ("trainee-finetune-1.keras", "state.json"):
            hosts.s3.put_object(Bucket=BUCKET, Key=f"{CHECKPOINTS}/{job_id}/{name}", Body=b"x")
    try:
        assert collect_shared_checkpoints(jobs, store, grace_s=3600) == []
        time.sleep(1.1)  # S3 times have whole seconds: let the objects be older than a zero grace
        assert sorted(collect_shared_checkpoints(jobs, store, grace_s=0)) == sorted([final_job, orphan])
        assert hosts.keys(f"{CHECKPOINTS}/{final_job}/") == hosts.keys(f"{CHECKPOINTS}/{orphan}/") == []
        assert len(hosts.keys(f"{CHECKPOINTS}/{running_job}/")) == 2
    finally:
        jobs.update(running_job, {"status": "cancelled"})
        store.remove_shared(running_job)


def test_the_uploader_copies_the_newest_local_checkpoint_and_another_host_restores_it(hosts):
    """Local checkpoint folder -> bucket (model file, then state) -> another host's empty cache."""
    job_id = new_id()
    url = f"s3://{BUCKET}/{CHECKPOINTS}"
    here = CheckpointStore(url, staging_root=hosts.stack.root / "uploader-here")
    there = CheckpointStore(url, staging_root=hosts.stack.root / "uploader-there")
    local = here.working_dir(job_id)
    local.mkdir(parents=True)
    uploader = None
    try:
        for epoch, payload in ((1, b"first"), (2, b"second")):
            (local / f"trainee-warmup-{epoch}.keras").write_bytes(payload)
            state = {"phase": "warmup", "epoch": epoch, "history": [{"epoch": n} for n in range(1, epoch + 1)]}
            (local / "state.json").write_text(json.dumps({**state, "model_file": f"trainee-warmup-{epoch}.keras"}))
            (local / f"trainee-warmup-{epoch - 1}.keras").unlink(missing_ok=True)
        uploader = here.uploader(job_id)
        wait_for(lambda: uploader.done.epochs == [2], timeout=HANG_GUARD_S, what="the upload")
        assert sorted(hosts.keys(f"{CHECKPOINTS}/{job_id}/")) == [
            f"{CHECKPOINTS}/{job_id}/state.json",
            f"{CHECKPOINTS}/{job_id}/trainee-warmup-2.keras",
        ]
        assert there.restore(job_id) == 2
        restored = there.working_dir(job_id)
        assert (restored / "trainee-warmup-2.keras").read_bytes() == b"second"
        assert json.loads((restored / "state.json").read_text())["epoch"] == 2
        assert there.restore(job_id) is None  # the local copy is as far along: nothing downloaded
    finally:
        if uploader is not None:
            uploader.stop()
        here.remove(job_id)
        there.remove(job_id)
    assert hosts.keys(f"{CHECKPOINTS}/{job_id}/") == []


def _spec_of(spec: dict) -> JobSpec:
    return JobSpec.model_validate(spec)


def test_early_stoppings_kept_weights_travel_with_the_shared_checkpoint(hosts):
    """A state naming a `best_file` (early stopping's kept epoch): the bucket and the other host get it too."""
    job_id = new_id()
    url = f"s3://{BUCKET}/{CHECKPOINTS}"
    here = CheckpointStore(url, staging_root=hosts.stack.root / "best-here")
    there = CheckpointStore(url, staging_root=hosts.stack.root / "best-there")
    local = here.working_dir(job_id)
    local.mkdir(parents=True)
    (local / "trainee-finetune-3.keras").write_bytes(b"latest")
    (local / "best-finetune-2.npz").write_bytes(b"kept")
    state = {"phase": "finetune", "epoch": 3, "history": [{"epoch": n} for n in (1, 2, 3)]}
    state |= {"stopping": {"best_file": "best-finetune-2.npz"}, "model_file": "trainee-finetune-3.keras"}
    (local / "state.json").write_text(json.dumps(state))
    uploader = here.uploader(job_id)
    try:
        wait_for(lambda: uploader.done.epochs == [3], timeout=HANG_GUARD_S, what="the upload")
        assert sorted(hosts.keys(f"{CHECKPOINTS}/{job_id}/")) == [
            f"{CHECKPOINTS}/{job_id}/best-finetune-2.npz",
            f"{CHECKPOINTS}/{job_id}/state.json",
            f"{CHECKPOINTS}/{job_id}/trainee-finetune-3.keras",
        ]
        assert there.restore(job_id) == 3
        assert (there.working_dir(job_id) / "best-finetune-2.npz").read_bytes() == b"kept"
        assert (there.working_dir(job_id) / "trainee-finetune-3.keras").read_bytes() == b"latest"
    finally:
        uploader.stop()
        here.remove(job_id)
        there.remove(job_id)
