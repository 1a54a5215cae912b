"""Smoke test of the benchmark suite on a tiny generated dataset. Not a timed test: no speed asserted."""

from __future__ import annotations

import pytest

from bench.data import describe, generate_dataset
from bench.report import render
from finetune.ml.spec import TrainingSpec


def tiny_spec(backbone: str = "mobilenet") -> TrainingSpec:
    return TrainingSpec.model_validate(
        {
            "backbone": backbone,
            "alpha": 0.25 if backbone == "mobilenet" else None,
            "weights": "none",
            "image_size": 32,
            "batch_size": 4,
            "head": {"units": 8},
            "warmup": {"epochs": 1},
            "finetune": {"epochs": 1},
        }
    )


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("bench-data"), classes=3, per_class=8, size=(48, 40))


def test_generated_dataset_is_class_per_folder(tiny_dataset):
    info = describe(tiny_dataset)
    assert info == {"classes": ["class_0", "class_1", "class_2"], "num_images": 24}


@pytest.mark.slow
def test_ceilings_are_positive():
    from bench.ceilings import measure_ceilings

    ceilings = measure_ceilings(tiny_spec(), classes=3, calls=2, max_seconds=1.0)
    for name in (
        "forward_ips",
        "phase1_step_ips",
        "phase2_step_ips",
        "forward_b8_ips",
        "forward_b32_ips",
        "latency_b1_ms",
    ):
        assert getattr(ceilings, name) > 0, name


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")
def test_seed_recipe_trains_and_reports(tiny_dataset):
    from bench.seed_recipe import run_seed_recipe

    result = run_seed_recipe(tiny_dataset, tiny_spec())
    assert (result.num_train, result.num_test) == (18, 6)
    for phase in (result.warmup, result.finetune):
        assert phase.images > 0
        assert phase.fit_ips > 0
        assert phase.steady_ips > 0
        assert 0.0 <= phase.val_accuracy <= 1.0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")
def test_seed_recipe_holds_out_the_projects_validation_images(tiny_dataset):
    from bench.run import project_validation_files
    from bench.seed_recipe import run_seed_recipe

    held_out = project_validation_files(tiny_dataset, tiny_spec())
    assert len(held_out) == 6 and all((tiny_dataset / name).is_file() for name in held_out)
    assert {name.split("/")[0] for name in held_out} == {"class_0", "class_1", "class_2"}  # stratified: 2 each
    one_per_class = {min(name for name in held_out if name.startswith(f"class_{i}/")) for i in range(3)}
    spec = tiny_spec().model_copy(update={"finetune": None})
    result = run_seed_recipe(tiny_dataset, spec, validation_files=one_per_class)
    assert (result.num_train, result.num_test) == (21, 3)


def test_report_renders_with_missing_sections():
    meta = {
        "cpu": "cpu",
        "cores": 2,
        "command": "python -m bench.run",
        "model": "m",
        "dataset": "d",
        "started": "now",
        "versions": {"python": "3", "tensorflow": "2", "keras": "3", "tf_keras": "2"},
    }
    text = render({"meta": meta, "errors": {"serving": "RuntimeError: no API"}})
    assert "not measured" in text
    assert "RuntimeError: no API" in text


@pytest.mark.slow
def test_raw_predictor_measures_both_thread_set_ups_in_a_child(tmp_path):
    from bench.raw_predictor import measure_in_child
    from finetune.stores.models import ModelStore
    from tests.finetune.conftest import FakeResult, colour_classifier
    from tests.finetune.conftest import tiny_spec as tiny_training_spec

    result = FakeResult(
        model=colour_classifier(),
        spec=tiny_training_spec(backbone="vgg16", alpha=None),
        classes=["blue", "green", "red"],
    )
    manifest = ModelStore(tmp_path).save(result)
    for threads, streams in ((0, 1), (1, 2)):
        figures = measure_in_child(tmp_path, manifest["id"], threads=threads, streams=streams)
        assert (figures["threads"], figures["streams"]) == (threads, streams)
        assert figures["latency_b1_ms"] > 0 and figures["forward_b8_ips"] > 0


@pytest.mark.slow
def test_batch_bench_runs_the_batch_runner_and_the_raw_forward_side_by_side(tmp_path):
    from bench.batches import measure_batches
    from finetune.stores.models import ModelStore
    from tests.finetune.conftest import FakeResult, colour_classifier
    from tests.finetune.conftest import tiny_spec as tiny_training_spec
    from tests.helpers import make_image_bytes

    result = FakeResult(
        model=colour_classifier(),
        spec=tiny_training_spec(backbone="vgg16", alpha=None),
        classes=["blue", "green", "red"],
    )
    manifest = ModelStore(tmp_path / "models").save(result)
    figures = measure_batches(
        tmp_path / "models",
        manifest["id"],
        make_image_bytes("red", 64, fmt="JPEG"),
        tmp_path / "work",
        images=40,
        rounds=3,
    )
    assert len(figures["rounds"]) == 3
    for side in ("raw", "batch"):
        rates = sorted(pair[side]["images_per_second"] for pair in figures["rounds"])
        assert figures[side]["images_per_second"] == rates[1]  # the median round
    assert figures["batch"]["images"] == figures["raw"]["images"] == 40
    assert figures["batch"]["errors"] == 0
    assert figures["batch"]["images_per_second"] > 0 and figures["raw"]["images_per_second"] > 0


def test_serve_models_takes_a_stores_models_newest_first(tmp_path):
    """`--serve-models DIR` (the /predict section alone, without training): the store's models, newest first."""
    from bench.run import _given_models, parse_args

    for model_id, created in (("older", "2026-01-01T00:00:00+00:00"), ("newer", "2026-02-01T00:00:00+00:00")):
        (tmp_path / model_id).mkdir()
        (tmp_path / model_id / "manifest.json").write_text(f'{{"id": "{model_id}", "created_at": "{created}"}}')
    args = parse_args(["--skip", "seed", "--skip", "project", "--serve-models", str(tmp_path)])
    assert _given_models(args.serve_models) == {"model_dir": tmp_path.resolve(), "model_ids": ["newer", "older"]}
    with pytest.raises(SystemExit, match="no model"):
        _given_models(tmp_path / "older")
