"""``python -m bench.run``: ceilings, the seed recipe, the project's training and /predict, side by side.

Writes ``BENCHMARKS.md`` at the repository root, ``<out>/bench.png`` and
``<out>/results.json``, and prints the report. A section that fails is
reported as such; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet", help="mobilenet (default), vgg16 (the seed's), ...")
    parser.add_argument("--alpha", type=float, default=0.25, help="width multiplier (mobilenet* only)")
    parser.add_argument(
        "--weights",
        choices=["auto", "none", "imagenet"],
        default="auto",
        help="auto (default): imagenet where the backbone's weight file is on this host "
        "(../shared/weights, $KERAS_HOME/models, ~/.keras/models), else none (random init: "
        "timings hold, accuracies mean little)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-epochs", type=int, default=25, help="phase 1 epochs (default: the seed's 25)")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="phase 2 epochs (default: 5; 100, the seed's, with --accuracy-full)",
    )
    parser.add_argument("--unfreeze-from", default=None, help="layer index or name (default: the backbone's)")
    parser.add_argument("--data", type=Path, default=None, help="a class-per-folder dataset (default: generated)")
    parser.add_argument(
        "--data-label", default="", help="where --data comes from, for the report (e.g. a repository and folder)"
    )
    parser.add_argument("--classes", type=int, default=17, help="generated dataset: classes")
    parser.add_argument("--per-class", type=int, default=60, help="generated dataset: images per class")
    parser.add_argument(
        "--requests", type=int, default=500, help="one-client /predict latency requests (the p50 of 100 moved ~1 ms)"
    )
    parser.add_argument(
        "--level-requests",
        type=int,
        default=2000,
        help="most requests per concurrency level (200 took under a second at 8 clients: mostly ramp-up)",
    )
    parser.add_argument("--level-seconds", type=float, default=20.0, help="most seconds per concurrency level")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per ceiling")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--cache-models",
        type=int,
        default=2,
        help="API memory check: MODEL_CACHE_SIZE, and one model more than it is loaded in turn",
    )
    parser.add_argument(
        "--seed-split",
        action="store_true",
        help="the seed's own random split (default: the project's validation images for both)",
    )
    parser.add_argument(
        "--accuracy-full",
        action="store_true",
        help="instead of the default sections: held-out accuracy of the seed's recipe and the project at the "
        "seed's full schedule (25 + 100 epochs) on --data (a real data set), per --seeds; updates its section "
        "of BENCHMARKS.md only (bench/accuracy.py)",
    )
    parser.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="instead of the default sections: the seed's recipe at its full schedule (25 + 100 epochs) against "
        "the project's job with early stopping on --data, one after the other; updates its section of "
        "BENCHMARKS.md only (bench/time_to_accuracy.py). Not in the default run: the seed's side alone is 125 epochs",
    )
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(seed) for seed in text.split(",") if seed.strip()],
        default=[42],
        help="--accuracy-full: comma-separated seeds, each run on both sides (default: 42)",
    )
    parser.add_argument(
        "--project-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--accuracy-full: a change to the project's spec (ablations), e.g. input_scaling=backbone, "
        "finetune.batchnorm=frozen; repeatable",
    )
    parser.add_argument(
        "--serve-models",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="serve the models of this store (the first for the load levels, all for the memory check) instead "
        "of the project run's: with --skip seed --skip project, only the ceilings and /predict are measured",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["ceilings", "seed", "project", "serving", "batches"],
        help="leave a section out",
    )
    args = parser.parse_args(argv)
    if args.finetune_epochs is None:
        args.finetune_epochs = 100 if args.accuracy_full or args.time_to_accuracy else 5
    for flag, given in (("--accuracy-full", args.accuracy_full), ("--time-to-accuracy", args.time_to_accuracy)):
        if given and args.data is None:
            parser.error(f"{flag} needs --data DIR: a real class-per-folder data set")
    return args


def use_shared_weights() -> None:
    """For ``--weights imagenet`` offline: a KERAS_HOME whose models/ links every file of ../shared/weights.

    Keras 3 and tf_keras both look in ``$KERAS_HOME/models/`` before downloading, and read
    KERAS_HOME when imported, so this runs before keras is. An existing KERAS_HOME is kept.
    """
    if "KERAS_HOME" in os.environ or not SHARED_WEIGHTS.is_dir():
        return
    home = Path(tempfile.mkdtemp(prefix="bench-keras-home-"))
    (home / "models").mkdir()
    for source in SHARED_WEIGHTS.iterdir():
        (home / "models" / source.name).symlink_to(source)
    os.environ["KERAS_HOME"] = str(home)


def _weight_file(backbone: str, alpha: float, size: int) -> str | None:
    """The Keras file name of the ImageNet weights without top, for the backbones the bench knows."""
    if backbone == "mobilenet":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha)
        rows = size if size in (128, 160, 192, 224) else 224
        return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5" if alpha_text else None
    if backbone == "vgg16":
        return "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return None


def resolve_weights(args: argparse.Namespace) -> str:
    """``--weights auto``: imagenet when the weight file is on this host (no download), else none."""
    if args.weights != "auto":
        return args.weights
    name = _weight_file(args.backbone, args.alpha, args.image_size)
    if name is None:
        return "none"
    homes = [Path(os.environ["KERAS_HOME"]) / "models"] if "KERAS_HOME" in os.environ else []
    homes += [Path.home() / ".keras" / "models", SHARED_WEIGHTS]
    return "imagenet" if any((home / name).is_file() for home in homes) else "none"


def build_spec(args: argparse.Namespace):
    from finetune.ml.backbones import get_backbone
    from finetune.ml.spec import TrainingSpec

    unfreeze = args.unfreeze_from
    if unfreeze is not None and unfreeze.isdigit():
        unfreeze = int(unfreeze)
    return TrainingSpec.model_validate(
        {
            "backbone": args.backbone,
            "alpha": args.alpha if get_backbone(args.backbone).has_alpha else None,
            "weights": args.weights,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "warmup": {"epochs": args.warmup_epochs},
            "finetune": {"epochs": args.finetune_epochs, "unfreeze_from": unfreeze},
        }
    )


def machine(command: str, spec, dataset: str) -> dict:
    import keras
    import tensorflow as tf
    import tf_keras

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    alpha = f" alpha {spec.effective_alpha}" if spec.effective_alpha is not None else ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf_keras": tf_keras.__version__,
        },
        "command": command,
        "model": (
            f"{spec.backbone}{alpha}, {spec.image_size} px, batch {spec.batch_size}, weights "
            f"{spec.weights}, head Dense({spec.head.units}), unfreeze from {spec.unfreeze_index}, "
            f"{spec.warmup.epochs} + {spec.finetune.epochs} epochs"
        ),
        "dataset": dataset,
        "backbone": spec.backbone,
        "alpha": spec.effective_alpha,
        "weights": spec.weights,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_start": os.getloadavg(),
    }


class Sections:
    """Runs each section, keeping its result or its error; prints progress to stderr."""

    def __init__(self, skip: list[str]):
        self.skip = set(skip)
        self.results: dict = {"errors": {}}

    def run(self, name: str, fn, *, group: str | None = None):
        if (group or name) in self.skip:
            return None
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as error:  # a failed section is reported, the rest still runs
            traceback.print_exc()
            self.results["errors"][name] = f"{type(error).__name__}: {str(error)[:500]}"
            return None
        print(f"[bench] {name} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.weights = resolve_weights(args)
    if args.weights == "imagenet":
        use_shared_weights()
    from bench import report

    started = time.perf_counter()
    out = (args.out if args.out.is_absolute() else ROOT / args.out).resolve()
    for leftover in ("data", "data-small", "models", "serving", "project"):  # this run's own, never a user's --data
        shutil.rmtree(out / leftover, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, dataset = _dataset(args, out)
    spec = build_spec(args)
    command = "python -m bench.run" + (" " + shlex.join(argv) if argv else "")
    if args.accuracy_full:
        return accuracy_full(args, spec, data_dir, dataset, command, out)
    if args.time_to_accuracy:
        return time_to_accuracy(args, spec, data_dir, dataset, command, out)

    sections = Sections(args.skip)
    results = sections.results
    results["meta"] = machine(command, spec, dataset["text"])
    run_sections(sections, args, spec, data_dir, len(dataset["classes"]), out)
    results["meta"]["total_s"] = time.perf_counter() - started
    results["meta"]["load_average_end"] = os.getloadavg()

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = report.render(results)
    args.report.write_text(_keep_accuracy_section(text, args.report))
    report.plot(results, out / "bench.png")
    print(text)
    print(f"[bench] wrote {args.report}, {out / 'bench.png'}, {out / 'results.json'}", file=sys.stderr)
    return 0


def _keep_accuracy_section(text: str, path: Path) -> str:
    """The default run rewrites BENCHMARKS.md but keeps the last --accuracy-full and --time-to-accuracy
    runs' sections."""
    from bench import time_to_accuracy
    from bench.accuracy import existing_section, replace_section

    previous = path.read_text() if path.is_file() else ""
    section = existing_section(previous) if previous else None
    text = replace_section(text, section) if section else text
    start, end = time_to_accuracy.SECTION_START, time_to_accuracy.SECTION_END
    if start in previous and end in previous:
        kept = start + previous.split(start, 1)[1].split(end, 1)[0] + end + "\n"
        text = time_to_accuracy.replace_section(text, kept)
    return text


