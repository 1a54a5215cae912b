"""The `finetune` command in real processes (`python -m finetune.cli`, the module the `finetune` entry point
runs): train with --spec and --set, predict, layers and serve; their exit codes, and their errors on bad
input: 0 done, 1 a run that failed (a missing dataset folder or image), 2 input refused before anything
ran (a spec that does not validate, an unknown backbone, not a model folder, a usage error)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from finetune.launcher import free_port
from tests.helpers import LEARNABLE_SPEC, make_image, make_image_bytes, top_label
from tests.processes import announced_service, isolated_env, python_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 600


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    return isolated_env(root, **extra)


def finetune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=HANG_GUARD_S,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    for index, colour in enumerate(("red", "blue")):
        (root / "dataset" / colour).mkdir(parents=True)
        for n in range(8):
            make_image(colour, 40, seed=index * 1000 + n).save(root / "dataset" / colour / f"{colour}_{n}.png")
    (root / "probe-red.png").write_bytes(make_image_bytes("red", 40, seed=99))
    (root / "probe-blue.png").write_bytes(make_image_bytes("blue", 40, seed=99))
    (root / "notes.png").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """`finetune train` with a spec file, two of its fields overridden by --set (one of them nested):
    the spec file alone would train MobileNet for one epoch, which learns nothing."""
    spec = {
        **LEARNABLE_SPEC,
        "backbone": "mobilenet",
        "alpha": 0.25,
        "warmup": {**LEARNABLE_SPEC["warmup"], "epochs": 1},
    }
    (workspace / "spec.json").write_text(json.dumps(spec))
    out = workspace / "out"
    completed = finetune(
        "train",
        str(workspace / "dataset"),
        "--spec",
        str(workspace / "spec.json"),
        "--set",
        "backbone=vgg16",
        "--set",
        "alpha=null",
        "--set",
        f"warmup.epochs={LEARNABLE_SPEC['warmup']['epochs']}",
        "--out",
        str(out),
        env=cli_env(workspace),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Final:" in completed.stdout and "macro avg" in completed.stdout, completed.stdout
    model_line = next(line for line in completed.stdout.splitlines() if line.startswith("model: "))
    folder = Path(model_line[len("model: ") :])
    assert folder.parent == out.resolve()
    return folder


def test_train_applies_the_spec_file_and_the_overrides(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    assert (trained / "model.keras").is_file()
    assert manifest["classes"] == ["blue", "red"]
    assert manifest["backbone"] == "vgg16" and manifest["spec"]["alpha"] is None  # --set
    assert manifest["spec"]["warmup"]["epochs"] == LEARNABLE_SPEC["warmup"]["epochs"]  # --set, nested
    assert manifest["spec"]["warmup"]["learning_rate"] == LEARNABLE_SPEC["warmup"]["learning_rate"]  # the file
    assert manifest["spec"]["image_size"] == 32 and manifest["spec"]["augmentation"] is None  # the file
    assert len(manifest["history"]) == LEARNABLE_SPEC["warmup"]["epochs"]


def test_predict_prints_each_image_s_label_as_json(trained, workspace):
    completed = finetune(
        "predict",
        str(trained),
        str(workspace / "probe-red.png"),
        str(workspace / "probe-blue.png"),
        env=cli_env(workspace),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout)
    assert printed["model_id"] == trained.name
    assert [Path(r["filename"]).name for r in printed["results"]] == ["probe-red.png", "probe-blue.png"]
    assert [top_label(r) for r in printed["results"]] == ["red", "blue"]
    assert all(len(r["predictions"]) == 2 for r in printed["results"])  # --top-k 5 of 2 classes


def test_predict_errors(trained, workspace):
    env = cli_env(workspace)
    not_a_model = finetune("predict", str(workspace / "dataset"), str(workspace / "probe-red.png"), env=env)
    assert not_a_model.returncode == 2
    assert "is not a model folder" in not_a_model.stderr
    missing = finetune("predict", str(trained), str(workspace / "no-such.png"), env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error:") and "no-such.png" in missing.stderr
    not_an_image = finetune("predict", str(trained), str(workspace / "notes.png"), env=env)
    assert not_an_image.returncode == 1
    assert "notes.png" in not_an_image.stderr.strip().splitlines()[-1]
    assert "Traceback" not in missing.stderr + not_an_image.stderr
    usage = finetune("predict", str(trained), env=env)  # no image
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_train_errors(workspace, tmp_path):
    env = cli_env(workspace)
    tiny = ["--set", "backbone=mobilenet", "--set", "alpha=0.25", "--set", "weights=none", "--out", str(tmp_path)]
    missing = finetune("train", str(workspace / "no-such-folder"), *tiny, env=env)
    assert missing.returncode == 1
    assert "error: dataset folder" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    unknown = finetune("train", str(workspace / "dataset"), "--set", "backbone=alexnet", env=env)
    assert unknown.returncode == 2
    assert "invalid spec" in unknown.stderr and "backbone" in unknown.stderr

    (tmp_path / "bad.json").write_text(json.dumps({"backbone": "vgg16", "alpha": 0.5, "warmup": {"epochs": -1}}))
    invalid = finetune("train", str(workspace / "dataset"), "--spec", str(tmp_path / "bad.json"), env=env)
    assert invalid.returncode == 2
    assert "invalid spec" in invalid.stderr and "alpha" in invalid.stderr and "epochs" in invalid.stderr

    malformed = finetune("train", str(workspace / "dataset"), "--set", "no-equals-sign", env=env)
    assert malformed.returncode == 2 and "expected key=value" in malformed.stderr
    assert not list(tmp_path.glob("*/manifest.json"))  # nothing was saved by any of them


def test_layers_lists_a_backbone_and_refuses_an_unknown_one(workspace):
    env = cli_env(workspace)
    listed = finetune("layers", "mobilenet", "--alpha", "0.25", env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["index", "name", "type", "params"]
    marked = [line for line in lines if "<- default unfreeze_from" in line]
    assert len(marked) == 1 and "conv_dw_13" in marked[0], marked
    unknown = finetune("layers", "alexnet", env=env)
    assert unknown.returncode == 2 and "unknown backbone 'alexnet'" in unknown.stderr
    usage = finetune("frobnicate", env=env)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_serve_runs_the_service_and_stops_with_exit_code_0(workspace, redis_db, tmp_path):
    port = free_port()
    env = cli_env(tmp_path, REDIS_URL=redis_db, PORT=str(port))
    argv = python_module("finetune.cli", "serve")
    with announced_service(argv, env, tmp_path / "serve.log", port, hang_guard_s=HANG_GUARD_S) as (serve, children):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/models").json()["data"] == []
            assert client.get("/readyz").status_code == 200
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=HANG_GUARD_S)
        assert serve.returncode == 0, (tmp_path / "serve.log").read_text()
        assert not [child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def test_serve_exits_1_when_its_port_is_taken(redis_db, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "finetune.cli", "serve"],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env=cli_env(tmp_path, REDIS_URL=redis_db, PORT=str(port)),
            timeout=HANG_GUARD_S,
        )
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "launcher: api exited" in completed.stderr, completed.stderr[-2000:]
