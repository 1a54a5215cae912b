"""The `finetune` command: train, predict, layers, serve, export; `remote ...` drives a running service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.states import TRAINING_PHASES


def parse_assignment(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value), the value read as JSON when it parses, else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_assignments(spec: dict, assignments: list[tuple[list[str], object]]) -> dict:
    for path, value in assignments:
        node = spec
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return spec


class EpochBars:
    """One tqdm bar per epoch, closed with the epoch's metrics."""

    def __init__(self):
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.phase not in TRAINING_PHASES:
            self._close()
            print(f"[{event.phase}]", file=sys.stderr)
            return
        if event.metrics is not None:
            if self.bar is not None:
                self.bar.n = event.batches
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in event.metrics.items() if k not in ("phase", "epoch")})
            self._close()
            return
        if event.batch == 0:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=event.batches,
                desc=f"{event.phase} {event.epoch}/{event.epochs}",
                unit="batch",
                file=sys.stderr,
                leave=True,
            )
        self.bar.n = event.batch
        self.bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def command_train(args) -> int:
    from pydantic import ValidationError

    from finetune.errors import DomainError
    from finetune.ml.evaluation import format_report
    from finetune.ml.spec import TrainingSpec
    from finetune.ml.training.recipe import train
    from finetune.settings import get_settings
    from finetune.stores.models import ModelStore

    spec_data = args.spec or {}
    try:
        spec = TrainingSpec.model_validate(apply_assignments(spec_data, args.set or []))
    except ValidationError as error:
        print(f"invalid spec:\n{error}", file=sys.stderr)
        return 2
    out = args.out or get_settings().model_dir
    try:
        result = train(spec, dataset_dir=args.dataset, progress=EpochBars())
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    if result.warmup_metrics:
        print("\nAfter the warmup:\n" + format_report(result.warmup_metrics, result.classes))
    print("\nFinal:\n" + format_report(result.metrics, result.classes))
    for item in result.skipped:
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    manifest = ModelStore(out).save(result)
    rates = result.timings["images_per_s"]
    print(f"\nimages/s: warmup {rates['warmup']}, finetune {rates['finetune']}")
    print(f"model: {Path(out).resolve() / manifest['id']}")
    return 0


def command_predict(args) -> int:
    from finetune.errors import DomainError
    from finetune.ml.predictor import ImageInput, Predictor
    from finetune.stores.models import MANIFEST_FILE, MODEL_FILE

    folder = Path(args.model)
    if not (folder / MANIFEST_FILE).exists():
        print(f"error: {folder} is not a model folder (no {MANIFEST_FILE})", file=sys.stderr)
        return 2
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    predictor = Predictor(folder / MODEL_FILE, manifest)
    try:
        images = [ImageInput(name=str(path), data=Path(path).read_bytes()) for path in args.images]
        results = predictor.predict(images, top_k=args.top_k, threshold=args.threshold)
    except (OSError, DomainError) as error:
        print(f"error: {getattr(error, 'message', error)}", file=sys.stderr)
        return 1
    print(json.dumps({"model_id": manifest["id"], "results": results}, indent=2))
    return 0


def command_layers(args) -> int:
    from finetune.ml.backbones import BACKBONES, describe_layers, get_backbone

    if args.backbone not in BACKBONES:
        print(f"error: unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}", file=sys.stderr)
        return 2
    default = get_backbone(args.backbone).default_unfreeze_from
    print(f"{'index':>5}  {'name':<32} {'type':<24} {'params':>10}")
    for layer in describe_layers(args.backbone, args.alpha if get_backbone(args.backbone).has_alpha else None):
        mark = "  <- default unfreeze_from" if default in (layer["index"], layer["name"]) else ""
        print(f"{layer['index']:>5}  {layer['name']:<32} {layer['type']:<24} {layer['params']:>10}{mark}")
    return 0


def command_serve(args) -> int:
    from finetune.launcher import run_local_service
    from finetune.settings import get_settings

    return run_local_service(get_settings())