def accuracy_full(args, spec, data_dir: Path, dataset: dict, command: str, out: Path) -> int:
    """Only the full-schedule accuracy comparison; its table replaces its section of the report."""
    from bench.accuracy import render_section, replace_section, run_accuracy_full

    results = run_accuracy_full(args, spec, data_dir, dataset["text"], command, out)
    (out / "accuracy.json").write_text(json.dumps(results, indent=2, default=str))
    section = render_section(results)
    previous = args.report.read_text() if args.report.is_file() else "# Benchmarks\n"
    args.report.write_text(replace_section(previous, section))
    print(section)
    print(f"[bench] wrote {args.report} (accuracy section), {out / 'accuracy.json'}", file=sys.stderr)
    return 1 if results["errors"] else 0


def time_to_accuracy(args, spec, data_dir: Path, dataset: dict, command: str, out: Path) -> int:
    """Only the time-to-accuracy row; its table replaces its section of the report."""
    from bench.time_to_accuracy import render_section, replace_section, run_time_to_accuracy

    results = run_time_to_accuracy(spec, data_dir, dataset["text"], command, out)
    (out / "time_to_accuracy.json").write_text(json.dumps(results, indent=2, default=str))
    section = render_section(results)
    previous = args.report.read_text() if args.report.is_file() else "# Benchmarks\n"
    args.report.write_text(replace_section(previous, section))
    print(section)
    print(f"[bench] wrote {args.report} (time-to-accuracy section), {out / 'time_to_accuracy.json'}", file=sys.stderr)
    return 0 if results["verdict"]["pass"] else 1


