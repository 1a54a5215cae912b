"""`python -m bench.run --accuracy-full`: the figures, the spec changes, the report section, a tiny run."""

from __future__ import annotations

import pytest

from bench.accuracy import (
    SECTION_END,
    SECTION_START,
    aggregate,
    existing_section,
    merge,
    parse_overrides,
    render_section,
    replace_section,
    summarize,
)
from bench.run import parse_args


def test_summarize_takes_after_warmup_final_and_the_last_20_epochs_mean():
    finetune = [0.5] * 80 + [0.9] * 10 + [0.7] * 10
    assert summarize([0.4, 0.6], finetune) == {"after_warmup": 0.6, "final": 0.7, "last20": pytest.approx(0.8)}
    assert summarize([0.6], []) == {"after_warmup": 0.6, "final": 0.6, "last20": None}
    assert summarize([0.6], [0.7, 0.8])["last20"] == pytest.approx(0.75)


def test_project_set_builds_nested_spec_changes():
    overrides = parse_overrides(["input_scaling=unit", "finetune.batchnorm=trainable", "finetune.epochs=3"])
    assert overrides == {"input_scaling": "unit", "finetune": {"batchnorm": "trainable", "epochs": 3}}
    assert merge({"finetune": {"epochs": 100, "unfreeze_from": "conv_dw_12"}}, overrides)["finetune"] == {
        "epochs": 3,
        "unfreeze_from": "conv_dw_12",
        "batchnorm": "trainable",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["input_scaling"])


def test_accuracy_full_defaults_to_the_seeds_schedule_and_needs_data(tmp_path):
    args = parse_args(["--accuracy-full", "--data", str(tmp_path), "--seeds", "42,43,44"])
    assert (args.warmup_epochs, args.finetune_epochs, args.seeds) == (25, 100, [42, 43, 44])
    assert parse_args([]).finetune_epochs == 5  # the default bench keeps its short run
    with pytest.raises(SystemExit):
        parse_args(["--accuracy-full"])


def fake_run(side: str, seed: int, final: float) -> dict:
    return {
        "side": side,
        "seed": seed,
        "after_warmup": final - 0.02,
        "final": final,
        "last20": final - 0.01,
        "num_train": 9,
        "num_validation": 3,
        "seconds": 60.0,
    }


def test_the_section_has_each_seeds_figures_the_means_and_the_gap():
    runs = [
        fake_run("seed", 42, 0.9),
        fake_run("project", 42, 0.92),
        fake_run("seed", 43, 0.8),
        fake_run("project", 43, 0.8),
    ]
    means = aggregate(runs)
    assert means["seed"]["final"] == pytest.approx(0.85) and means["project"]["final"] == pytest.approx(0.86)
    meta = {
        "command": "python -m bench.run --accuracy-full",
        "dataset": "given: 12 images",
        "model": "m",
        "started": "now",
    }
    text = render_section({"meta": meta, "runs": runs, "errors": []})
    assert text.startswith(SECTION_START) and text.rstrip().endswith(SECTION_END)
    assert "| 42 | the seed's recipe (Keras 2) | 0.880 | 0.900 | 0.890 |" in text
    assert "| 43 | the project | 0.780 | 0.800 | 0.790 |" in text
    assert "final +0.010" in text and "given: 12 images" in text


def test_the_section_replaces_its_previous_version_and_survives_the_default_bench(tmp_path):
    from bench.run import _keep_accuracy_section

    first = f"{SECTION_START}\nold\n{SECTION_END}\n"
    report = replace_section("# Benchmarks\n\n## Training\n", first)
    assert report.endswith(first)
    report = replace_section(report, f"{SECTION_START}\nnew\n{SECTION_END}\n")
    assert "old" not in report and report.count(SECTION_START) == 1
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(report)
    rewritten = _keep_accuracy_section("# Benchmarks\n\n## Training (new run)\n", path)
    assert "new run" in rewritten and existing_section(rewritten) == existing_section(report)


@pytest.mark.slow
def test_accuracy_full_runs_both_sides_per_seed_on_the_same_held_out_images(tmp_path):
    from bench.data import generate_dataset
    from bench.run import main

    data = generate_dataset(tmp_path / "data", classes=2, per_class=6, size=(40, 36))
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n")
    argv = ["--accuracy-full", "--data", str(data), "--weights", "none", "--image-size", "32", "--batch-size", "4"]
    argv += ["--warmup-epochs", "1", "--finetune-epochs", "2", "--seeds", "1,2", "--out", str(tmp_path / "out")]
    argv += ["--report", str(report), "--project-set", "input_scaling=unit"]
    assert main(argv) == 0
    text = report.read_text()
    for seed in (1, 2):
        assert f"| {seed} | the seed's recipe (Keras 2) |" in text and f"| {seed} | the project |" in text
    assert text.count("| 8 / 4 |") == 4  # both sides, both seeds: the project's stratified split of 12
    assert "input_scaling=unit" in text


def test_the_means_compare_only_seeds_run_on_both_sides():
    runs = [fake_run("seed", 42, 0.9), fake_run("project", 42, 0.92), fake_run("project", 43, 0.5)]
    means = aggregate(runs)
    assert means["project"]["final"] == pytest.approx(0.92)
    meta = {"command": "c", "dataset": "d", "model": "m", "started": "now"}
    text = render_section({"meta": meta, "runs": runs, "errors": []})
    assert "| mean of 1 (42) | the project |" in text
    assert "seeds 43 ran on one side only" in text
