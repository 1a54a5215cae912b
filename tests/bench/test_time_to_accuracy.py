"""The time-to-accuracy row: the challenger's spec, the verdict and its section of BENCHMARKS.md."""

from __future__ import annotations

from bench.time_to_accuracy import (
    SECTION_END,
    SECTION_START,
    assemble,
    early_stopping_spec,
    render_section,
    replace_section,
)
from finetune.ml.spec import TrainingSpec


def run(accuracy: float, seconds: float, warmup: int, finetune: int) -> dict:
    return {
        "final": 0.5,
        "metrics_accuracy": accuracy,
        "seconds": seconds,
        "warmup": [0.5] * warmup,
        "finetune": [0.5] * finetune,
    }


def test_the_challenger_stops_early_in_both_phases_and_the_default_spec_does_not():
    seed = TrainingSpec(backbone="mobilenet", alpha=0.25)
    challenger = early_stopping_spec(seed)
    assert challenger.warmup.early_stopping.monitor == "val_loss"
    assert challenger.finetune.early_stopping.restore_best
    assert (challenger.warmup.epochs, challenger.finetune.epochs) == (25, 100)
    assert seed.warmup.early_stopping is None and seed.finetune.early_stopping is None


def test_the_verdict_needs_the_seeds_accuracy_in_a_fifth_of_its_time():
    challenger = early_stopping_spec(TrainingSpec(backbone="mobilenet", alpha=0.25))
    seed = run(0.90, 1000.0, 25, 100)
    passing = assemble({"seed": seed, "project": run(0.91, 190.0, 6, 12)}, challenger, "d", "c", total_s=1.0)
    assert passing["verdict"] == {"time_share": 0.19, "reached": True, "fast_enough": True, "pass": True}
    assert passing["sides"]["project"]["warmup_epochs"] == 6 and passing["sides"]["seed"]["finetune_epochs"] == 100
    slow = assemble({"seed": seed, "project": run(0.91, 210.0, 6, 12)}, challenger, "d", "c", total_s=1.0)
    worse = assemble({"seed": seed, "project": run(0.89, 100.0, 6, 12)}, challenger, "d", "c", total_s=1.0)
    assert not slow["verdict"]["pass"] and not worse["verdict"]["pass"]
    section = render_section(passing)
    assert "| the project, early stopping | 0.910 | — / — / — | 3.2 | 6 + 12 |" in section and "**pass**" in section
    report = replace_section("# Benchmarks\n\nother\n", section)
    assert replace_section(report, render_section(slow)).count(SECTION_START) == 1
    assert "**FAIL**" in replace_section(report, render_section(slow)) and report.index(SECTION_END) > 0


def test_the_flag_needs_data_takes_the_full_schedule_and_its_section_survives_the_default_bench(tmp_path):
    import pytest

    from bench.run import _keep_accuracy_section, parse_args

    args = parse_args(["--time-to-accuracy", "--data", str(tmp_path)])
    assert (args.warmup_epochs, args.finetune_epochs) == (25, 100)
    with pytest.raises(SystemExit):
        parse_args(["--time-to-accuracy"])
    challenger = early_stopping_spec(TrainingSpec(backbone="mobilenet", alpha=0.25))
    row = assemble(
        {"seed": run(0.9, 1000.0, 25, 100), "project": run(0.95, 100.0, 7, 9)}, challenger, "d", "c", total_s=1
    )
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(replace_section("# Benchmarks\n\n## Training (old run)\n", render_section(row)))
    rewritten = _keep_accuracy_section("# Benchmarks\n\n## Training (new run)\n", path)
    assert "new run" in rewritten and "old run" not in rewritten
    assert "| the project, early stopping | 0.950 | — / — / — | 1.7 | 7 + 9 |" in rewritten


def test_both_sides_are_judged_on_the_projects_untouched_test_split(tmp_path):
    """With HELD_OUT's test split the images handed to the seed's recipe as its held-out set are the
    project's test images: none of them in the project's train or validation split."""
    import numpy as np

    from bench.run import project_validation_files
    from bench.time_to_accuracy import HELD_OUT
    from finetune.ml.scan import scan_dataset, split_dataset
    from tests.helpers import make_image

    for name in ("red", "blue", "green"):
        (tmp_path / name).mkdir()
        for n in range(20):
            make_image(name, 16, seed=n).save(tmp_path / name / f"{n}.png")
    spec = TrainingSpec(backbone="mobilenet", alpha=0.25).model_copy(update=HELD_OUT)
    scan = scan_dataset(tmp_path, probe=False)
    splits = split_dataset(scan, np.asarray(scan.labels), validation_split=0.2, test_split=0.25, seed=spec.seed)
    files = [scan.files[i] for i in range(len(scan.files))]
    judged = project_validation_files(tmp_path, spec)
    assert judged == {files[i] for i in splits.test} and len(judged) == 15  # 5 of each class's 20
    assert not judged & {files[i] for i in (*splits.train, *splits.validation)}
    assert project_validation_files(tmp_path, spec.model_copy(update={"test_split": None})) != judged
