"""Loaded models for /predict: each a `Predictor` with its own micro-batcher, least recently used evicted."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from finetune.ml.predictor import Predictor
from finetune.serving.batcher import BatchObserver, MicroBatcher
from finetune.serving.changes import SharedChangeCounter


@dataclass(frozen=True)
class BatchingOptions:
    """How each loaded model's micro-batcher gathers requests (see `MicroBatcher`)."""

    max_batch: int = 32
    max_wait_s: float = 0.001
    concurrency: int = 1
    on_batch: BatchObserver | None = None


@dataclass
class ServedModel:
    """One loaded model, ready for requests: its predictor (decoding, top-k) and its batcher (forward passes).
    The batcher lives and dies with the predictor: an evicted model is not kept alive by it."""

    predictor: Predictor
    batcher: MicroBatcher

    @property
    def model_id(self) -> str:
        return self.predictor.model_id


class PredictorCache:
    """Loaded models, least recently used evicted beyond `size`. Each model loads once even
    when several requests ask for it at the same moment.

    The store is asked again (the alias and the manifest read, the newest model looked up) at most
    every `revalidate_s` per reference (model id, alias, or None for the default): a moved alias is
    followed within that time, and `fresh` answers from memory in between, so a busy /predict skips
    a thread hop and a file (or object-store) read per request. A model deleted through this
    process is evicted at once, and so in the processes that share `changes` with it (one API server's,
    `SharedChangeCounter`); one deleted by another API server is served at most `revalidate_s` longer.
    `clock` is injectable so tests can age the confirmations without patching the standard library.
    """

    def __init__(
        self,
        store,
        *,
        size: int,
        batching: BatchingOptions | None = None,
        revalidate_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        changes: SharedChangeCounter | None = None,
    ):
        self.store, self.size, self.revalidate_s, self.clock = store, max(1, size), revalidate_s, clock
        self.changes = changes
        self.batching = batching or BatchingOptions()
        self._served: OrderedDict[str, ServedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        # asked-for ref (id, alias, None) -> (id, when, the change count before the store was asked)
        self._confirmed: dict[str | None, tuple[str, float, int]] = {}

    def fresh(self, ref: str | None) -> ServedModel | None:
        """The loaded model `ref` names (a model id or an alias; None: the default) if the store confirmed it within
        `revalidate_s`; None otherwise (then call `get`). Touches no file: safe on an event loop."""
        with self._lock:
            confirmed = self._confirmed.get(ref)
            if (
                confirmed is None
                or self.clock() - confirmed[1] > self.revalidate_s
                or confirmed[2] != self._change_count()
            ):
                return None
            served = self._served.get(confirmed[0])
            if served is not None:
                self._served.move_to_end(confirmed[0])
            return served

    def get(self, ref: str | None) -> ServedModel:
        changes_before = self._change_count()  # a change while the store is read makes this confirmation stale
        manifest = self.store.resolve(ref)
        served = self._load(manifest)
        with self._lock:
            self._confirmed[ref] = (served.model_id, self.clock(), changes_before)
        return served

    def _change_count(self) -> int:
        return self.changes.value() if self.changes is not None else 0

    def _load(self, manifest: dict) -> ServedModel:
        model_id = manifest["id"]
        with self._lock:
            if model_id in self._served:
                self._served.move_to_end(model_id)
                self._served[model_id].predictor.manifest = manifest  # e.g. thresholds set since it loaded
                return self._served[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._served:
                    return self._served[model_id]
            served = self._serve(manifest)
            with self._lock:
                self._served[model_id] = served
                self._loading.pop(model_id, None)
                while len(self._served) > self.size:
                    self._served.popitem(last=False)
            return served

    def _serve(self, manifest: dict) -> ServedModel:
        options = self.batching
        predictor = Predictor(self.store.model_file(manifest["id"]), manifest, max_batch=options.max_batch)
        predictor.warm_up()
        batcher = MicroBatcher(
            predictor.predict_pixels,
            name=predictor.model_id,
            max_batch=options.max_batch,
            max_wait_s=options.max_wait_s,
            concurrency=options.concurrency,
            on_batch=options.on_batch,
        )
        return ServedModel(predictor, batcher)

    def evict(self, model_id: str) -> None:
        """`model_id` was deleted through this process."""
        with self._lock:
            self._served.pop(model_id, None)
        self.changed()

    def changed(self) -> None:
        """The store changed through this process (a model deleted, an alias moved, thresholds set): every
        reference is asked again at its next request, here and in the processes sharing `changes`."""
        with self._lock:
            self._confirmed.clear()
        if self.changes is not None:
            self.changes.bump()

    def __len__(self) -> int:
        return len(self._served)

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._served)
