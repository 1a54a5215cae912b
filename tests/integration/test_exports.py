"""Exports end to end (issue 13) over real HTTP with real processes: this session's Redis, a Celery
worker (a child process per job and per export) and the uvicorn API.

A real job trains MobileNet 0.25 with the real ImageNet weights (from ../shared/weights, placed in the
service's KERAS_HOME as an air-gapped host would) on 64 px colour images; the worker builds its four
exports, each is downloaded and run in a fresh process with its own runtime on image *files*
(SavedModel: `tf.saved_model.load` and the `serving_default` signature on the raw bytes, as TF Serving
calls it; LiteRT float and int8: the LiteRT interpreter; ONNX: onnxruntime), and the answers are
compared with what `/predict` answers for the same files. Then, each on a copy of the model (the
tests run in random order): a running export cancelled (its process killed), exports whose dataset is
gone (built, parity recorded as unavailable; int8, which needs it to calibrate, failed), and the
model's deletion taking its exports along.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import make_image_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
FORMATS = ("savedmodel", "litert", "litert_int8", "onnx")
TIMEOUT_S = 600.0
FINAL = ("succeeded", "failed", "cancelled")
SIZE = 64
CLASSES = ("red", "blue", "green")
SPEC = {
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "imagenet" if WEIGHTS.is_file() else "none",
    "image_size": SIZE,
    "batch_size": 8,
    "augmentation": None,
    "warmup": {"epochs": 2, "learning_rate": 0.01},
    "finetune": None,
}

# Runs in a fresh process: each export loaded with its own runtime, run on the image files.
FRESH = r"""
import json, sys, tarfile, tempfile
import numpy as np
from PIL import Image

exports, size, images = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
raw = [open(path, "rb").read() for path in images]

def pixels(path):  # the documented input of LiteRT/ONNX: shorter side to `size` (bilinear), centre crop
    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)

batch = np.stack([pixels(path) for path in images])
out = {}

import tensorflow as tf
folder = tempfile.mkdtemp()
with tarfile.open(exports["savedmodel"], "r:gz") as archive:
    archive.extractall(folder, filter="data")
loaded = tf.saved_model.load(folder + "/savedmodel")
serve = loaded.signatures["serving_default"]
answer = serve(images=tf.constant(raw))
out["savedmodel"] = answer["probabilities"].numpy().tolist()
out["savedmodel_classes"] = [[c.decode() for c in row] for row in answer["classes"].numpy()]

from ai_edge_litert.interpreter import Interpreter
for fmt in ("litert", "litert_int8"):
    interpreter = Interpreter(model_path=exports[fmt])
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in batch:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(target["index"])[0].tolist())
    out[fmt] = rows
    out[fmt + "_input"] = [str(np.dtype(source["dtype"])), [float(v) for v in source["quantization"]]]

