"""Exports of a trained classifier for serving outside this service, and their parity with it.

Formats (`FORMATS`):

- `savedmodel`: a TensorFlow SavedModel for TF Serving. Its `serving_default` signature takes a batch
  of *encoded* images (`images`: tf.string [N], JPEG/PNG/GIF/BMP bytes of any size) and does, inside
  the graph, what `/predict` does: decode to RGB, the aspect-aware resize of training (shorter side to
  `image_size`, centre crop; bilinear with antialiasing, the closest to Pillow's bilinear), the
  backbone's preprocessing and the model. Outputs: `probabilities` float32 [N, classes] and `classes`
  string [N, classes] (the label of each column, repeated per image, so TF Serving's row format
  `{"instances": [{"b64": ...}]}` answers `{"predictions": [{"probabilities": [...], "classes": [...]}]}`).
  A second signature, `serving_pixels`, takes the resized pixel batch as `litert`/`onnx` do.
- `litert`: a float32 `.tflite`. Input: the resized pixel batch, float32 [N, size, size, 3], RGB,
  values 0..255 (decode and resize as `finetune.ml.images.load_image` does); the backbone's
  preprocessing is inside the graph. Output: float32 probabilities [N, classes].
- `litert_int8`: full-integer quantization (int8 weights and activations, builtin int8 ops only),
  calibrated on up to `CALIBRATION_IMAGES` of the model's own training images. Input: uint8
  [N, size, size, 3], RGB 0..255 (the pixel values exactly, quantization scale 1, zero point 0, so
  a camera buffer goes in as it is); output: float32 probabilities (dequantized in the graph).
- `onnx`: through Keras' own exporter (`model.export(format="onnx")`, tf2onnx underneath), input
  `pixels` float32 [N, size, size, 3] 0..255 as `litert`, output float32 probabilities.

`build_export` writes one format; `load_runner` loads one in this process for measuring (the tests
load them in a fresh process with the formats' own runtimes); `measure_parity` compares an export's
answers with the served model's on held-out images.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.ml.backbones import get_backbone

FORMATS = ("savedmodel", "litert", "litert_int8", "onnx")
# What the download of each format is called (a SavedModel is a folder: downloaded as a .tar.gz of it).
ARTIFACT_FILES = {
    "savedmodel": "savedmodel.tar.gz",
    "litert": "model.tflite",
    "litert_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
MEDIA_TYPES = {
    "savedmodel": "application/gzip",
    "litert": "application/octet-stream",
    "litert_int8": "application/octet-stream",
    "onnx": "application/octet-stream",
}
FLOAT_AGREEMENT_MIN = 0.999  # a float export that agrees less than this with the served model is flagged
INT8_AGREEMENT_MIN = 0.98  # an int8 export below this is flagged (kept: int8 is a trade the user makes)
CALIBRATION_IMAGES = 300
LATENCY_RUNS = 20
SAVEDMODEL_INPUT = "images"


def input_description(fmt: str, image_size: int) -> dict:
    """What the export takes, as recorded with it and shown by the API."""
    if fmt == "savedmodel":
        return {
            "name": SAVEDMODEL_INPUT,
            "dtype": "string",
            "shape": [None],
            "description": "encoded images (JPEG/PNG/GIF/BMP bytes, any size); decoded, resized and "
            "preprocessed in the graph. TF Serving REST: {'instances': [{'b64': ...}]}",
        }
    dtype = "uint8" if fmt == "litert_int8" else "float32"
    return {
        "name": "pixels",
        "dtype": dtype,
        "shape": [None, image_size, image_size, 3],
        "description": f"RGB pixels 0..255 ({dtype}), the image resized so its shorter side is {image_size} "
        "(bilinear) and centre-cropped; the backbone's preprocessing is in the graph",
    }


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


# --- the graphs ------------------------------------------------------------------------------


def pixel_model(model, backbone: str):
    """`model` with the backbone's preprocessing in front: float32 RGB 0..255 in, probabilities out."""
    import keras

    preprocess = get_backbone(backbone).preprocess()
    size = model.input_shape[1]

    class Preprocess(keras.layers.Layer):
        def call(self, pixels):
            return preprocess(pixels)

    inputs = keras.Input((size, size, 3), name="pixels", dtype="float32")
    outputs = model(Preprocess(name="preprocess")(inputs), training=False)
    return keras.Model(inputs, outputs, name="exported_classifier")


