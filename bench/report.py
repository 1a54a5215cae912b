"""BENCHMARKS.md and bench.png from the results dict that ``bench.run`` collects (and saves as JSON)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.targets import targets_for

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


def project_ceilings(results: dict) -> dict:
    """The ceilings the project's training is compared with: measured in its own process right after it
    (the same conditions on a shared machine), else the run's best pass."""
    return _get(results, "project_aug", "ceilings") or results.get("ceilings") or {}


def _phase_figures(results: dict) -> dict:
    """Per phase: ceiling, seed (steady, train, wall), project (steady, train, wall) images/s."""
    ceil, seed = project_ceilings(results), results.get("seed") or {}
    aug = _get(results, "project_aug", "phases", default={})
    cache = _get(results, "project_cache", "phases", default={})
    out = {}
    for key, ceiling, seed_phase, project in (
        ("warmup", ceil.get("forward_ips"), seed.get("warmup"), aug.get("warmup")),
        ("finetune", ceil.get("phase2_step_ips"), seed.get("finetune"), aug.get("finetune")),
        ("cache", ceil.get("forward_ips"), seed.get("warmup"), cache.get("warmup")),
    ):
        out[key] = {
            "ceiling": ceiling,
            "seed_steady": _get(seed_phase, "steady_ips"),
            "seed_train": _get(seed_phase, "train_ips"),
            "seed_wall": _get(seed_phase, "fit_ips"),
            "project_steady": _get(project, "steady_ips"),
            "project_train": _get(project, "reported_ips"),
            "project_wall": _get(project, "wall_ips"),
        }
    return out


def derive(results: dict) -> dict:
    """Every ratio the report prints, from the raw sections (None where a section is missing)."""
    ceil, seed = results.get("ceilings"), results.get("seed")
    serving = results.get("serving")
    phases = _phase_figures(results)
    ratio = {}
    for key in ("warmup", "finetune"):
        figures = phases[key]
        for kind in ("steady", "train", "wall"):
            ratio[f"{key}_{kind}_vs_ceiling"] = _ratio(figures[f"project_{kind}"], figures["ceiling"])
            ratio[f"{key}_{kind}_vs_seed"] = _ratio(figures[f"project_{kind}"], figures[f"seed_{kind}"])
    cache = phases["cache"]
    ratio["cache_wall_vs_ceiling"] = _ratio(cache["project_wall"], cache["ceiling"])
    ratio["cache_speedup_vs_seed_wall"] = _ratio(cache["project_wall"], cache["seed_wall"])
    ratio["cache_wall_vs_augmented_wall"] = _ratio(cache["project_wall"], phases["warmup"]["project_wall"])
    seed_accuracy = (
        _get(seed, "finetune", "val_accuracy") if _get(seed, "finetune") else _get(seed, "warmup", "val_accuracy")
    )
    project_accuracy = _get(results, "project_aug", "accuracy")
    accuracy = {
        "seed": seed_accuracy,
        "project": project_accuracy,
        "project_minus_seed": None
        if seed_accuracy is None or project_accuracy is None
        else project_accuracy - seed_accuracy,
    }
    figures = {
        "phases": phases,
        "ratio": ratio,
        "accuracy": accuracy,
        "serving": {},
        "memory": _memory_figures(results),
        "batches": _batch_figures(results.get("batches")),
    }
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
        api_raw = _get(serving, "raw", "api") or {}
        figures["serving"]["p50_overhead_vs_api_raw_ms"] = (
            serving["p50_ms"] - api_raw["latency_b1_ms"] if api_raw.get("latency_b1_ms") else None
        )
        if 8 in levels:
            figures["serving"]["c8_vs_b8"] = figures["serving"]["levels"][8]["vs_b8"]
            figures["serving"]["c8_vs_api_raw_b8"] = _ratio(levels[8]["throughput"], api_raw.get("forward_b8_ips"))
            figures["serving"]["c8_cpu_bound"] = _cpu_bound(levels[8], ceil, _get(results, "meta", "cores"))
    return figures


def _batch_figures(batches: dict | None) -> dict:
    """A batch's images/s over the raw batched forward pass of the same model (issue 16's 0.8 target)."""
    if not batches:
        return {}
    batch, raw = batches["batch"]["images_per_second"], batches["raw"]["images_per_second"]
    return {"batch_ips": batch, "raw_ips": raw, "vs_raw": _ratio(batch, raw)}


