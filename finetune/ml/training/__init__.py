"""The training recipe (`recipe.train`) and what it is built from: feeding, validation, callbacks."""

from finetune.ml.training.callbacks import ProgressEvent
from finetune.ml.training.recipe import TrainResult, WarmStart, train

__all__ = ["ProgressEvent", "TrainResult", "WarmStart", "train"]