def decode_and_resize(encoded, size: int):
    """One encoded image -> float32 [size, size, 3] RGB 0..255, as `load_image` does with Pillow: alpha
    composited on white, grey to RGB, the shorter side scaled to `size` (bilinear, antialiased, rounded
    to whole values as Pillow's uint8 result is) and the centre square cropped."""
    import tensorflow as tf

    def decode_jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    def decode_other():
        image = tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8)
        image = tf.cast(image, tf.float32)
        channels = tf.shape(image)[-1]

        def on_white(colour, alpha):
            alpha = alpha / 255.0
            return tf.round(colour * alpha + 255.0 * (1.0 - alpha))

        return tf.switch_case(
            tf.clip_by_value(channels, 1, 4) - 1,
            [
                lambda: tf.image.grayscale_to_rgb(image[:, :, :1]),
                lambda: tf.image.grayscale_to_rgb(on_white(image[:, :, :1], image[:, :, 1:2])),
                lambda: image[:, :, :3],
                lambda: on_white(image[:, :, :3], image[:, :, 3:4]),
            ],
        )

    image = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.cast(decode_jpeg(), tf.float32), decode_other)
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    scale = size / tf.minimum(height, width)
    new_height = tf.maximum(size, tf.cast(tf.round(height * scale), tf.int32))
    new_width = tf.maximum(size, tf.cast(tf.round(width * scale), tf.int32))
    resized = tf.image.resize(image, [new_height, new_width], method="bilinear", antialias=True)
    resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return resized[top : top + size, left : left + size, :]


def build_savedmodel(model, manifest: dict, folder: Path) -> None:
    import keras
    import tensorflow as tf

    size, classes = manifest["image_size"], manifest["classes"]
    wrapped = pixel_model(model, manifest["backbone"])
    labels = tf.constant(classes)

    def answer(probabilities):
        count = tf.shape(probabilities)[0]
        return {"probabilities": probabilities, "classes": tf.tile(labels[None, :], [count, 1])}

    def serve_encoded(images):
        pixels = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, size),
            images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return answer(wrapped(pixels, training=False))

    def serve_pixels(pixels):
        return answer(wrapped(pixels, training=False))

    # Not `archive.track(wrapped)`: the endpoints track the variables they use, and tracking the model
    # as well stored every weight twice (Keras 3.15: a SavedModel of twice the model's size).
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "serving_default", serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name=SAVEDMODEL_INPUT)]
    )
    archive.add_endpoint(
        "serving_pixels",
        serve_pixels,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(folder), verbose=False)


def build_litert(model, manifest: dict, path: Path, *, calibration: np.ndarray | None = None) -> None:
    """Float32, or full-integer int8 when `calibration` (uint8 pixels [n, size, size, 3]) is given."""
    import tensorflow as tf

    size = manifest["image_size"]
    wrapped = pixel_model(model, manifest["backbone"])
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")]
    options = {}
    if calibration is not None:
        if not len(calibration):
            raise ValueError("int8 quantization needs calibration images; none were given")

        def representative():
            # One frame of pure black and white first, so the input's calibrated range is exactly 0..255:
            # quantization scale 1, zero point 0, and the uint8 input takes the pixel values as they are.
            extremes = np.zeros((1, size, size, 3), np.float32)
            extremes[:, size // 2 :] = 255.0
            yield [extremes]
            for image in calibration:
                yield [image[None].astype(np.float32)]

        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": representative,
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
            "inference_input_type": tf.uint8,
            "inference_output_type": tf.float32,
        }
    wrapped.export(str(path), format="litert", input_signature=signature, verbose=False, **options)


def build_onnx(model, manifest: dict, path: Path) -> None:
    import tensorflow as tf

    size = manifest["image_size"]
    wrapped = pixel_model(model, manifest["backbone"])
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")]
    wrapped.export(str(path), format="onnx", input_signature=signature, verbose=False)


def build_export(model, manifest: dict, fmt: str, out_dir: Path, *, calibration: np.ndarray | None = None) -> Path:
    """Write `fmt` of `model` (a loaded Keras classifier, `manifest` its record) into `out_dir` as
    `ARTIFACT_FILES[fmt]`; returns its path. `calibration` (uint8 training pixels) is needed by int8."""
    check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ARTIFACT_FILES[fmt]
    if fmt == "savedmodel":
        with tempfile.TemporaryDirectory(prefix="savedmodel-", dir=out_dir) as scratch:
            folder = Path(scratch) / "savedmodel"
            build_savedmodel(model, manifest, folder)
            pack_folder(folder, target)
    elif fmt == "litert":
        build_litert(model, manifest, target)
    elif fmt == "litert_int8":
        if calibration is None:
            raise ValueError("int8 quantization is calibrated on the model's training images; none were given")
        build_litert(model, manifest, target, calibration=calibration)
    else:
        build_onnx(model, manifest, target)
    return target