def _batches(results: dict, figures: dict) -> list[str]:
    batches = results.get("batches")
    if not batches:
        return ["## Batch predictions", "", "Not measured (see the errors below).", ""]
    batch, raw = batches["batch"], batches["raw"]
    rows = [
        ["images (224-px JPEG files)", str(batch["images"])],
        ["batch: images/s (read, decode, forward, parts written), median", _fmt(batch["images_per_second"])],
        ["raw batched forward: images/s (decoded images), median", _fmt(raw["images_per_second"])],
        ["batch / raw (medians)", _x(figures["batches"].get("vs_raw"))],
        [
            "each round: batch / raw images/s",
            "; ".join(
                f"{_fmt(pair['batch']['images_per_second'])} / {_fmt(pair['raw']['images_per_second'])}"
                for pair in batches.get("rounds", [])
            )
            or NA,
        ],
        [
            "chunk / forward batch / decode threads",
            f"{batch['chunk_size']} / {batch['forward_size']} / {batch['decode_threads']}",
        ],
    ]
    return [
        "## Batch predictions (`python -m bench.batches`: the batch runner's process vs the raw forward)",
        "",
        *_table(["figure", "value"], rows),
        "",
    ]


def _cpu_bound(level: dict, ceil: dict, cores: int | None) -> dict | None:
    """What the measured CPU per request allows at most: every core busy, nothing idle.

    ``rps``: cores / (API + load-generator CPU per request); ``vs_b8``: that over the raw batch-8
    forward; ``forward_ms``: the raw batch-8 forward's own CPU per image (the part of a request's
    CPU that is the model's at best), ``rest_ms``: the API's CPU per request beyond it (HTTP,
    multipart, decoding, batching, JSON; and the smaller batches' extra cost per image)."""
    per_request = (level.get("server_cpu_ms") or math.nan) + (level.get("client_cpu_ms") or 0.0)
    if not cores or not per_request or math.isnan(per_request):
        return None
    rps = 1000.0 * cores / per_request
    forward_ms = ceil.get("forward_b8_cpu_ms")
    return {
        "rps": rps,
        "vs_b8": _ratio(rps, ceil.get("forward_b8_ips")),
        "forward_ms": forward_ms,
        "rest_ms": None if forward_ms is None else level["server_cpu_ms"] - forward_ms,
    }


def _memory_figures(results: dict) -> dict:
    out: dict = {}
    memory = _get(results, "project_aug", "memory")
    if memory:
        bound = memory["decoded_bytes"] + memory["model_bytes"]
        growth = memory["peak_rss"] - memory["baseline_rss"]
        out.update(worker_growth=growth, worker_bound=bound, worker_growth_vs_bound=_ratio(float(growth), bound))
        small = _get(results, "project_small", "memory")
        if small:
            small_growth = small["peak_rss"] - small["baseline_rss"]
            data_growth, data_bytes = growth - small_growth, memory["decoded_bytes"] - small["decoded_bytes"]
            out.update(
                worker_fixed=small_growth,
                worker_data_growth=data_growth,
                worker_data_bytes=data_bytes,
                worker_data_growth_vs_decoded=_ratio(float(data_growth), data_bytes) if data_bytes > 0 else None,
            )
    steps = _get(results, "serving", "memory", "steps")
    cache_size = _get(results, "serving", "memory", "cache_size")
    if steps and cache_size and cache_size > 1 and len(steps) >= cache_size + 1:
        rss = [step["rss"] for step in steps]  # rss[i]: i + 1 distinct models asked for
        # memory added per cached model, from one model loaded to the cache's size
        per_model = (rss[cache_size - 1] - rss[0]) / (cache_size - 1)
        past = max(rss[cache_size:]) - rss[cache_size - 1]
        out.update(
            api_per_model=per_model,
            api_past_cache=past,
            api_past_cache_vs_per_model=_ratio(float(past), per_model) if per_model else None,
        )
    return out


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
        *_table(
            ["", ""],
            [
                ["CPU", meta["cpu"]],
                ["cores (os.cpu_count)", str(meta["cores"])],
                ["python", versions["python"]],
                [
                    "tensorflow / keras (Keras 3) / tf_keras (Keras 2)",
                    f"{versions['tensorflow']} / {versions['keras']} / {versions['tf_keras']}",
                ],
                ["command", f"`{meta['command']}`"],
                ["model", meta["model"]],
                ["dataset", meta["dataset"]],
                ["date (UTC)", meta["started"]],
                [
                    "load average (1/5/15 min) at start, at end",
                    f"{_load(meta.get('load_average_start'))}; {_load(meta.get('load_average_end'))}",
                ],
                ["whole run", _fmt(meta.get("total_s"), 0, " s")],
            ],
        ),
        "",
    ]