def run_sections(sections: Sections, args, spec, data_dir: Path, classes: int, out: Path) -> None:
    """Ceilings, seed, project (augmented, then feature cache), serving, ceilings again: in that order."""
    results = sections.results
    ceiling_passes = [sections.run("ceilings", lambda: _ceilings(spec, classes, args))]
    results["seed"] = _as_dict(sections.run("seed", lambda: _seed(data_dir, spec, own_split=args.seed_split)))
    project_aug = sections.run(
        "project_aug", lambda: _project(data_dir, spec, out, args, classes, augment=True), group="project"
    )
    results["project_aug"] = project_aug
    results["project_cache"] = sections.run(
        "project_cache", lambda: _project(data_dir, spec, out, args, classes, augment=False), group="project"
    )
    results["project_small"] = sections.run(
        "project_small", lambda: _project_small(spec, out, classes), group="project"
    )
    served = _given_models(args.serve_models) if args.serve_models else project_aug
    if served is not None:
        results["serving"] = _as_dict(sections.run("serving", lambda: _serving(served, out, args)))
        results["batches"] = sections.run("batches", lambda: _batches(served, out))
    else:
        for section in ("serving", "batches"):
            if section not in args.skip:
                results["errors"][section] = "not run: the project's training (the model to serve) did not run"
    ceiling_passes.append(
        sections.run("ceilings (second pass)", lambda: _ceilings(spec, classes, args), group="ceilings")
    )
    results["ceilings"] = _best_ceilings(ceiling_passes)


def _dataset(args, out: Path) -> tuple[Path, dict]:
    from bench.data import describe, generate_dataset

    data_dir = args.data or generate_dataset(out / "data", classes=args.classes, per_class=args.per_class)
    info = describe(data_dir)
    origin = "given" if args.data else "generated"
    info["text"] = f"{origin}: {info['num_images']} images, {len(info['classes'])} classes ({data_dir})"
    if getattr(args, "data_label", ""):
        info["text"] += f"; {args.data_label}"
    return data_dir, info


