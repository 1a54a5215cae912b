"""Accuracy at the seed's full schedule (``python -m bench.run --accuracy-full --data DIR``).

The seed's Keras 2 recipe (``bench.seed_recipe``) and the project's training
(``finetune.ml.training.recipe.train``) on a real class-per-folder data set, judged on
the same held-out images: the project's stratified split (a quarter, ``spec.seed``),
handed to the seed's recipe as ``validation_files``. Each run (one side, one seed) is a
child process of its own (``python -m bench.accuracy``), so Keras 2 and Keras 3 never share a
process and every run starts from the same state. Per run: the held-out accuracy after the
warmup, at the end (final) and its mean over the last 20 finetune epochs.

``--seeds 42,43,44`` repeats both sides per seed; ``spec.seed`` sets the split, the head's
initial weights, dropout, the shuffling and the augmentation, so a seed also draws a new
held-out quarter, the same one on both sides. ``--project-set key=value`` changes the
project's spec for an ablation (``input_scaling=unit``, ``finetune.batchnorm=trainable``);
the seed's side is the seed's recipe whatever the spec says.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LAST_EPOCHS = 20
SECTION_START = "<!-- accuracy-full:start -->"
SECTION_END = "<!-- accuracy-full:end -->"
SIDES = ("seed", "project")


def summarize(warmup: list[float], finetune: list[float], *, last: int = LAST_EPOCHS) -> dict:
    """After warmup, final and mean of the last `last` finetune epochs, from per-epoch held-out accuracies."""
    tail = finetune[-last:] if finetune else []
    return {
        "after_warmup": warmup[-1] if warmup else None,
        "final": finetune[-1] if finetune else (warmup[-1] if warmup else None),
        "last20": sum(tail) / len(tail) if tail else None,
    }


def parse_overrides(pairs: list[str]) -> dict:
    """``["input_scaling=unit", "finetune.batchnorm=trainable"]`` -> a nested dict for the spec."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--project-set wants key=value, not {pair!r}")
        try:
            parsed = json.loads(value)  # numbers, true/false/null, lists
        except json.JSONDecodeError:
            parsed = value  # a plain word: "unit", "trainable"
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = parsed
    return out


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def run_seed_side(data_dir: Path, spec) -> dict:
    from bench.run import project_validation_files
    from bench.seed_recipe import run_seed_recipe

    result = run_seed_recipe(data_dir, spec, validation_files=project_validation_files(data_dir, spec))
    warmup = result.warmup.history.get("val_accuracy", [])
    finetune = result.finetune.history.get("val_accuracy", []) if result.finetune else []
    return {"num_train": result.num_train, "num_validation": result.num_test, "warmup": warmup, "finetune": finetune}


def run_project_side(data_dir: Path, spec) -> dict:
    from finetune.ml.training.recipe import train

    result = train(spec, dataset_dir=data_dir)
    curve = {
        "warmup": [row["val_accuracy"] for row in result.history if row["phase"] == "warmup"],
        "finetune": [row["val_accuracy"] for row in result.history if row["phase"] == "finetune"],
    }
    return {
        "num_train": result.num_train,
        "num_validation": result.num_validation,
        "num_test": result.num_test,
        **curve,
        "metrics_accuracy": result.metrics.get("accuracy"),
    }


def run_one(side: str, data_dir: Path, spec) -> dict:
    """One side, one seed, in this process: its curves and summary figures."""
    started = time.perf_counter()
    figures = run_seed_side(data_dir, spec) if side == "seed" else run_project_side(data_dir, spec)
    return {
        "side": side,
        "seed": spec.seed,
        "spec": spec.model_dump(),
        **figures,
        **summarize(figures["warmup"], figures["finetune"]),
        "seconds": time.perf_counter() - started,
    }