def _passes(ceil: dict) -> str:
    passes = ceil.get("passes") or []
    names = (("forward", "forward_ips"), ("phase-1 step", "phase1_step_ips"), ("phase-2 step", "phase2_step_ips"))
    return "; ".join(f"{label} " + " / ".join(_fmt(p[key]) for p in passes) for label, key in names) if passes else NA


def _mb(value) -> str:
    return NA if value is None else f"{value / 2**20:,.0f} MiB"


def _passes_of(results: dict, key: str) -> list[float]:
    """Every measured pass of one ceiling figure, the bench's and the worker's."""
    passes = [p.get(key) for p in (_get(results, "ceilings", "passes") or [])]
    passes += [p.get(key) for p in (_get(results, "project_aug", "ceilings", "passes") or [])]
    return [v for v in passes if v is not None and not math.isnan(v)]


def _training(results: dict, figures: dict) -> list[str]:
    ceil, seed = project_ceilings(results), results.get("seed") or {}
    run_ceil = results.get("ceilings") or {}
    phases, ratio = figures["phases"], figures["ratio"]
    header = [
        "phase",
        "ceiling",
        "seed steady / train / wall",
        "project steady / train / wall",
        "project / ceiling (steady / **train** / wall)",
        "project / seed (steady / **train** / wall)",
    ]

    def triple(values, fmt) -> str:
        return " / ".join(fmt(v) for v in values)

    rows = []
    for key, label, ceiling_label in (
        ("warmup", "1 warmup, augmented", "forward"),
        ("finetune", "2 finetune, augmented", "phase-2 step"),
    ):
        f = phases[key]
        rows.append(
            [
                label,
                f"{_fmt(f['ceiling'])} ({ceiling_label})",
                triple((f["seed_steady"], f["seed_train"], f["seed_wall"]), _fmt),
                triple((f["project_steady"], f["project_train"], f["project_wall"]), _fmt),
                triple((ratio[f"{key}_{kind}_vs_ceiling"] for kind in ("steady", "train", "wall")), _x),
                triple((ratio[f"{key}_{kind}_vs_seed"] for kind in ("steady", "train", "wall")), _x),
            ]
        )
    cache = phases["cache"]
    rows.append(
        [
            "1 warmup, no augmentation (feature cache)",
            f"{_fmt(cache['ceiling'])} (forward)",
            f"— / — / {_fmt(cache['seed_wall'])} (the seed's augmented phase 1)",
            f"— / — / {_fmt(cache['project_wall'])}",
            f"— / — / {_x(ratio['cache_wall_vs_ceiling'])}",
            f"— / — / **{_x(ratio['cache_speedup_vs_seed_wall'])}**",
        ]
    )
    aug_ips, forward = ceil.get("augment_ips"), ceil.get("forward_ips")
    shared = 1 / (1 / forward + 1 / aug_ips) if aug_ips and forward and not math.isnan(aug_ips) else None
    history = _get(results, "project_aug", "history", default=[])
    seconds = {
        phase: sum(row["seconds"] for row in history if row["phase"] == phase) for phase in ("warmup", "finetune")
    }
    return [
        "## Training throughput (images/s)",
        "",
        *_table(header, rows),
        "",
        "- **ceiling**: the project's model on a fixed random batch, median of timed calls after warm-up, measured "
        "in the project's own (worker) process right after its training, so under the same load of this shared "
        "machine. Phase 1: the frozen forward pass (`model(x, training=False)` in a `tf.function`, batch "
        f"{ceil.get('batch_size', NA)}); phase 2: `train_on_batch` with the layers from index "
        f"{ceil.get('unfreeze_index', NA)} trainable, SGD. Also measured: phase-1 train step "
        f"{_fmt(ceil.get('phase1_step_ips'))}.",
        f"- the same ceilings measured in the bench's process at the start / end of the run: {_passes(run_ceil)}; "
        f"against the best of every pass the project's phases reach (train) "
        f"{_x(_ratio(phases['warmup']['project_train'], max(_passes_of(results, 'forward_ips') or [None])))} and "
        f"{_x(_ratio(phases['finetune']['project_train'], max(_passes_of(results, 'phase2_step_ips') or [None])))}.",
        "- **steady**: images / time between consecutive training-batch ends, each epoch's first batch left out. "
        "**train** (judged): training images / the phase's training time, each epoch from its start to its last "
        "batch's end, so every batch counts, the first with its tracing; the per-epoch validation is left out "
        '(the ceilings time none). For the project this is its own `timings["images_per_s"]`. '
        '**wall**: the whole phase (Keras 2 `fit` for the seed, the project\'s `timings["<phase>_s"]`), '
        "validation and, for the feature cache, the feature extraction included. Same definitions on both sides.",
        f"- the input pipeline alone (gather, the seed's augmentation as one affine resampling per image, "
        f"preprocessing) runs at {_fmt(aug_ips)} images/s on these cores; sharing them with the frozen forward pass, "
        f"the two together cannot beat 1 / (1/forward + 1/pipeline) = {_fmt(shared)} images/s "
        f"({_x(_ratio(shared, forward))} of the forward ceiling).",
        f"- the project's epochs took {_fmt(seconds['warmup'])} s (phase 1) and {_fmt(seconds['finetune'])} s "
        f"(phase 2) in all, validation included; decoding the data set took "
        f"{_fmt(_get(results, 'project_aug', 'load_s'))} s (the seed's loading: {_fmt(seed.get('load_s'))} s), "
        "outside every figure above.",
        "",
        *_table(
            ["validation accuracy on the held-out split", "value"],
            [
                ["seed, after phase 1", _fmt(_get(seed, "warmup", "val_accuracy"), 3)],
                ["seed, after phase 2", _fmt(_get(seed, "finetune", "val_accuracy"), 3)],
                [
                    "project, augmented, after phase 1",
                    _fmt(([row.get("val_accuracy") for row in history if row["phase"] == "warmup"] or [None])[-1], 3),
                ],
                ["project, augmented, after phase 2", _fmt(_get(results, "project_aug", "accuracy"), 3)],
                ["project, feature cache, phase 1 only", _fmt(_get(results, "project_cache", "accuracy"), 3)],
            ],
        ),
        "",
        f"Weights: {results['meta'].get('weights', NA)}. "
        + (
            "The seed splits with `train_test_split(0.25, random_state=42)`, the project with its stratified split "
            "(seed 42): the same proportions, not the same images."
            if "--seed-split" in results["meta"].get("command", "")
            else "Both are judged on the same held-out images: the project's stratified split (seed 42, 0.25), which the "
            "bench hands to the seed's recipe in place of its `train_test_split` (`--seed-split` keeps the seed's)."
        ),
        "",
    ]