import onnxruntime
session = onnxruntime.InferenceSession(exports["onnx"], providers=["CPUExecutionProvider"])
out["onnx"] = session.run(None, {session.get_inputs()[0].name: batch.astype(np.float32)})[0].tolist()
print("RESULT " + json.dumps(out))
"""


def _colour_zip(path: Path, per_class: int = 12) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for index, name in enumerate(CLASSES):
            for n in range(per_class):
                # 80x72: every image goes through the aspect-aware resize and a crop
                archive.writestr(f"{name}/{name}_{n:03d}.png", _image(name, index * 1000 + n))
    return path


def _image(colour: str, seed: int, fmt: str = "PNG") -> bytes:
    from PIL import Image

    square = Image.open(io.BytesIO(make_image_bytes(colour, 80, seed=seed)))
    buffer = io.BytesIO()
    square.crop((0, 0, 80, 72)).save(buffer, format=fmt)
    return buffer.getvalue()


def _wait(http: httpx.Client, url: str, until, *, what: str, live_service, timeout: float = TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(url)
        assert response.status_code == 200, response.text
        record = response.json()
        if until(record):
            return record
        assert time.monotonic() < deadline, f"{what}: still {record.get('status')} after {timeout:.0f}s\n" + "\n".join(
            process.log_tail(80) for process in live_service.workers
        )
        time.sleep(0.2)


@pytest.fixture(scope="module")
def client(live_service):
    with httpx.Client(base_url=live_service.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def trained(client, live_service, tmp_path_factory):
    """A dataset and the model of a real job on it."""
    if WEIGHTS.is_file():
        models = Path(live_service.env["KERAS_HOME"]) / "models"
        models.mkdir(parents=True, exist_ok=True)
        if not (models / WEIGHTS.name).exists():
            shutil.copy(WEIGHTS, models / WEIGHTS.name)
    archive = _colour_zip(tmp_path_factory.mktemp("exports") / "colours.zip")
    with open(archive, "rb") as handle:
        dataset = client.post("/datasets", files={"file": ("colours.zip", handle, "application/zip")}).json()
    job = client.post("/jobs", json={"dataset_id": dataset["id"], **SPEC})
    assert job.status_code == 202, job.text
    job = _wait(
        client, f"/jobs/{job.json()['id']}", lambda r: r["status"] in FINAL, what="job", live_service=live_service
    )
    assert job["status"] == "succeeded", job
    return {"dataset": dataset, "model_id": job["model_id"], "archive": archive}


@pytest.fixture(scope="module")
def built(client, live_service, trained):
    """The four exports, asked for at once (queued behind one another on the worker) and built."""
    model_id = trained["model_id"]
    for fmt in FORMATS:
        response = client.post(f"/models/{model_id}/exports", json={"format": fmt})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
    again = client.post(f"/models/{model_id}/exports", json={"format": "onnx"})
    assert again.status_code == 409, again.text  # one build of a format at a time
    records = {
        fmt: _wait(
            client,
            f"/models/{model_id}/exports/{fmt}",
            lambda r: r["status"] in FINAL,
            what=f"{fmt} export",
            live_service=live_service,
        )
        for fmt in FORMATS
    }
    return records


def test_every_export_is_built_with_its_parity_recorded(client, trained, built):
    for fmt, record in built.items():
        assert record["status"] == "succeeded", (fmt, record)
        parity = record["parity"]
        assert parity["available"] is True and parity["images"] == 9, (fmt, parity)  # 3 per class held out
        for key in ("agreement", "max_abs_diff", "accuracy", "keras_accuracy", "latency_ms", "keras_latency_ms"):
            assert isinstance(parity[key], float), (fmt, key, parity)
        assert record["size_bytes"] > 0 and record["build_seconds"] > 0
        assert record["download_url"] == f"/models/{trained['model_id']}/exports/{fmt}/download"
        if fmt != "litert_int8":
            assert parity["agreement"] >= 0.999, (fmt, parity)
            assert record["flagged"] is False
        else:
            assert record["flagged"] is (parity["agreement"] < 0.98)
    assert built["savedmodel"]["unpacked_bytes"] > 0
    assert built["litert_int8"]["input"]["dtype"] == "uint8" and built["litert"]["input"]["dtype"] == "float32"
    # the same figures in the model's manifest
    manifest = client.get(f"/models/{trained['model_id']}").json()
    assert set(manifest["exports"]) == set(FORMATS)
    assert manifest["exports"]["onnx"]["parity"] == built["onnx"]["parity"]
    listing = client.get(f"/models/{trained['model_id']}/exports").json()
    assert listing["count"] == 4 and {row["format"] for row in listing["data"]} == set(FORMATS)


def test_downloaded_exports_answer_like_the_served_model_in_a_fresh_process(client, trained, built, tmp_path):
    model_id = trained["model_id"]
    files = {}
    for fmt in FORMATS:
        response = client.get(f"/models/{model_id}/exports/{fmt}/download")
        assert response.status_code == 200, response.text
        files[fmt] = tmp_path / built[fmt]["file"]
        files[fmt].write_bytes(response.content)
    with tarfile.open(files["savedmodel"], "r:gz") as archive:
        assert "savedmodel/saved_model.pb" in archive.getnames()

    images = []
    for index, colour in enumerate(CLASSES):
        for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif")):
            path = tmp_path / f"{colour}.{suffix}"
            path.write_bytes(_image(colour, 50_000 + index, fmt))
            images.append(path)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH,
            json.dumps({k: str(v) for k, v in files.items()}),
            str(SIZE),
            json.dumps([str(p) for p in images]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,  # not the repository: nothing of this project is imported
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT ") :])

    served = []
    for path in images:
        with open(path, "rb") as handle:
            response = client.post("/predict", files={"file": (path.name, handle)}, data={"model_id": model_id})
        assert response.status_code == 200, response.text
        served.append(response.json()["results"][0]["predictions"][0]["label"])
    classes = client.get(f"/models/{model_id}").json()["classes"]
    assert out["savedmodel_classes"][0] == classes
    assert out["litert_int8_input"] == ["uint8", [1.0, 0.0]]  # raw pixel values go in as they are
    for fmt in FORMATS:
        labels = [classes[max(range(len(row)), key=row.__getitem__)] for row in out[fmt]]
        tolerance = 1e-2 if fmt == "litert_int8" else 1e-3  # int8 probabilities come in steps of 1/256
        assert all(abs(sum(row) - 1.0) < tolerance for row in out[fmt]), (fmt, out[fmt])
        if fmt != "litert_int8" or not built[fmt]["flagged"]:
            assert labels == served, (fmt, labels, served)


@pytest.fixture
def clone(live_service, trained):
    """A copy of the trained model under a new id (the tests' order is random: these tests change or
    delete what they work on, so each gets its own), optionally pointing at another dataset id."""

    def make(dataset_id: str | None = None) -> str:
        new_id = uuid.uuid4().hex[:16]
        source, target = live_service.model_dir / trained["model_id"], live_service.model_dir / new_id
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("exports", "manifest.json"))
        manifest = json.loads((source / "manifest.json").read_text())
        manifest.pop("exports", None)
        manifest["id"] = new_id
        if dataset_id is not None:
            manifest["dataset_id"] = dataset_id
        (target / "manifest.json").write_text(json.dumps(manifest))
        return new_id

    return make


def test_a_running_export_is_cancelled_and_its_process_stopped(client, live_service, clone):
    model_id = clone()
    response = client.post(f"/models/{model_id}/exports", json={"format": "onnx"})
    assert response.status_code == 202, response.text
    build_id = response.json()["id"]
    _wait(
        client,
        f"/models/{model_id}/exports/onnx",
        lambda r: r["status"] != "queued",
        what="onnx export",
        live_service=live_service,
    )
    cancelled = client.post(f"/models/{model_id}/exports/onnx/cancel")
    assert cancelled.status_code in (200, 409), cancelled.text  # 409 only if it finished first
    record = _wait(
        client,
        f"/models/{model_id}/exports/onnx",
        lambda r: r["status"] in FINAL,
        what="cancelled onnx export",
        live_service=live_service,
        timeout=60,
    )
    assert record["id"] == build_id
    if cancelled.status_code == 200:
        assert record["status"] == "cancelled" and record["download_url"] is None
        assert client.get(f"/models/{model_id}/exports/onnx/download").status_code == 409
        assert not any(
            "finetune.execution.exporter" in " ".join(p.cmdline()) and model_id in p.cmdline()
            for p in psutil.process_iter(["cmdline"])
        )


def test_without_its_dataset_an_export_is_built_and_says_parity_is_unavailable(client, live_service, clone):
    model_id = clone(dataset_id="deleted0dataset")
    for fmt in ("litert", "litert_int8"):
        assert client.post(f"/models/{model_id}/exports", json={"format": fmt}).status_code == 202
    litert, int8 = (
        _wait(
            client,
            f"/models/{model_id}/exports/{fmt}",
            lambda r: r["status"] in FINAL,
            what=f"{fmt} export without its dataset",
            live_service=live_service,
        )
        for fmt in ("litert", "litert_int8")
    )
    assert litert["status"] == "succeeded", litert
    assert litert["parity"]["available"] is False and "deleted0dataset" in litert["parity"]["reason"]
    assert litert["flagged"] is False
    assert int8["status"] == "failed" and "calibrated" in int8["error"]["message"]


def test_deleting_the_model_deletes_its_exports(client, live_service, clone):
    model_id = clone()
    assert client.post(f"/models/{model_id}/exports", json={"format": "litert"}).status_code == 202
    assert (live_service.model_dir / model_id / "exports" / "litert" / "export.json").is_file()
    assert client.delete(f"/models/{model_id}").status_code == 204
    assert client.get(f"/models/{model_id}/exports").status_code == 404
    assert not (live_service.model_dir / model_id).exists()