def pack_folder(folder: Path, target: Path) -> None:
    """A .tar.gz of `folder` whose entries sit under `folder.name/`."""
    partial = target.with_name(target.name + ".part")
    with tarfile.open(partial, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    os.replace(partial, target)


def unpack_savedmodel(archive_path: Path, into: Path) -> Path:
    """The SavedModel folder from a `savedmodel.tar.gz`, unpacked under `into`."""
    with tarfile.open(archive_path, "r:gz") as archive:
        archive.extractall(into, filter="data")
    return Path(into) / "savedmodel"


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# --- running an export here ------------------------------------------------------------------


@dataclass
class Runner:
    """An export loaded in this process. `pixels(batch)` takes uint8 [n, size, size, 3]; `encoded(list of
    bytes)` only the SavedModel has. Both return float32 probabilities [n, classes]."""

    pixels: Callable[[np.ndarray], np.ndarray]
    encoded: Callable[[Sequence[bytes]], np.ndarray] | None = None
    cleanup: Callable[[], None] = lambda: None


def load_runner(fmt: str, artifact: Path) -> Runner:
    check_format(fmt)
    artifact = Path(artifact)
    if fmt == "savedmodel":
        import tensorflow as tf

        scratch = Path(tempfile.mkdtemp(prefix="savedmodel-run-"))
        loaded = tf.saved_model.load(str(unpack_savedmodel(artifact, scratch)))
        serve, serve_pixels = loaded.signatures["serving_default"], loaded.signatures["serving_pixels"]

        def run_encoded(images: Sequence[bytes]) -> np.ndarray:
            return serve(**{SAVEDMODEL_INPUT: tf.constant(list(images))})["probabilities"].numpy()

        def run_pixels(pixels: np.ndarray) -> np.ndarray:
            return serve_pixels(pixels=tf.constant(pixels, tf.float32))["probabilities"].numpy()

        return Runner(run_pixels, run_encoded, cleanup=lambda: shutil.rmtree(scratch, ignore_errors=True))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return Runner(lambda pixels: session.run(None, {name: pixels.astype(np.float32)})[0])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifact), num_threads=1)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    scale, zero_point = source.get("quantization", (0.0, 0))

    def run_one(pixels: np.ndarray) -> np.ndarray:
        values = pixels[None].astype(np.float32)
        if np.issubdtype(source["dtype"], np.integer) and scale:
            info = np.iinfo(source["dtype"])
            values = np.clip(np.round(values / scale + zero_point), info.min, info.max)
        interpreter.set_tensor(source["index"], values.astype(source["dtype"]))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(target["index"])[0], dtype=np.float32)

    return Runner(lambda pixels: np.stack([run_one(image) for image in pixels]))


# --- parity ----------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """The model's held-out images: resized pixels as training decoded them, the files' own bytes, labels."""

    pixels: np.ndarray
    encoded: list[bytes]
    labels: np.ndarray


def agreement_threshold(fmt: str) -> float:
    return INT8_AGREEMENT_MIN if fmt == "litert_int8" else FLOAT_AGREEMENT_MIN


def median_latency_ms(run: Callable[[], object], *, runs: int = LATENCY_RUNS) -> float:
    run()  # the first call may build kernels or trace
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure_parity(fmt: str, runner: Runner, reference: Callable[[np.ndarray], np.ndarray], held_out: HeldOut) -> dict:
    """The export against the served model (`reference`: uint8 pixels -> probabilities) on `held_out`:
    top-1 agreement, largest absolute probability difference, both accuracies, single-image latencies.
    A SavedModel is run end to end on the files' bytes (its own decoding and resize), and also on the
    same pixels as the served model (`graph_agreement`: the graph alone, without the resize's rounding)."""
    expected = reference(held_out.pixels)
    if runner.encoded is not None:
        answered = np.concatenate(
            [runner.encoded(held_out.encoded[i : i + 16]) for i in range(0, len(held_out.encoded), 16)]
        )
    else:
        answered = runner.pixels(held_out.pixels)
    top_expected, top_answered = np.argmax(expected, axis=-1), np.argmax(answered, axis=-1)
    one = held_out.pixels[:1]
    figures = {
        "available": True,
        "reason": None,
        "images": int(len(held_out.labels)),
        "agreement": float(np.mean(top_expected == top_answered)),
        "max_abs_diff": float(np.max(np.abs(expected - answered))),
        "accuracy": float(np.mean(top_answered == held_out.labels)),
        "keras_accuracy": float(np.mean(top_expected == held_out.labels)),
        "latency_ms": None,
        "keras_latency_ms": round(median_latency_ms(lambda: reference(one)), 3),
    }
    if runner.encoded is not None:
        first = held_out.encoded[:1]
        figures["latency_ms"] = round(median_latency_ms(lambda: runner.encoded(first)), 3)
        graph = runner.pixels(held_out.pixels)
        figures["graph_agreement"] = float(np.mean(np.argmax(graph, axis=-1) == top_expected))
        figures["graph_max_abs_diff"] = float(np.max(np.abs(expected - graph)))
    else:
        figures["latency_ms"] = round(median_latency_ms(lambda: runner.pixels(one)), 3)
    return figures