def _serving(results: dict, figures: dict) -> list[str]:
    serving, ceil = results.get("serving"), results.get("ceilings") or {}
    if not serving:
        return ["## Serving: POST /predict", "", "Not measured (see the errors below).", ""]
    derived = figures["serving"]
    rows = [
        [
            "raw forward, batch 1 (median / p95)",
            f"{_fmt(ceil.get('latency_b1_ms'))} / {_fmt(ceil.get('latency_b1_p95_ms'))} ms",
        ],
        [
            "raw forward, batch 8 / batch 32",
            f"{_fmt(ceil.get('forward_b8_ips'))} / {_fmt(ceil.get('forward_b32_ips'))} images/s",
        ],
        [
            f"/predict, one client, {serving['latency_requests']} requests: p50 / p95 / p99",
            f"{_fmt(serving['p50_ms'])} / {_fmt(serving['p95_ms'])} / {_fmt(serving['p99_ms'])} ms",
        ],
        ["/predict p50 − raw batch-1 forward", _fmt(derived.get("p50_overhead_ms"), 1, " ms")],
        ["/predict p50 / raw batch-1 forward", _x(derived.get("p50_vs_raw"))],
        *[
            [
                f"the API's Predictor without HTTP, {label}: batch-1 median / batch-8 images/s",
                f"{_fmt(_get(serving, 'raw', key, 'latency_b1_ms'))} ms / {_fmt(_get(serving, 'raw', key, 'forward_b8_ips'))}",
            ]
            for key, label in (
                ("default", "TensorFlow's default threads, one pass at a time"),
                (
                    "api",
                    f"as the API runs it ({_get(serving, 'raw', 'api', 'threads', default=NA)} "
                    f"thread per op, {_get(serving, 'raw', 'api', 'streams', default=NA)} passes "
                    f"at once: {_get(serving, 'api_processes', default=NA)} API processes, each "
                    f"{_get(serving, 'passes_per_process', default=NA)})",
                ),
            )
            if _get(serving, "raw", key)
        ],
        ["/predict p50 − the API's Predictor batch-1", _fmt(derived.get("p50_overhead_vs_api_raw_ms"), 1, " ms")],
        ["/predict 8 clients / the API's Predictor batch-8 images/s", _x(derived.get("c8_vs_api_raw_b8"))],
    ]
    levels = [
        [
            str(level["clients"]),
            str(level["requests"]),
            str(level["errors"]),
            _fmt(level["seconds"]),
            _fmt(level["throughput"]),
            _fmt(level["p50_ms"]),
            _fmt(level["p95_ms"]),
            _fmt(level.get("mean_batch"), 2),
            _fmt(level.get("server_cpu_ms"), 2),
            _fmt(level.get("client_cpu_ms"), 2),
            _x(derived["levels"][level["clients"]]["vs_b8"]),
            _x(derived["levels"][level["clients"]]["vs_b32"]),
        ]
        for level in serving["levels"]
    ]
    return [
        "## Serving: POST /predict (real uvicorn + redis-server, loopback, one 224-px JPEG per request)",
        "",
        *_table(["figure", "value"], rows),
        "",
        *_table(
            [
                "clients",
                "answered 200",
                "errors",
                "seconds",
                "requests/s",
                "p50 ms",
                "p95 ms",
                "images per forward",
                "API CPU ms/request",
                "client CPU ms/request",
                "/ raw batch-8 forward",
                "/ raw batch-32 forward",
            ],
            levels,
        ),
        "",
        "- **images per forward**: the micro-batcher's batch sizes (its histogram in `GET /metrics`). "
        "**API CPU**: the CPU time of the API's processes (all their threads) per answered request; **client CPU**: the load "
        "generator's (this process: raw keep-alive sockets in threads, `bench.serving.RawClient`), which runs on the same cores.",
        *_cpu_bound_line(derived.get("c8_cpu_bound"), ceil),
        "",
    ]


