"""finetune/ml/export.py: the in-graph decoding and resize against Pillow's, each format built from a
tiny model and measured against the served model, the flags, and `finetune export` (issue 13)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from finetune.ml import export
from finetune.ml.images import load_image

SIZE = 32


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth colours with a little noise, like a photo (not pure noise, which no resize agrees on)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray((np.arange(width)[None, :].repeat(height, 0) * 255 // width).astype(np.uint8))
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


@pytest.mark.parametrize(
    ("fmt", "mode", "width", "height"),
    [
        ("PNG", "RGB", 100, 60),
        ("PNG", "RGB", 32, 32),
        ("PNG", "RGBA", 45, 90),
        ("PNG", "L", 64, 48),
        ("JPEG", "RGB", 120, 80),
        ("BMP", "RGB", 33, 70),
        ("GIF", "P", 50, 50),
    ],
)
def test_the_graph_decodes_and_resizes_as_pillow_does(fmt, mode, width, height):
    import tensorflow as tf

    data = encoded(photo(width, height, mode), fmt)
    expected = load_image(data, name="x", size=SIZE, max_pixels=10**8).astype(np.float32)
    got = export.decode_and_resize(tf.constant(data), SIZE).numpy()
    assert got.shape == (SIZE, SIZE, 3)
    difference = np.abs(got - expected)
    # Pillow rounds between its two passes, TensorFlow does not: a step or two at most, rarely
    assert difference.max() <= 3 and difference.mean() < 0.5, (difference.max(), difference.mean())
    if (width, height) == (SIZE, SIZE):
        assert difference.max() == 0


@pytest.fixture(scope="module")
def saved(tmp_path_factory, factories):
    """A model folder (the colour classifier: blue/green/red, VGG preprocessing) and its dataset."""
    from finetune.stores.models import ModelStore

    root = tmp_path_factory.mktemp("export")
    dataset = factories.make_dataset_dir(root / "data", classes=("blue", "green", "red"), per_class=8, size=40)
    result = factories.FakeResult(
        model=factories.colour_classifier(),
        spec=factories.tiny_spec(backbone="vgg16", alpha=None, image_size=SIZE),
        classes=["blue", "green", "red"],
    )
    manifest = ModelStore(root / "models").save(result)
    return root / "models" / manifest["id"], manifest, dataset


@pytest.mark.parametrize("fmt", ["litert", "onnx", "savedmodel", "litert_int8"])
def test_each_format_is_built_and_measured_against_the_served_model(saved, fmt, tmp_path):
    folder, manifest, dataset = saved
    outcome = export.export_and_measure(folder / "model.keras", manifest, fmt, tmp_path, dataset_dir=dataset)
    assert outcome.artifact.name == export.ARTIFACT_FILES[fmt] and outcome.size_bytes > 0
    parity = outcome.parity
    assert parity["available"] and parity["images"] == 6  # 2 of each class's 8 held out
    assert parity["keras_accuracy"] == 1.0  # the colour classifier is right
    assert parity["agreement"] >= export.agreement_threshold(fmt)
    assert parity["max_abs_diff"] < (0.05 if fmt == "litert_int8" else 1e-4)
    assert parity["latency_ms"] > 0 and parity["keras_latency_ms"] > 0
    assert outcome.flag_reason is None
    assert outcome.input["dtype"] == {"savedmodel": "string", "litert_int8": "uint8"}.get(fmt, "float32")
    if fmt == "savedmodel":
        assert parity["graph_agreement"] == 1.0 and outcome.unpacked_bytes > 0
        runner = export.load_runner(fmt, outcome.artifact)
        try:
            probabilities = runner.encoded([encoded(photo(70, 40), "JPEG"), encoded(photo(40, 70), "PNG")])
        finally:
            runner.cleanup()
        assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_without_the_dataset_parity_is_unavailable_and_int8_refused(saved, tmp_path):
    folder, manifest, _ = saved
    outcome = export.export_and_measure(
        folder / "model.keras", manifest, "litert", tmp_path, dataset_dir=None, dataset_missing_reason="gone"
    )
    assert outcome.parity == {"available": False, "reason": "gone", "images": 0} and outcome.flag_reason is None
    with pytest.raises(ValueError, match="calibrated"):
        export.export_and_measure(folder / "model.keras", manifest, "litert_int8", tmp_path, dataset_dir=None)


def test_flags_follow_each_formats_bar():
    assert export.flag("onnx", {"available": True, "agreement": 0.999}) is None
    assert "0.9980 " in export.flag("onnx", {"available": True, "agreement": 0.998})
    assert export.flag("litert_int8", {"available": True, "agreement": 0.985}) is None
    assert "< 0.98" in export.flag("litert_int8", {"available": True, "agreement": 0.97})
    assert export.flag("litert_int8", {"available": False}) is None
    with pytest.raises(ValueError, match="unknown export format"):
        export.check_format("coreml")


def test_cli_export_writes_the_file_and_prints_the_figures(saved, tmp_path, capsys):
    from finetune.cli import main

    folder, _, dataset = saved
    out = tmp_path / "out" / "colours.onnx"
    assert main(["export", str(folder), "--format", "onnx", "--out", str(out), "--dataset", str(dataset)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["file"] == str(out.resolve()) and report["size_bytes"] == out.stat().st_size
    assert report["parity"]["agreement"] == 1.0 and report["flagged"] is False

    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2  # not a model folder
