"""Time to accuracy (``python -m bench.run --time-to-accuracy --data DIR``; issue 15).

The reference is the seed's recipe at its full schedule (25 + 100 epochs); the challenger is the
project's job with early stopping in both phases (``early_stopping_spec``; the default spec stays the
seed's). Both run one after the other in this run, each in a child process of its own
(``python -m bench.accuracy``, as ``--accuracy-full`` runs them), judged on the same untouched images:
the project's stratified test split (``HELD_OUT``). The project's early stopping watches its
validation split, never the test images; the seed's recipe, which chooses nothing, trains on the
project's train and validation images together (so it has more data, not less). The target: the
project's final accuracy on the test images at least the seed's, in at most a fifth of the seed's wall
time. Each side's epochs per phase are reported.

Not part of the default run: the seed's side alone is 125 epochs (tens of minutes on a CPU).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

SECTION_START = "<!-- time-to-accuracy:start -->"
SECTION_END = "<!-- time-to-accuracy:end -->"
MAX_TIME_SHARE = 0.2  # the project's wall time over the seed's
# A quarter of each class is the test both sides are judged on (the seed's own held-out share); a fifth
# of each class is the project's validation split, what its early stopping watches.
HELD_OUT = {"validation_split": 0.2, "test_split": 0.25}

# The challenger's phases: the seed's optimizers and epochs as the most each phase may run, each stopped
# once the held-out figure has not improved for `patience` epochs, its best epoch kept; the finetune's
# SGD with momentum 0.9 (the seed's has none) so it gets somewhere in the few epochs it is given.
# The finetune watches accuracy: on animals-mini (45 held-out images, seed 42) a first run watching
# val_loss stopped after 5 finetune epochs keeping the first (0.844) while epochs 3-4 reached 0.867.
WARMUP_STOPPING = {"monitor": "val_loss", "patience": 3, "min_delta": 0.0, "restore_best": True}
FINETUNE_STOPPING = {"monitor": "val_accuracy", "patience": 4, "min_delta": 0.0, "restore_best": True}
FINETUNE_MOMENTUM = 0.9


def early_stopping_spec(spec):
    """`spec` (the seed's schedule) with early stopping in both phases and the finetune's momentum."""
    return spec.model_validate(
        {
            **spec.model_dump(),
            "warmup": {**spec.warmup.model_dump(), "early_stopping": WARMUP_STOPPING},
            "finetune": {
                **spec.finetune.model_dump(),
                "early_stopping": FINETUNE_STOPPING,
                "momentum": FINETUNE_MOMENTUM,
            },
        }
    )


def side_figures(run: dict) -> dict:
    """Accuracy (the final model's on the held-out images), wall seconds and epochs per phase of one side."""
    accuracy = run.get("metrics_accuracy")
    if accuracy is None:
        accuracy = run["final"]
    return {
        "accuracy": accuracy,
        "seconds": run["seconds"],
        "images": _images(run),
        "warmup_epochs": len(run["warmup"]),
        "finetune_epochs": len(run["finetune"]),
    }


def _images(run: dict) -> str:
    """train / validation / test counts; the seed's recipe has no validation apart from what it is judged on."""
    if "num_test" in run:
        return f"{run['num_train']} / {run['num_validation']} / {run['num_test']}"
    return f"{run.get('num_train', '—')} / — / {run.get('num_validation', '—')}"


def judge(seed: dict, project: dict) -> dict:
    share = project["seconds"] / seed["seconds"] if seed["seconds"] else None
    reached = project["accuracy"] >= seed["accuracy"]
    fast = share is not None and share <= MAX_TIME_SHARE
    return {"time_share": share, "reached": reached, "fast_enough": fast, "pass": reached and fast}


def run_time_to_accuracy(spec, data_dir: Path, dataset_text: str, command: str, out: Path) -> dict:
    from bench.accuracy import run_in_child

    started = time.perf_counter()
    reference = spec.model_copy(update=HELD_OUT)
    challenger = early_stopping_spec(reference)
    runs = {
        "seed": run_in_child("seed", data_dir, reference, out / "tta" / "seed.json"),
        "project": run_in_child("project", data_dir, challenger, out / "tta" / "project.json"),
    }
    return assemble(runs, challenger, dataset_text, command, total_s=time.perf_counter() - started)


def assemble(runs: dict, challenger, dataset_text: str, command: str, *, total_s: float) -> dict:
    figures = {side: side_figures(run) for side, run in runs.items()}
    return {
        "meta": {
            "command": command,
            "dataset": dataset_text,
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            "total_s": total_s,
            "challenger": {"warmup": challenger.warmup.model_dump(), "finetune": challenger.finetune.model_dump()},
        },
        "sides": figures,
        "verdict": judge(figures["seed"], figures["project"]),
    }


def render_section(results: dict) -> str:
    meta, sides, verdict = results["meta"], results["sides"], results["verdict"]
    seed, project = sides["seed"], sides["project"]
    status = "pass" if verdict["pass"] else "FAIL"
    share = "—" if verdict["time_share"] is None else f"{verdict['time_share']:.2f}"
    lines = [
        SECTION_START,
        "## Time to accuracy (`--time-to-accuracy`)",
        "",
        "Not part of the default run. The seed's recipe at its full schedule against the project's job with "
        "early stopping, one after the other, judged on the same untouched test images (a quarter of each "
        "class; the project's early stopping watches its own validation fifth, the seed's recipe trains on "
        "those too); target: at least the seed's final "
        f"test accuracy in at most {MAX_TIME_SHARE:.0%} of its wall time.",
        "",
        f"- command: `{meta['command']}`",
        f"- data set: {meta['dataset']}",
        f"- the project's phases: warmup {meta['challenger']['warmup']}; finetune {meta['challenger']['finetune']}",
        "",
        "| side | test accuracy | train / validation / test images | wall minutes | epochs (warmup + finetune) |",
        "| --- | --- | --- | --- | --- |",
        f"| the seed's recipe, 25 + 100 | {seed['accuracy']:.3f} | {seed['images']} | {seed['seconds'] / 60:.1f} | "
        f"{seed['warmup_epochs']} + {seed['finetune_epochs']} |",
        f"| the project, early stopping | {project['accuracy']:.3f} | {project['images']} | "
        f"{project['seconds'] / 60:.1f} | "
        f"{project['warmup_epochs']} + {project['finetune_epochs']} |",
        "",
        f"- time share {share} (target ≤ {MAX_TIME_SHARE}), accuracy reached: {verdict['reached']} — **{status}**",
        "",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        return head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + section