def _cpu_bound_line(bound: dict | None, ceil: dict) -> list[str]:
    if not bound:
        return []
    line = (
        f"- **CPU-bound limit at 8 clients**: cores / (API + client CPU per request) = {_fmt(bound['rps'])} "
        f"requests/s, {_x(bound['vs_b8'])} of the raw batch-8 forward: the most this machine allows with every "
        "core busy, whatever the batching."
    )
    if bound.get("forward_ms") is not None:
        line += (
            f" Of the API's CPU per request, the raw batch-8 forward accounts for {_fmt(bound['forward_ms'], 2)} ms "
            f"per image; the other {_fmt(bound['rest_ms'], 2)} ms are HTTP, multipart, JPEG decoding, batching "
            "and JSON, and the smaller batches' extra cost per image."
        )
    return [line]


def _memory(results: dict, figures: dict) -> list[str]:
    memory, derived = _get(results, "project_aug", "memory"), figures["memory"]
    lines = ["## Memory", ""]
    if memory:
        lines += _table(
            ["worker (the project's augmented run, in a process of its own)", "value"],
            [
                ["resident before the job (Python, TensorFlow, Keras loaded)", _mb(memory["baseline_rss"])],
                ["peak resident during the job", _mb(memory["peak_rss"])],
                ["growth", _mb(derived.get("worker_growth"))],
                ["decoded data set at the target size (uint8)", _mb(memory["decoded_bytes"])],
                ["model parameters (float32)", _mb(memory["model_bytes"])],
                ["growth / (decoded + model)", _x(derived.get("worker_growth_vs_bound"))],
            ],
        )
        small = _get(results, "project_small", "memory")
        if small and derived.get("worker_fixed") is not None:
            lines += [
                "",
                *_table(
                    ["what the growth is made of", "value"],
                    [
                        [
                            "the same job on 4 generated images per class, 2 + 2 epochs: growth (the working set that does not "
                            "grow with the data: batches in flight, TensorFlow's buffers and kernels, allocator arenas)",
                            _mb(derived["worker_fixed"]),
                        ],
                        ["growth beyond it, on this data set", _mb(derived["worker_data_growth"])],
                        ["decoded bytes beyond it", _mb(derived["worker_data_bytes"])],
                        [
                            "growth beyond it / decoded bytes beyond it",
                            _x(derived.get("worker_data_growth_vs_decoded")),
                        ],
                    ],
                ),
            ]
        cache_memory = _get(results, "project_cache", "memory")
        if cache_memory:
            lines += [
                "",
                f"Feature-cache run: peak {_mb(cache_memory['peak_rss'])}, growth "
                f"{_mb(cache_memory['peak_rss'] - cache_memory['baseline_rss'])}.",
            ]
        lines.append("")
    steps = _get(results, "serving", "memory", "steps")
    if steps:
        cache_size = _get(results, "serving", "memory", "cache_size")
        lines += _table(
            [f"API (MODEL_CACHE_SIZE={cache_size}), after asking for", "model", "resident", "peak"],
            [[step["after"], step["model_id"], _mb(step["rss"]), _mb(step["peak_rss"])] for step in steps],
        )
        lines += [
            "",
            f"One model file: {_mb(_get(results, 'serving', 'memory', 'model_file_bytes'))}. Memory per "
            f"cached model: {_mb(derived.get('api_per_model'))}; added past the cache size: "
            f"{_mb(derived.get('api_past_cache'))}.",
            "",
        ]
    return lines if len(lines) > 2 else []