def run_in_child(side: str, data_dir: Path, spec, out_json: Path, *, log: Path | None = None) -> dict:
    """``run_one`` in a child process (``python -m bench.accuracy``); its result, read back from ``out_json``."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.accuracy", "--side", side, "--data", str(data_dir)]
    command += ["--spec", json.dumps(spec.model_dump()), "--out", str(out_json)]
    with open(log or out_json.with_suffix(".log"), "w") as stream:
        subprocess.run(command, check=True, stdout=stream, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    return json.loads(out_json.read_text())


def paired_seeds(runs: list[dict]) -> list[int]:
    """The seeds run on both sides: the only ones the means compare."""
    return sorted(
        {run["seed"] for run in runs if run["side"] == SIDES[0]}
        & {run["seed"] for run in runs if run["side"] == SIDES[1]}
    )


def aggregate(runs: list[dict]) -> dict:
    """Per side: the mean of each figure over the seeds run on both sides."""
    paired, out = set(paired_seeds(runs)), {}
    for side in SIDES:
        mine = [run for run in runs if run["side"] == side and run["seed"] in paired]
        out[side] = {
            key: (
                sum(run[key] for run in mine) / len(mine)
                if mine and all(run[key] is not None for run in mine)
                else None
            )
            for key in ("after_warmup", "final", "last20")
        }
    return out


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_section(results: dict) -> str:
    """The BENCHMARKS.md section for the last ``--accuracy-full`` run, between its markers."""
    meta, runs = results["meta"], results["runs"]
    means = aggregate(runs)
    lines = [
        SECTION_START,
        "## Accuracy at the seed's full schedule (`--accuracy-full`)",
        "",
        "Written by `python -m bench.run --accuracy-full`; not part of the default run. Held-out accuracy, "
        "both sides on the same images (the project's stratified split of the seed's quarter, per seed).",
        "",
        "|  |  |",
        "| --- | --- |",
        f"| command | `{meta['command']}` |",
        f"| data set | {meta['dataset']} |",
        f"| model | {meta['model']} |",
        f"| project spec changes | {meta.get('project_set') or 'none (the defaults)'} |",
        f"| date (UTC), whole run | {meta['started']}, {meta.get('total_s', 0) / 60:.0f} min |",
        "",
        "| seed | side | after warmup | final | mean of the last 20 epochs | train / held out | minutes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in sorted(runs, key=lambda run: (run["seed"], SIDES.index(run["side"]))):
        name = "the seed's recipe (Keras 2)" if run["side"] == "seed" else "the project"
        lines.append(
            f"| {run['seed']} | {name} | {_fmt(run['after_warmup'])} | {_fmt(run['final'])} | "
            f"{_fmt(run['last20'])} | {run['num_train']} / {run['num_validation']} | {run['seconds'] / 60:.0f} |"
        )
    seeds = paired_seeds(runs)
    for side in SIDES:
        name = "the seed's recipe" if side == "seed" else "the project"
        mean = means[side]
        lines.append(
            f"| mean of {len(seeds)} ({', '.join(map(str, seeds))}) | {name} | {_fmt(mean['after_warmup'])} | **{_fmt(mean['final'])}** | "
            f"**{_fmt(mean['last20'])}** |  |  |"
        )
    unpaired = sorted({run["seed"] for run in runs} - set(seeds))
    if unpaired:
        lines += ["", f"- seeds {', '.join(map(str, unpaired))} ran on one side only: in the table, not in the means."]
    seed_mean, project_mean = means["seed"], means["project"]
    if seed_mean["final"] is not None and project_mean["final"] is not None:
        lines += [
            "",
            f"- project − seed: final {project_mean['final'] - seed_mean['final']:+.3f} (bar: ≥ −0.010), "
            f"last-20 mean {project_mean['last20'] - seed_mean['last20']:+.3f} (bar: ≥ −0.005).",
        ]
    for error in results.get("errors", []):
        lines.append(f"- failed: {error}")
    lines += ["", SECTION_END]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its accuracy section replaced by `section` (appended when it has none)."""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start == -1 or end == -1:
        return text.rstrip("\n") + "\n\n" + section
    return text[:start] + section + text[end + len(SECTION_END) :].lstrip("\n")


def existing_section(text: str) -> str | None:
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    return text[start : end + len(SECTION_END)] + "\n" if start != -1 and end != -1 else None


def run_accuracy_full(args, spec, data_dir: Path, dataset_text: str, command: str, out: Path) -> dict:
    """Both sides for every seed of ``args.seeds``, one child process each, the seed's side first."""
    from datetime import UTC, datetime

    from finetune.ml.backbones import describe_layers

    started = time.perf_counter()
    overrides = parse_overrides(args.project_set)
    project_spec_base = type(spec).model_validate(merge(spec.model_dump(), overrides))
    alpha = f" alpha {spec.effective_alpha}" if spec.effective_alpha is not None else ""
    results: dict = {
        "meta": {
            "command": command,
            "dataset": dataset_text,
            "model": f"{spec.backbone}{alpha}, {spec.image_size} px, batch {spec.batch_size}, weights {spec.weights}, "
            f"unfreeze from {spec.unfreeze_index} "
            f"({describe_layers(spec.backbone, spec.effective_alpha)[spec.unfreeze_index]['name']}), "
            f"{spec.warmup.epochs} + {spec.finetune.epochs} epochs",
            "project_set": ", ".join(args.project_set),
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        },
        "runs": [],
        "errors": [],
    }
    for seed in args.seeds:
        for side in SIDES:
            base = spec if side == "seed" else project_spec_base
            run_spec = base.model_copy(update={"seed": seed})
            print(f"[bench] accuracy-full: {side}, seed {seed} ...", file=sys.stderr, flush=True)
            try:
                run = run_in_child(side, data_dir, run_spec, out / "accuracy" / f"{side}-{seed}.json")
            except Exception as error:  # reported, the others still run
                results["errors"].append(f"{side} seed {seed}: {type(error).__name__}: {str(error)[:300]}")
                continue
            results["runs"].append(run)
            print(
                f"[bench] accuracy-full: {side}, seed {seed}: after warmup {_fmt(run['after_warmup'])}, "
                f"final {_fmt(run['final'])}, last-20 mean {_fmt(run['last20'])} ({run['seconds'] / 60:.0f} min)",
                file=sys.stderr,
                flush=True,
            )
    results["meta"]["total_s"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description="one side, one seed")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--spec", required=True, help="the TrainingSpec as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from bench.run import use_shared_weights

    spec_dict = json.loads(args.spec)
    if spec_dict.get("weights") == "imagenet":
        use_shared_weights()
    from finetune.ml.spec import TrainingSpec

    run = run_one(args.side, args.data, TrainingSpec.model_validate(spec_dict))
    args.out.write_text(json.dumps(run, indent=1))
    print(json.dumps({key: run[key] for key in ("side", "seed", "after_warmup", "final", "last20", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
