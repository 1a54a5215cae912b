"""Static checks of the deployment files: Dockerfile, Compose files, .dockerignore.

No Docker engine is needed; the Compose files are read with PyYAML (with Compose's
`!reset` / `!override` merge tags understood) and the Dockerfile as text.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
FETCH_WEIGHTS = ROOT / "scripts" / "fetch_weights.py"


fetch_weights = load_script(FETCH_WEIGHTS)


class Tagged:
    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


ComposeLoader.add_multi_constructor("!", _tagged)


def load_compose(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def resolve(value: str) -> str:
    """Compose interpolation with no variables set: `${X:-default}` -> default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: resolve(str(value)) for key, value in env.items()}


def mounts(service: dict) -> dict[str, str]:
    """target path -> source, for the short `source:target[:mode]` and the long syntax."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        found[target] = source
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def cpu_override() -> dict:
    return load_compose("docker-compose.cpu.yml")


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())


def stages(dockerfile: str) -> list[str]:
    return re.split(r"(?im)^(?=FROM\s)", dockerfile)[1:]


def instructions(text: str, keyword: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"(?im)^{keyword}\s+(.*)$", text)]


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    env = {}
    for line in instructions(stages(dockerfile)[-1], "ENV"):
        for token in shlex.split(line):
            if "=" in token:
                key, value = token.split("=", 1)
                env[key] = value
    return env


# --- Compose: the application services ------------------------------------------------


def test_api_runs_the_api_server(services, dockerfile):
    """`python -m app.server`: uvicorn in API_WORKERS processes, on every interface by default."""
    api = services["api"]
    cmd = command_text(api) or " ".join(instructions(stages(dockerfile)[-1], "CMD"))
    assert "python -m app.server" in cmd
    assert "--host" not in cmd  # app.server's default: 0.0.0.0
    assert "--port 8000" in cmd
    assert any(str(port).endswith(":8000") for port in api["ports"])


def test_api_and_worker_share_one_image(services):
    api, worker = services["api"], services["worker"]
    assert api["image"] == worker["image"]
    assert api["build"] == worker["build"]
    assert api["build"]["context"] == "."


def test_worker_runs_one_job_per_process(services):
    tokens = command_text(services["worker"]).split()
    assert " ".join(tokens[:4]) == "celery -A worker.celery_app worker"
    assert "--pool=solo" in tokens
    assert "--concurrency=1" in tokens
    assert "--prefetch-multiplier=1" in tokens


def test_worker_can_be_scaled(services):
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_worker_reserves_the_nvidia_gpus_and_claims_one_through_a_shared_lock_folder(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (device,) = devices
    assert device["driver"] == "nvidia"
    assert device["count"] == "all"
    assert "gpu" in device["capabilities"]
    lock_dir = env_of(services["worker"])["GPU_LOCK_DIR"]
    mounts = [volume.split(":")[1] for volume in services["worker"]["volumes"]]
    assert any(lock_dir.startswith(mount + "/") for mount in mounts), "the lock folder must be on a shared volume"


def test_api_and_worker_wait_for_a_healthy_redis(services):
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert env_of(services[name])["REDIS_URL"] == "redis://redis:6379/0"


def test_api_healthcheck_probes_readiness(services):
    test = services["api"]["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    assert "/readyz" in text
    assert "curl" not in text


@pytest.mark.parametrize("setting, volume", [("MODEL_DIR", "models"), ("DATA_DIR", "datasets")])
def test_stores_are_one_named_volume_shared_by_api_and_worker(compose, services, dockerfile, setting, volume):
    path = dockerfile_env(dockerfile)[setting]
    assert path.startswith("/srv/")
    assert volume in compose["volumes"]
    for name in ("api", "worker"):
        assert mounts(services[name]).get(path) == volume, f"{name} must mount {volume} at {path}"
        assert env_of(services[name])[setting] == path


def test_redis_persists_with_append_only_file(compose, services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert re.search(r"--appendonly\s+yes", command_text(redis))
    assert re.search(r"--appendfsync\s+everysec", command_text(redis))  # a SIGKILL loses at most a second
    source = mounts(redis)["/data"]
    assert source in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]


def test_optional_services_are_behind_profiles(services):
    for name in ("redis", "api", "worker"):
        assert "profiles" not in services[name]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["minio"]["profiles"] == ["s3"]
    assert "flower" in command_text(services["flower"]) or "flower" in services["flower"]["image"]


def test_minio_init_creates_the_buckets(services):
    init = next(s for n, s in services.items() if n != "minio" and "minio" in n)
    assert init["profiles"] == ["s3"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = command_text({"command": init.get("entrypoint", [])}) + command_text(init)
    assert "mb" in script and "models" in script and "datasets" in script


# --- Compose: the CPU override --------------------------------------------------------


def test_cpu_override_builds_cpu_and_drops_the_gpu(cpu_override, services):
    overrides = cpu_override["services"]
    assert set(overrides) <= set(services)
    for name in ("api", "worker"):
        assert overrides[name]["build"]["args"]["VARIANT"] == "cpu"
        assert overrides[name]["image"] != services[name]["image"]
    deploy = overrides["worker"]["deploy"]
    assert isinstance(deploy, Tagged) and deploy.tag == "!reset"


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile):
    froms = instructions(dockerfile, "FROM")
    assert len(froms) >= 2
    assert froms[-1].split()[0] == "python:3.11-slim"
    final = stages(dockerfile)[-1]
    assert re.search(r"(?im)^COPY\s+--from=\w+.*\s/opt/venv\s+/opt/venv", final)


def test_dockerfile_runs_as_non_root(dockerfile):
    users = instructions(stages(dockerfile)[-1], "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_healthcheck_needs_no_curl(dockerfile):
    (check,) = instructions(stages(dockerfile)[-1], "HEALTHCHECK")
    assert "/healthz" in check and "urllib" in check and "PORT" in check
    assert "curl" not in check


def test_dockerfile_variant_picks_the_tensorflow_wheel(dockerfile):
    """The variant's hash lock carries its TensorFlow wheel at pyproject's pin (tests/test_lock.py checks the rest)."""
    pin = re.search(r'"tensorflow==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(r"(?m)^ARG VARIANT=gpu\b", dockerfile)
    assert re.search(r'(?m)^RUN .*pip install --require-hashes -r "?requirements/\$VARIANT\.txt"?$', dockerfile)
    cpu, gpu = ((ROOT / "requirements" / f"{variant}.txt").read_text() for variant in ("cpu", "gpu"))
    assert re.search(rf"(?m)^tensorflow-cpu=={re.escape(pin)} ", cpu) and not re.search(r"(?m)^tensorflow==", cpu)
    assert re.search(rf"(?m)^tensorflow=={re.escape(pin)} ", gpu) and re.search(r"(?m)^nvidia-cudnn-cu12==", gpu)


def test_dockerfile_fetches_backbone_weights_at_build_time(dockerfile):
    assert re.search(r"(?m)^ARG BACKBONES=vgg16\b", dockerfile)
    assert re.search(r"(?m)^RUN .*scripts/fetch_weights\.py .*\$BACKBONES", dockerfile)
    env = dockerfile_env(dockerfile)
    assert env["KERAS_HOME"] == "/opt/keras"
    assert re.search(r"(?m)^COPY --from=\w+ .*/opt/keras /opt/keras", stages(dockerfile)[-1])


def test_dockerfile_default_command_is_the_api(dockerfile):
    (cmd,) = instructions(stages(dockerfile)[-1], "CMD")
    assert json.loads(cmd) == ["python", "-m", "app.server"]


def test_dockerignore_keeps_state_out_and_sources_in():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for path in ("models", "data", ".venv", ".cache", "artifacts", ".git", "bench/out", "node_modules"):
        assert path in ignored
    for path in ("pyproject.toml", "README.md", "scripts", "finetune", "app", "worker"):
        assert path not in ignored


# --- scripts/fetch_weights.py --------------------------------------------------------


def test_backbone_list_parsing():
    specs = fetch_weights.parse_specs("vgg16, resnet50  mobilenet:0.25 mobilenet_v2:0.35:160")
    assert [s.backbone for s in specs] == ["vgg16", "resnet50", "mobilenet", "mobilenet_v2"]
    assert specs[2].kwargs() == {"weights": "imagenet", "include_top": False, "alpha": 0.25}
    assert specs[3].kwargs()["input_shape"] == (160, 160, 3)
    assert fetch_weights.parse_specs("") == fetch_weights.parse_specs("none") == []
    assert set(fetch_weights.APPLICATIONS) == {
        "vgg16",
        "vgg19",
        "resnet50",
        "mobilenet",
        "mobilenet_v2",
        "efficientnet_b0",
    }
    for bad in ("alexnet", "vgg16:0.5", "mobilenet:0.25:224:x"):
        with pytest.raises(ValueError):
            fetch_weights.parse_specs(bad)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="shared MobileNet weights not present")
def test_fetch_finds_a_preplaced_weight_file_offline(tmp_path):
    """The file name the script asks Keras for is the one Keras' loader uses: no download."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(SHARED_WEIGHTS, models / SHARED_WEIGHTS.name)
    env = {
        **os.environ,
        "KERAS_HOME": str(tmp_path),
        "CUDA_VISIBLE_DEVICES": "",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, str(FETCH_WEIGHTS), "mobilenet:0.25"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in models.iterdir()) == [SHARED_WEIGHTS.name]


# --- entry points the images run -----------------------------------------------------


def module_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def test_api_entry_point_defines_app():
    path = ROOT / "app" / "main.py"
    tree = ast.parse(path.read_text())
    lazy = any(
        isinstance(node, ast.FunctionDef)
        and node.name == "__getattr__"
        and any(isinstance(c, ast.Constant) and c.value == "app" for c in ast.walk(node))
        for node in tree.body
    )
    assert "app" in module_level_names(path) or lazy


def test_worker_entry_point_defines_a_celery_app():
    path = ROOT / "worker" / "celery_app.py"
    names = module_level_names(path)
    assert {"app", "celery"} & names or "Celery(" in path.read_text()