def _targets(results: dict, figures: dict) -> list[str]:
    rows = []
    for target in targets_for(results.get("meta")):
        value, verdict = target.evaluate(figures)
        bound = (
            NA
            if target.threshold is None
            else (("≥ " if target.higher_is_better else "≤ ") + _fmt(float(target.threshold), 2, target.unit))
        )
        rows.append([target.name, _fmt(value, 2, target.unit), bound, verdict])
    return [
        "## Targets",
        "",
        "Issue 6's targets (`bench/targets.py`); training throughput judged on the **train** figures.",
        "",
        *_table(["target", "measured", "wanted", "result"], rows),
        "",
    ]


def render(results: dict) -> str:
    figures = derive(results)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`). Every figure below comes from one run, side by side "
        "(the project's training in a child process of its own, as a worker's); on a shared machine only the "
        "ratios are meaningful.",
        "",
        *_environment(results["meta"]),
        *_training(results, figures),
        *_serving(results, figures),
        *_batches(results, figures),
        *_memory(results, figures),
        *_targets(results, figures),
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

    ceil = results.get("ceilings") or {}
    phases = derive(results)["phases"]
    names = ["warmup", "cache", "finetune"]
    labels = ["phase 1\naugmented", "phase 1\nfeature cache", "phase 2\naugmented"]
    bars = {
        "ceiling": [phases[n]["ceiling"] for n in names],
        "seed (train)": [phases["warmup"]["seed_train"], None, phases["finetune"]["seed_train"]],
        "seed (wall)": [phases[n]["seed_wall"] for n in names],
        "project (train)": [phases["warmup"]["project_train"], None, phases["finetune"]["project_train"]],
        "project (wall)": [phases[n]["project_wall"] for n in names],
    }
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(bars)
    for number, (label, values) in enumerate(bars.items()):
        xs = [i + (number - (len(bars) - 1) / 2) * width for i in range(len(labels))]
        left.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
    left.set_xticks(range(len(labels)), labels)
    left.set_ylabel("images/s")
    left.set_title("Training throughput")
    left.legend(fontsize=8)

    serving = results.get("serving")
    if serving:
        clients = [level["clients"] for level in serving["levels"]]
        right.plot(clients, [level["throughput"] for level in serving["levels"]], "o-", label="/predict requests/s")
        for key, label, style in (
            ("forward_b8_ips", "raw forward b8", "--"),
            ("forward_b32_ips", "raw forward b32", ":"),
        ):
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
