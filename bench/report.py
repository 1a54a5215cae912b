"""BENCHMARKS.md and bench.png from the results dict that ``bench.run`` collects (and saves as JSON)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.targets import TARGETS

NA = "—"


def _get(mapping: dict | None, *keys, default=None):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
            return default
        mapping = mapping[key]
    return mapping


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def derive(results: dict) -> dict:
    """Every ratio the report prints, from the raw sections (None where a section is missing)."""
    ceil, seed = results.get("ceilings"), results.get("seed")
    aug, cache = results.get("project_aug"), results.get("project_cache")
    serving = results.get("serving")
    aug_warm, aug_fine = _get(aug, "phases", "warmup"), _get(aug, "phases", "finetune")
    cache_warm = _get(cache, "phases", "warmup")
    ratio = {
        "warmup_aug_vs_ceiling": _ratio(_get(aug_warm, "steady_ips"), _get(ceil, "phase1_step_ips")),
        "finetune_vs_ceiling": _ratio(_get(aug_fine, "steady_ips"), _get(ceil, "phase2_step_ips")),
        "warmup_cache_vs_forward": _ratio(_get(cache_warm, "wall_ips"), _get(ceil, "forward_ips")),
        "warmup_aug_vs_seed": _ratio(_get(aug_warm, "steady_ips"), _get(seed, "warmup", "steady_ips")),
        "finetune_vs_seed": _ratio(_get(aug_fine, "steady_ips"), _get(seed, "finetune", "steady_ips")),
        "warmup_aug_vs_seed_wall": _ratio(_get(aug_warm, "wall_ips"), _get(seed, "warmup", "fit_ips")),
        "finetune_vs_seed_wall": _ratio(_get(aug_fine, "wall_ips"), _get(seed, "finetune", "fit_ips")),
        "warmup_cache_vs_aug_wall": _ratio(_get(cache_warm, "wall_ips"), _get(aug_warm, "wall_ips")),
        "warmup_cache_vs_seed_wall": _ratio(_get(cache_warm, "wall_ips"), _get(seed, "warmup", "fit_ips")),
    }
    figures = {"ratio": ratio, "serving": {}}
    if serving and ceil:
        levels = {level["clients"]: level for level in serving["levels"]}
        raw = ceil["latency_b1_ms"]
        figures["serving"] = {
            "p50_overhead_ms": serving["p50_ms"] - raw,
            "p50_vs_raw": _ratio(serving["p50_ms"], raw),
            "errors": serving["latency_errors"] + sum(level["errors"] for level in serving["levels"]),
            "levels": {
                clients: {
                    "vs_b8": _ratio(level["throughput"], ceil["forward_b8_ips"]),
                    "vs_b32": _ratio(level["throughput"], ceil["forward_b32_ips"]),
                }
                for clients, level in levels.items()
            },
        }
        if 8 in levels:
            figures["serving"]["c8_vs_b8"] = figures["serving"]["levels"][8]["vs_b8"]
    return figures


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _x(value) -> str:
    return _fmt(value, 2, "×")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else NA


def _environment(meta: dict) -> list[str]:
    versions = meta["versions"]
    return [
        "## Machine and command",
        "",
        *_table(["", ""], [
            ["CPU", meta["cpu"]],
            ["cores (os.cpu_count)", str(meta["cores"])],
            ["python", versions["python"]],
            ["tensorflow / keras (Keras 3) / tf_keras (Keras 2)",
             f"{versions['tensorflow']} / {versions['keras']} / {versions['tf_keras']}"],
            ["command", f"`{meta['command']}`"],
            ["model", meta["model"]],
            ["dataset", meta["dataset"]],
            ["date (UTC)", meta["started"]],
            ["load average (1/5/15 min) at start, at end",
             f"{_load(meta.get('load_average_start'))}; {_load(meta.get('load_average_end'))}"],
            ["whole run", _fmt(meta.get("total_s"), 0, " s")],
        ]),
        "",
    ]


def _passes(ceil: dict) -> str:
    passes = ceil.get("passes") or []
    names = (("forward", "forward_ips"), ("phase-1 step", "phase1_step_ips"), ("phase-2 step", "phase2_step_ips"))
    return "; ".join(
        f"{label} " + " / ".join(_fmt(p[key]) for p in passes) for label, key in names
    ) if passes else NA


def _training(results: dict, figures: dict) -> list[str]:
    ceil, seed = results.get("ceilings") or {}, results.get("seed") or {}
    aug = _get(results, "project_aug", "phases", default={})
    cache = _get(results, "project_cache", "phases", default={})
    ratio = figures["ratio"]
    header = ["phase", "ceiling", "seed steady", "seed fit wall", "project steady", "project reported",
              "project wall", "project / ceiling", "project / seed (steady)", "project / seed (wall)"]
    rows = [
        ["1 warmup, augmented", _fmt(ceil.get("phase1_step_ips")), _fmt(_get(seed, "warmup", "steady_ips")),
         _fmt(_get(seed, "warmup", "fit_ips")), _fmt(_get(aug, "warmup", "steady_ips")),
         _fmt(_get(aug, "warmup", "reported_ips")), _fmt(_get(aug, "warmup", "wall_ips")),
         _x(ratio["warmup_aug_vs_ceiling"]), _x(ratio["warmup_aug_vs_seed"]), _x(ratio["warmup_aug_vs_seed_wall"])],
        ["1 warmup, no augmentation (feature cache)", _fmt(ceil.get("forward_ips")), NA,
         _fmt(_get(seed, "warmup", "fit_ips")), NA, _fmt(_get(cache, "warmup", "reported_ips")),
         _fmt(_get(cache, "warmup", "wall_ips")), _x(ratio["warmup_cache_vs_forward"]) + " (wall)", NA,
         _x(ratio["warmup_cache_vs_seed_wall"])],
        ["2 finetune, augmented", _fmt(ceil.get("phase2_step_ips")), _fmt(_get(seed, "finetune", "steady_ips")),
         _fmt(_get(seed, "finetune", "fit_ips")), _fmt(_get(aug, "finetune", "steady_ips")),
         _fmt(_get(aug, "finetune", "reported_ips")), _fmt(_get(aug, "finetune", "wall_ips")),
         _x(ratio["finetune_vs_ceiling"]), _x(ratio["finetune_vs_seed"]), _x(ratio["finetune_vs_seed_wall"])],
    ]
    return [
        "## Training throughput (images/s)",
        "",
        *_table(header, rows),
        "",
        "- **ceiling**: the project's model on a fixed random batch, median of timed calls after warm-up, "
        "measured twice (at the start and at the end of the run), the better pass kept "
        "(phase 1: `train_on_batch`, backbone frozen, RMSprop; phase 2: `train_on_batch`, layers from "
        f"index {ceil.get('unfreeze_index', NA)} trainable, SGD; feature-cache row: `model(x, training=False)` "
        "in a `tf.function`).",
        "- **steady**: images / time between consecutive training-batch ends, each epoch's first batch left out "
        "(input pipeline and augmentation in; tracing, epoch start and validation out). Same definition for "
        "the seed (a Keras 2 callback) and the project (its `progress` callback).",
        "- **seed fit wall**: images seen / wall time of the phase's `model.fit` (tracing, augmentation and "
        "per-epoch validation in). **project wall**: epochs × train images / the project's own "
        "`timings[\"<phase>_s\"]` (for the feature cache, feature extraction included). **project reported**: "
        "the project's own `timings[\"images_per_s\"]`.",
        f"- ceiling passes (start / end of the run): {_passes(ceil)}.",
        "- With few epochs on a small set, the wall figures are dominated by fixed costs (tracing, the first "
        "call); the steady figures are the per-batch rate.",
        "",
        *_table(["accuracy on the held-out split", "value"], [
            ["seed, after phase 1 (val_accuracy)", _fmt(_get(seed, "warmup", "val_accuracy"), 3)],
            ["seed, after phase 2 (val_accuracy)", _fmt(_get(seed, "finetune", "val_accuracy"), 3)],
            ["project, augmented, both phases", _fmt(_get(results, "project_aug", "accuracy"), 3)],
            ["project, feature cache, phase 1 only", _fmt(_get(results, "project_cache", "accuracy"), 3)],
        ]),
        "",
    ]


def _serving(results: dict, figures: dict) -> list[str]:
    serving, ceil = results.get("serving"), results.get("ceilings") or {}
    if not serving:
        return ["## Serving: POST /predict", "", "Not measured (see the errors below).", ""]
    derived = figures["serving"]
    rows = [
        ["raw forward, batch 1 (median / p95)", f"{_fmt(ceil.get('latency_b1_ms'))} / "
                                                f"{_fmt(ceil.get('latency_b1_p95_ms'))} ms"],
        ["raw forward, batch 8 / batch 32", f"{_fmt(ceil.get('forward_b8_ips'))} / "
                                            f"{_fmt(ceil.get('forward_b32_ips'))} images/s"],
        [f"/predict, one client, {serving['latency_requests']} requests: p50 / p95 / p99",
         f"{_fmt(serving['p50_ms'])} / {_fmt(serving['p95_ms'])} / {_fmt(serving['p99_ms'])} ms"],
        ["/predict p50 − raw batch-1 forward", _fmt(derived.get("p50_overhead_ms"), 1, " ms")],
        ["/predict p50 / raw batch-1 forward", _x(derived.get("p50_vs_raw"))],
    ]
    levels = [
        [str(level["clients"]), str(level["requests"]), str(level["errors"]), _fmt(level["seconds"]),
         _fmt(level["throughput"]), _fmt(level["p50_ms"]), _fmt(level["p95_ms"]),
         _x(derived["levels"][level["clients"]]["vs_b8"]), _x(derived["levels"][level["clients"]]["vs_b32"])]
        for level in serving["levels"]
    ]
    return [
        "## Serving: POST /predict (real uvicorn + redis-server, loopback, one 224-px JPEG per request)",
        "",
        *_table(["figure", "value"], rows),
        "",
        *_table(["clients", "answered 200", "errors", "seconds", "requests/s", "p50 ms", "p95 ms",
                 "/ raw batch-8 forward", "/ raw batch-32 forward"], levels),
        "",
    ]


def _targets(figures: dict) -> list[str]:
    rows = []
    for target in TARGETS:
        value, verdict = target.evaluate(figures)
        bound = ("≥ " if target.higher_is_better else "≤ ") + _fmt(float(target.threshold), 2, target.unit)
        rows.append([target.name, _fmt(value, 2, target.unit), bound, verdict])
    return [
        "## Targets",
        "",
        "Provisional thresholds (`bench/targets.py`), to be replaced by issue 6's own.",
        "",
        *_table(["target", "measured", "wanted", "result"], rows),
        "",
    ]


def render(results: dict) -> str:
    figures = derive(results)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`). Every figure below comes from one run in one "
        "process, side by side; on a shared machine only the ratios are meaningful.",
        "",
        *_environment(results["meta"]),
        *_training(results, figures),
        *_serving(results, figures),
        *_targets(figures),
    ]
    if results.get("errors"):
        lines += ["## Sections that failed", ""]
        lines += [f"- **{name}**: {message}" for name, message in results["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Bar chart of images/s per phase (ceiling, seed, project); throughput and p50 against clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceil, seed = results.get("ceilings") or {}, results.get("seed") or {}
    aug = _get(results, "project_aug", "phases", default={})
    cache = _get(results, "project_cache", "phases", default={})
    phases = ["phase 1\naugmented", "phase 1\nfeature cache", "phase 2\naugmented"]
    bars = {
        "ceiling": [ceil.get("phase1_step_ips"), ceil.get("forward_ips"), ceil.get("phase2_step_ips")],
        "seed (steady)": [_get(seed, "warmup", "steady_ips"), None, _get(seed, "finetune", "steady_ips")],
        "seed (fit wall)": [_get(seed, "warmup", "fit_ips"), None, _get(seed, "finetune", "fit_ips")],
        "project (steady)": [_get(aug, "warmup", "steady_ips"), None, _get(aug, "finetune", "steady_ips")],
        "project (wall)": [_get(aug, "warmup", "wall_ips"), _get(cache, "warmup", "wall_ips"),
                           _get(aug, "finetune", "wall_ips")],
    }
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(bars)
    for number, (label, values) in enumerate(bars.items()):
        xs = [i + (number - (len(bars) - 1) / 2) * width for i in range(len(phases))]
        left.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
    left.set_xticks(range(len(phases)), phases)
    left.set_ylabel("images/s")
    left.set_title("Training throughput")
    left.legend(fontsize=8)

    serving = results.get("serving")
    if serving:
        clients = [level["clients"] for level in serving["levels"]]
        right.plot(clients, [level["throughput"] for level in serving["levels"]], "o-", label="/predict requests/s")
        for key, label, style in (("forward_b8_ips", "raw forward b8", "--"), ("forward_b32_ips", "raw forward b32", ":")):
            if ceil.get(key):
                right.axhline(ceil[key], linestyle=style, color="grey", label=label)
        right.set_xlabel("concurrent clients")
        right.set_ylabel("requests/s (images/s)")
        right.set_yscale("log")
        twin = right.twinx()
        twin.plot(clients, [level["p50_ms"] for level in serving["levels"]], "s-", color="tab:red", label="p50 ms")
        twin.set_ylabel("p50 latency (ms)", color="tab:red")
        handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        right.legend(handles=handles, loc="center left", fontsize=8)
    right.set_title("POST /predict")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