def command_export(args) -> int:
    """Build one export of a model folder (the worker's code), measure it against the model on its
    held-out images, write the file to --out and print the figures as JSON."""
    import shutil
    import tempfile

    from finetune.ml.export import ARTIFACT_FILES, export_and_measure
    from finetune.settings import get_settings
    from finetune.stores.models import MANIFEST_FILE, MODEL_FILE

    folder = Path(args.model)
    if not (folder / MANIFEST_FILE).exists():
        print(f"error: {folder} is not a model folder (no {MANIFEST_FILE})", file=sys.stderr)
        return 2
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    dataset_dir, missing = _export_dataset(args.dataset, manifest, get_settings().data_dir)
    out = Path(args.out or f"{manifest['id']}-{ARTIFACT_FILES[args.format]}")
    with tempfile.TemporaryDirectory(prefix="finetune-export-") as scratch:
        try:
            outcome = export_and_measure(
                folder / MODEL_FILE,
                manifest,
                args.format,
                Path(scratch),
                dataset_dir=dataset_dir,
                dataset_missing_reason=missing,
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(outcome.artifact, out)
    report = {
        "format": args.format,
        "file": str(out.resolve()),
        "size_bytes": outcome.size_bytes,
        "unpacked_bytes": outcome.unpacked_bytes,
        "build_seconds": outcome.build_seconds,
        "input": outcome.input,
        "parity": outcome.parity,
        "flagged": outcome.flag_reason is not None,
        "flag_reason": outcome.flag_reason,
    }
    print(json.dumps(report, indent=2))
    return 0


def _export_dataset(given: str | None, manifest: dict, data_dir: str) -> tuple[Path | None, str | None]:
    """--dataset, else the model's dataset in DATA_DIR when it is a local folder, else None and why."""
    if given:
        return Path(given), None
    dataset_id = manifest.get("dataset_id")
    if not dataset_id:
        return None, "the model names no dataset: pass --dataset (the folder it was trained on) to measure parity"
    candidate = Path(data_dir) / dataset_id / "images"
    if "://" in str(data_dir) or not candidate.is_dir():
        return None, f"dataset {dataset_id!r} is not in {data_dir}: pass --dataset to measure parity"
    return candidate, None


def read_spec_file(path: str) -> dict:
    """``--spec``: a readable file holding one JSON object, else argparse's usage error (exit 2)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{path} is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


# --- finetune remote: the Python client (finetune/client.py) from the shell ---------------------------


def print_json(value) -> None:
    """A record, a list of records or plain JSON, printed as JSON."""
    from pydantic import BaseModel

    def plain(item):
        return item.model_dump(mode="json", by_alias=True) if isinstance(item, BaseModel) else item

    print(json.dumps([plain(item) for item in value] if isinstance(value, list) else plain(value), indent=2))


def upload_bar(description: str):
    """A tqdm bar over bytes on stderr (silent when stderr is not a terminal), as an upload's progress callback."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="B", unit_scale=True, file=sys.stderr, disable=None)

    def progress(sent: int, total: int) -> None:
        bar.total = total
        bar.update(sent - bar.n)
        if sent >= total:
            bar.close()

    return progress


def remote_upload(api, args):
    return api.upload_dataset(args.path, name=args.name, progress=upload_bar(f"uploading {Path(args.path).name}"))


def remote_create_job(api, args):
    return api.create_job(args.dataset_id, apply_assignments(args.spec or {}, args.set or []))


def remote_watch(api, args):
    for job in api.watch(args.job_id, timeout=args.timeout):
        print(job.model_dump_json(), flush=True)  # one JSON line per state: `| jq` or a log follows it
    return None


def remote_wait(api, args):
    from finetune.client import JobFailed

    try:
        return api.wait(args.job_id, timeout=args.timeout)
    except JobFailed as failed:
        print_json(failed.job)
        raise


def remote_predict(api, args):
    return api.predict(args.images, model=args.model, top_k=args.top_k, threshold=args.threshold)


REMOTE_COMMANDS = {
    ("datasets", "upload"): remote_upload,
    ("datasets", "list"): lambda api, args: api.datasets(),
    ("datasets", "get"): lambda api, args: api.dataset(args.dataset_id),
    ("jobs", "create"): remote_create_job,
    ("jobs", "list"): lambda api, args: api.jobs(status=args.status),
    ("jobs", "get"): lambda api, args: api.job(args.job_id),
    ("jobs", "cancel"): lambda api, args: api.cancel_job(args.job_id),
    ("jobs", "watch"): remote_watch,
    ("jobs", "wait"): remote_wait,
    ("predict", None): remote_predict,
    ("models", "list"): lambda api, args: api.models(),
    ("models", "get"): lambda api, args: api.model(args.model_id),
    ("aliases", "list"): lambda api, args: api.aliases(),
    ("aliases", "get"): lambda api, args: api.alias(args.name),
    ("aliases", "set"): lambda api, args: api.set_alias(args.name, args.model_id),
    ("aliases", "delete"): lambda api, args: api.delete_alias(args.name),
}


def command_remote(args) -> int:
    """Exit codes: 0 done, 1 the API refused (its status and detail on stderr), the job did not succeed,
    the service could not be reached or a local file is missing; 2 a usage error."""
    import httpx

    from finetune.client import ApiError, Client, JobFailed

    if not args.url:
        print("error: give --url or set FINETUNE_URL", file=sys.stderr)
        return 2
    run = REMOTE_COMMANDS[(args.resource, getattr(args, "action", None))]
    try:
        with Client(args.url, api_key=args.api_key) as api:
            result = run(api, args)
    except ApiError as error:
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        print(f"error: HTTP {error.status_code}: {detail}", file=sys.stderr)
        return 1
    except (JobFailed, TimeoutError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except httpx.TransportError as error:
        print(f"error: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    if result is not None:
        print_json(result)
    return 0


def add_remote_commands(commands) -> None:
    import os

    remote = commands.add_parser("remote", help="drive a running service over its REST API")
    remote.add_argument("--url", default=os.environ.get("FINETUNE_URL"), help="the API (default: $FINETUNE_URL)")
    remote.add_argument("--api-key", default=os.environ.get("FINETUNE_API_KEY"), help="default: $FINETUNE_API_KEY")
    remote.set_defaults(run=command_remote)
    resources = remote.add_subparsers(dest="resource", required=True)

    def actions(name: str, help: str):
        return resources.add_parser(name, help=help).add_subparsers(dest="action", required=True)

    datasets = actions("datasets", "upload, list, get")
    upload = datasets.add_parser("upload", help="upload an archive, or a folder of <class>/<image> (zipped here)")
    upload.add_argument("path")
    upload.add_argument("--name")
    datasets.add_parser("list")
    datasets.add_parser("get").add_argument("dataset_id")

    jobs = actions("jobs", "create, list, get, cancel, watch, wait")
    create = jobs.add_parser("create", help="start a job on a dataset; prints it")
    create.add_argument("dataset_id")
    create.add_argument("--spec", type=read_spec_file, help="a JSON job spec file")
    create.add_argument("--set", action="append", type=parse_assignment, metavar="KEY=VALUE", help="as for train")
    jobs.add_parser("list").add_argument("--status")
    for action, help in (
        ("get", "the job now"),
        ("cancel", "cancel it"),
        ("watch", "one JSON line per change, until it ends"),
        ("wait", "the final job; exit 1 unless it succeeded"),
    ):
        parser = jobs.add_parser(action, help=help)
        parser.add_argument("job_id")
        if action in ("watch", "wait"):
            parser.add_argument("--timeout", type=float, default=None, help="seconds (default: none)")

    predict = resources.add_parser("predict", help="top-k labels of images; prints JSON")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--model", help="a model id or alias (default: the alias `default`, else the newest)")
    predict.add_argument("--top-k", type=int, default=None)
    predict.add_argument("--threshold", type=float, default=None)

    models = actions("models", "list, get")
    models.add_parser("list")
    models.add_parser("get").add_argument("model_id")

    aliases = actions("aliases", "list, get, set, delete")
    aliases.add_parser("list")
    aliases.add_parser("get").add_argument("name")
    alias_set = aliases.add_parser("set", help="point an alias at a model")
    alias_set.add_argument("name")
    alias_set.add_argument("model_id")
    aliases.add_parser("delete").add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    from finetune.ml.export import FORMATS

    parser = argparse.ArgumentParser(prog="finetune", description="Fine-tune an ImageNet backbone on your images.")
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train a model on a class-per-folder dataset")
    train_parser.add_argument("dataset", help="folder of <class>/<image> files")
    train_parser.add_argument("--spec", type=read_spec_file, help="a JSON job spec file (defaults: the seed's recipe)")
    train_parser.add_argument(
        "--set",
        action="append",
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set warmup.epochs=5 --set backbone=mobilenet",
    )
    train_parser.add_argument("--out", help="model store folder (default: $MODEL_DIR or ./models)")
    train_parser.set_defaults(run=command_train)

    predict_parser = commands.add_parser("predict", help="classify images with a model folder; prints JSON")
    predict_parser.add_argument("model", help="a model folder (holding manifest.json and model.keras)")
    predict_parser.add_argument("images", nargs="+")
    predict_parser.add_argument("--top-k", type=int, default=5)
    predict_parser.add_argument(
        "--threshold", type=float, default=None, help="abstain (label null) below this top-1 probability"
    )
    predict_parser.set_defaults(run=command_predict)

    layers_parser = commands.add_parser("layers", help="list a backbone's layers, to choose unfreeze_from")
    layers_parser.add_argument("backbone")
    layers_parser.add_argument("--alpha", type=float, default=None)
    layers_parser.set_defaults(run=command_layers)

    export_parser = commands.add_parser(
        "export", help="export a model folder as savedmodel, litert, litert_int8 or onnx; prints its parity"
    )
    export_parser.add_argument("model", help="a model folder (holding manifest.json and model.keras)")
    export_parser.add_argument("--format", required=True, choices=FORMATS)
    export_parser.add_argument("--out", help="the file to write (default: <model id>-<format's file name> here)")
    export_parser.add_argument(
        "--dataset", help="the class-per-folder dataset the model was trained on (default: its id in $DATA_DIR)"
    )
    export_parser.set_defaults(run=command_export)

    serve_parser = commands.add_parser("serve", help="start Redis (embedded), a worker and the API, like `make run`")
    serve_parser.set_defaults(run=command_serve)
    add_remote_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