def _as_dict(value):
    return value.as_dict() if value is not None else None


def _best_ceilings(passes):
    from bench.ceilings import best_of

    done = [p for p in passes if p is not None]
    return best_of(done) if done else None


def _ceilings(spec, classes: int, args):
    from bench.ceilings import measure_ceilings

    return measure_ceilings(spec, classes, calls=args.calls)


def _seed(data_dir: Path, spec, *, own_split: bool):
    from bench.seed_recipe import run_seed_recipe

    return run_seed_recipe(
        data_dir, spec, validation_files=None if own_split else project_validation_files(data_dir, spec)
    )


def project_validation_files(data_dir: Path, spec) -> set[str]:
    """The images the project judges its final model on for ``spec`` (its scan and stratified split: the
    test split when ``spec.test_split`` is set, else the validation split), relative to ``data_dir``.
    Files the project would skip as undecodable are not known before it decodes, so a folder
    with such files could shift the split by them; the bench's generated data has none."""
    import numpy as np

    from finetune.ml.scan import scan_dataset, split_dataset

    scan = scan_dataset(data_dir, probe=False)
    splits = split_dataset(
        scan,
        np.asarray(scan.labels),
        validation_split=spec.validation_split,
        test_split=spec.test_split,
        seed=spec.seed,
    )
    held_out = splits.test if spec.test_split else splits.validation
    return {Path(scan.files[i]).as_posix() for i in held_out}


def _project(data_dir: Path, spec, out: Path, args, classes: int, *, augment: bool) -> dict:
    """The project's training in a child process (a worker's), which also reports its peak memory."""
    from bench.project import run_in_child

    if augment:
        return run_in_child(
            data_dir,
            spec,
            label="augmented, both phases",
            work_dir=out / "project",
            model_dir=out / "models",
            copies=args.cache_models + 1,
            classes=classes,
            ceilings={"calls": max(3, args.calls // 2), "max_seconds": 10.0},
        )
    cached = spec.model_copy(update={"augmentation": None, "finetune": None})
    return run_in_child(
        data_dir, cached, label="no augmentation (feature cache), phase 1 only", work_dir=out / "project"
    )


def _project_small(spec, out: Path, classes: int) -> dict:
    """The augmented job on 4 generated images per class, 2 + 2 epochs: its memory growth is the
    working set that does not grow with the data (batches in flight, TensorFlow's buffers, arenas)."""
    from bench.data import generate_dataset
    from bench.project import run_in_child

    small = generate_dataset(out / "data-small", classes=classes, per_class=4)
    short = spec.model_copy(
        update={
            "warmup": spec.warmup.model_copy(update={"epochs": 2}),
            "finetune": spec.finetune and spec.finetune.model_copy(update={"epochs": 2}),
        }
    )
    return run_in_child(small, short, label="memory probe: 4 images per class", work_dir=out / "project")


def _given_models(model_dir: Path) -> dict:
    """`--serve-models`: the store's models, newest first, shaped as a project run's for `_serving`."""
    from finetune.stores.models import ModelStore

    listed = ModelStore(str(model_dir)).list()
    if not listed:
        raise SystemExit(f"--serve-models {model_dir}: no model there")
    return {"model_dir": model_dir.resolve(), "model_ids": [manifest["id"] for manifest in listed]}


def _serving(project_run: dict, out: Path, args):
    from bench.data import sample_jpeg
    from bench.serving import measure_serving

    image = sample_jpeg(out / "predict.jpg", size=224)
    return measure_serving(
        project_run.get("model_dir", out / "models"),
        project_run["model_ids"],
        image,
        out / "serving",
        requests=args.requests,
        level_requests=args.level_requests,
        level_seconds=args.level_seconds,
        cache_models=args.cache_models,
    )


def _batches(project_run: dict, out: Path) -> dict:
    """A batch prediction's images/s against the raw batched forward pass of the same model (bench.batches)."""
    from bench.batches import measure_batches
    from bench.data import sample_jpeg

    image = sample_jpeg(out / "batch.jpg", size=224)
    model_dir = project_run.get("model_dir", out / "models")
    return measure_batches(model_dir, project_run["model_ids"][0], image, out / "batches")


if __name__ == "__main__":
    raise SystemExit(main())
