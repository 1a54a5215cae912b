"""The batch runner's `ChunkLabeller`: a chunk labelled one forward pass at a time, each pass waiting only
for its own images, rows in the chunk's order, an unreadable image's row carrying its error."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from finetune.execution.batch_runner import ChunkLabeller, LabelOptions
from finetune.ml.predictor import Predictor

CLASSES = ["blue", "red"]


class PassRecorder:
    """predict_pixels: an image's first pixel value v gives probabilities (1 - v/255, v/255); records each
    pass's size and, at the first pass, resolves the images still decoding (as the decode pool would)."""

    top_k = Predictor.top_k

    def __init__(self, max_batch: int, later: list[tuple[Future, object]]):
        self.max_batch, self.classes, self.later, self.passes = max_batch, CLASSES, later, []

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.passes.append(len(pixels))
        for future, outcome in self.later:
            if not future.done():
                future.set_result(outcome)
        red = pixels[:, 0, 0, 0].astype(np.float32) / 255
        return np.stack([1 - red, red], axis=1)


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.uint8)


def resolved(outcome) -> Future:
    future = Future()
    future.set_result(outcome)
    return future


def test_each_pass_waits_only_for_its_own_images_and_rows_keep_the_chunks_order():
    """Images 0-1 decoded, 2-4 still decoding when the first pass starts (they finish during it);
    image 3 unreadable. Passes of at most 2 images; one row per path, in order."""
    broken = {"type": "BadImage", "message": "c.png: corrupt image"}
    pending = [Future(), Future(), Future()]
    predictor = PassRecorder(2, list(zip(pending, [image(255), broken, image(0)])))
    options = LabelOptions(top_k=1, threshold=None, thresholds={}, max_pixels=10_000)
    labeller = ChunkLabeller(predictor, source=None, options=options, threads=1)
    paths = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    rows: list[dict] = []
    worker = threading.Thread(
        target=lambda: rows.extend(labeller.label(paths, [resolved(image(0)), resolved(image(255)), *pending]))
    )
    worker.start()
    worker.join(60)  # a hang guard: waiting for the whole chunk first would never end
    assert not worker.is_alive(), "the first pass waited for images that only decode during it"
    assert predictor.passes == [2, 1, 1]  # [a, b], [c] (d unreadable), [e]
    assert [row["path"] for row in rows] == paths
    assert [row["label"] for row in rows] == ["blue", "red", "red", None, "blue"]
    assert rows[3]["error"] == broken and rows[3]["predictions"] == []
    assert all(row["error"] is None for i, row in enumerate(rows) if i != 3)
    assert rows[1]["predictions"] == [{"label": "red", "probability": 1.0}]


def test_top_k_of_many_rows_at_once_is_each_rows_own_sort():
    probabilities = np.random.default_rng(0).dirichlet(np.ones(5), size=50).astype(np.float32)
    predictor = PassRecorder(8, [])
    predictor.classes = list("abcde")
    got = predictor.top_k(probabilities, 3)
    for row, top in zip(probabilities, got):
        order = np.argsort(row)[::-1][:3]
        assert top == [{"label": "abcde"[i], "probability": float(row[i])} for i in order]