def unavailable_parity(reason: str) -> dict:
    return {"available": False, "reason": reason, "images": 0}


def flag(fmt: str, parity: dict) -> str | None:
    """Why the export's parity falls short of its format's bar, or None."""
    if not parity.get("available"):
        return None
    threshold = agreement_threshold(fmt)
    if parity["agreement"] < threshold:
        return f"top-1 agreement {parity['agreement']:.4f} with the served model < {threshold}"
    return None


def load_held_out(dataset_dir: Path, manifest: dict, *, max_pixels: int = 50_000_000) -> tuple[HeldOut, np.ndarray]:
    """The held-out split the model was evaluated on (the same scan, decoding and split as training,
    from the manifest's spec: its test split when it has one, else validation) and the training
    pixels, for int8 calibration."""
    from finetune.ml.pipeline import decode_dataset
    from finetune.ml.scan import scan_dataset, split_dataset

    spec = manifest["spec"]
    scan = scan_dataset(dataset_dir, probe=False, max_pixels=max_pixels)
    decoded = decode_dataset(scan, size=manifest["image_size"], max_pixels=max_pixels)
    if decoded.scan.classes != manifest["classes"]:
        raise ValueError(f"the dataset's classes {decoded.scan.classes} are not the model's {manifest['classes']}")
    splits = split_dataset(
        decoded.scan,
        decoded.labels,
        validation_split=spec.get("validation_split", 0.25),
        test_split=spec.get("test_split"),
        seed=spec.get("seed", 42),
    )
    held_idx = splits.test if len(splits.test) else splits.validation
    encoded = [(Path(decoded.scan.root) / decoded.scan.files[i]).read_bytes() for i in held_idx]
    held_out = HeldOut(pixels=decoded.pixels[held_idx], encoded=encoded, labels=decoded.labels[held_idx])
    rng = np.random.default_rng(spec.get("seed", 42))
    chosen = np.sort(rng.permutation(splits.train)[:CALIBRATION_IMAGES])
    return held_out, np.asarray(decoded.pixels[chosen])


def image_bytes_of(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """An encoded image of a uint8 array (for tests and examples)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


# --- the whole step, shared by the worker and the CLI ----------------------------------------


@dataclass
class ExportOutcome:
    artifact: Path
    build_seconds: float
    size_bytes: int
    unpacked_bytes: int | None
    parity: dict
    flag_reason: str | None
    input: dict


def export_and_measure(
    model_path: Path,
    manifest: dict,
    fmt: str,
    out_dir: Path,
    *,
    dataset_dir: Path | None,
    dataset_missing_reason: str | None = None,
    max_pixels: int = 50_000_000,
) -> ExportOutcome:
    """Build `fmt` of the model saved at `model_path` into `out_dir` and measure it against the served
    model (`Predictor`) on the held-out images of `dataset_dir` (the model's own dataset). Without the
    dataset, parity is recorded as unavailable with `dataset_missing_reason`, and int8, which needs
    the training images to calibrate, fails."""
    import keras

    from finetune.ml.predictor import Predictor

    check_format(fmt)
    held_out = calibration = None
    reason = dataset_missing_reason or "no dataset to measure on"
    if dataset_dir is not None:
        try:
            held_out, calibration = load_held_out(Path(dataset_dir), manifest, max_pixels=max_pixels)
        except Exception as error:  # the dataset changed or broke: the export itself can still be built
            reason = f"the held-out images could not be loaded: {type(error).__name__}: {error}"
    if fmt == "litert_int8" and calibration is None:
        raise ValueError(
            f"int8 quantization is calibrated on the model's training images, which are unavailable: {reason}"
        )
    model = keras.models.load_model(model_path, compile=False)
    started = time.perf_counter()
    artifact = build_export(model, manifest, fmt, Path(out_dir), calibration=calibration)
    build_seconds = time.perf_counter() - started
    del model
    unpacked = None
    runner = load_runner(fmt, artifact)
    try:
        if held_out is not None:
            reference = Predictor(model_path, manifest).predict_pixels
            parity = measure_parity(fmt, runner, reference, held_out)
        else:
            parity = unavailable_parity(reason)
    finally:
        runner.cleanup()
    if fmt == "savedmodel":
        with tempfile.TemporaryDirectory(prefix="savedmodel-size-") as scratch:
            unpacked = folder_bytes(unpack_savedmodel(artifact, Path(scratch)))
    return ExportOutcome(
        artifact=artifact,
        build_seconds=round(build_seconds, 3),
        size_bytes=artifact.stat().st_size,
        unpacked_bytes=unpacked,
        parity=parity,
        flag_reason=flag(fmt, parity),
        input=input_description(fmt, manifest["image_size"]),
    )
