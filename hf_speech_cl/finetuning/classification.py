"""Utterance classification (keyword spotting, emotion recognition) around any `AutoModelForAudioClassification`.

- Label sets: `label_names(dataset, column)` reads a `ClassLabel`'s names, or the sorted distinct values of a plain
  column; `LabelMapper` turns a stored value (ClassLabel index, string or number) into the model's id and
  `check_labels` counts labels outside the label set (an error for the training split; left out of evaluation).
- `DataCollatorAudioClassification`: audio batch plus `labels` (B,) int64.
- `classification_metrics`: accuracy and macro-F1 with scikit-learn (the SUPERB KS/ER metric is accuracy; macro-F1
  weighs every class equally, which matters for unbalanced emotion corpora).
- `save_confusion_matrix`: counts as a PNG (matplotlib, Agg backend) and as JSON.
- `ClassificationEvaluator`: an `eval_fn` for `hf_speech_cl.training.train` gathering predictions from every
  process with `accelerate`'s `gather_for_metrics`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from .data import eval_batches

__all__ = [
    "ClassificationEvaluator",
    "DataCollatorAudioClassification",
    "LabelMapper",
    "classification_metrics",
    "check_labels",
    "label_names",
    "save_confusion_matrix",
]

logger = logging.getLogger(__name__)


def label_names(dataset: datasets.Dataset, column: str) -> list[str]:
    """The label set of `dataset[column]`: a `ClassLabel`'s names in id order, else the sorted distinct values.

    Raises:
        ValueError: if the column is missing or holds no label.
    """
    if column not in dataset.column_names:
        raise ValueError(f"Label column {column!r} not in the dataset's columns {dataset.column_names}")
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = {str(v) for v in dataset[column] if v is not None}
    if not values:
        raise ValueError(f"Label column {column!r} holds no label")
    return sorted(values)


@dataclass
class LabelMapper:
    """Stored label value → model label id.

    Args:
        label2id: the model's mapping (label name → id).
        stored_names: names of a `ClassLabel` column, so that a stored index `i` means `stored_names[i]`; None for
            columns that store the names (or numbers, compared as strings) themselves.
    """

    label2id: dict[str, int]
    stored_names: Sequence[str] | None = None

    def name(self, value: Any) -> str | None:
        """The label name of a stored value, or None (missing label, ClassLabel index -1 or out of range)."""
        if value is None:
            return None
        if self.stored_names is not None:
            index = int(value)
            return self.stored_names[index] if 0 <= index < len(self.stored_names) else None
        return str(value)

    def __call__(self, value: Any) -> int:
        """The model id of a stored value; -1 for a value outside the label set."""
        name = self.name(value)
        return self.label2id.get(name, -1) if name is not None else -1

    @classmethod
    def for_column(cls, dataset: datasets.Dataset, column: str, label2id: dict[str, int]) -> LabelMapper:
        feature = dataset.features[column]
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        return cls(label2id=dict(label2id), stored_names=names)


def check_labels(values: Iterable[Any], mapper: LabelMapper, *, split: str, strict: bool) -> dict[str, int]:
    """Count the labels of a split that fall outside the label set (missing, ClassLabel -1, unknown names).

    Args:
        values: the stored label values of the split's clips.
        mapper: stored value → model id.
        split: the split's name, for messages.
        strict: raise instead of warning (the training split, whose labels define the model).

    Returns:
        `{stored label: rows}` for the rows outside the label set (empty if none); `DataCollatorAudioClassification`
        leaves such rows out of every batch.

    Raises:
        ValueError: with `strict`, if any label is outside the set (quoting up to ten offending values and counts).
    """
    values = list(values)
    bad: Counter[str] = Counter()
    for value in values:
        if mapper(value) < 0:
            name = mapper.name(value)
            bad[str(name if name is not None else value)] += 1
    if not bad:
        return {}
    known = sorted(mapper.label2id, key=mapper.label2id.get)
    message = (
        f"{sum(bad.values())} of {len(values)} clips of split {split!r} have labels outside the label set {known}: "
        f"{dict(bad.most_common(10))}"
    )
    if strict:
        raise ValueError(message + ". Relabel or remove them before training.")
    logger.warning("%s; they are left out (counted as `%s_dropped_labels`).", message, split)
    return dict(bad)


@dataclass
class DataCollatorAudioClassification:
    """Audio batch (`AudioCollator`) plus `labels` (B,) int64 model ids (`LabelMapper`).

    Items whose label maps to -1 (outside the label set: missing, ClassLabel -1, a name the model does not know) are
    left out of the batch (`check_labels` counts them beforehand), so no clip is ever scored against a wrong id.
    """

    audio_collator: Any
    mapper: LabelMapper
    label_column: str = "label"

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        items = []
        for feature in features:
            if feature is None:
                continue
            feature = dict(feature)
            label = self.mapper(feature.pop(self.label_column))
            if label < 0:
                continue
            feature["labels"] = label
            items.append(feature)
        return self.audio_collator(items)


def classification_metrics(
    predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray, num_labels: int
) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over `num_labels` classes (scikit-learn).

    The macro average runs over the classes present in `references` or `predictions` (scikit-learn's default):
    a class the model never predicts counts with F1 = 0 (`zero_division=0`), a class absent from both is ignored.

    Raises:
        ValueError: if the lists differ in length, are empty, or hold an id outside [0, num_labels).
    """
    from sklearn.metrics import accuracy_score, f1_score

    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.size == 0:
        raise ValueError(
            f"Need equal, non-empty lists; got {predictions.shape} predictions, {references.shape} references"
        )
    present = sorted(set(references.tolist()) | set(predictions.tolist()))
    if present[0] < 0 or present[-1] >= num_labels:
        raise ValueError(f"Class ids must lie in [0, {num_labels}), got {present[0]}..{present[-1]}")
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "macro_f1": float(f1_score(references, predictions, labels=present, average="macro", zero_division=0)),
    }


def save_confusion_matrix(
    references: Sequence[int],
    predictions: Sequence[int],
    names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> np.ndarray:
    """Plot the confusion matrix (rows: true class, columns: predicted class; counts) to `path` (PNG).

    Also writes `path` with suffix `.json`: `{"labels": names, "matrix": counts}`.

    Returns:
        The (len(names), len(names)) int64 count matrix.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    matrix = confusion_matrix(references, predictions, labels=list(range(len(names))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(4.0, 0.6 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=list(names)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation="vertical"
    )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps({"labels": list(names), "matrix": matrix.tolist()}))
    return matrix


class ClassificationEvaluator:
    """`eval_fn` for the shared loop: predict an eval loader and score it (all processes take part).

    Args:
        dataloader: a loader of `DataCollatorAudioClassification` batches, passed to `accelerator.prepare`.
        accelerator: the run's `Accelerator`.
        id2label: the model's label names by id.
        prefix: metric name prefix (`eval` → `eval_accuracy`, `test` → `test_accuracy`).
        max_batches: evaluate at most this many batches per process (None: all).

    Calling it returns `{prefix}_accuracy`, `_macro_f1`, `_loss` (mean cross-entropy) and `_num_utterances`; the
    last references/predictions (gathered from all processes) stay in `self.references` / `self.predictions`, and
    `save_confusion_matrix(path)` plots them.
    """

    def __init__(
        self,
        dataloader: Iterable[dict[str, Any]],
        accelerator: Any,
        id2label: dict[int, str],
        *,
        prefix: str = "eval",
        max_batches: int | None = None,
    ):
        self.dataloader = dataloader
        self.accelerator = accelerator
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.prefix = prefix
        self.max_batches = max_batches
        self.references: list[int] = []
        self.predictions: list[int] = []
        self.metrics: dict[str, float] = {}
        self._warned_empty = False  # warned once per evaluator, not at every evaluation

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        accelerator = self.accelerator
        model = accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        predictions: list[int] = []
        references: list[int] = []
        losses: list[float] = []
        for batch in eval_batches(self.dataloader, self.max_batches):
            items = []
            if batch is not None:  # None: no readable clip here, but the all-gather below is still entered
                labels = batch.pop("labels")
                with accelerator.autocast():
                    logits = model(**batch).logits
                loss = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
                predicted = logits.argmax(-1).cpu()
                items = [(int(p), int(r), float(x)) for p, r, x in zip(predicted, labels.cpu(), loss.cpu())]
            gathered = accelerator.gather_for_metrics(items, use_gather_object=True)
            for prediction, reference, value in gathered:
                predictions.append(prediction)
                references.append(reference)
                losses.append(value)
        model.train(was_training)
        if not predictions:
            if not self._warned_empty:
                self._warned_empty = True
                logger.warning("%s: the evaluation data yielded no utterance (not warned again)", self.prefix)
            return {}
        scores = classification_metrics(predictions, references, len(self.id2label))
        self.references, self.predictions = references, predictions
        metrics = {
            f"{self.prefix}_accuracy": scores["accuracy"],
            f"{self.prefix}_macro_f1": scores["macro_f1"],
            f"{self.prefix}_loss": float(np.mean(losses)),
            f"{self.prefix}_num_utterances": float(len(predictions)),
        }
        self.metrics = metrics
        if accelerator.is_main_process:
            logger.info(
                "%s: accuracy %.4f, macro-F1 %.4f over %d utterances",
                self.prefix,
                scores["accuracy"],
                scores["macro_f1"],
                len(predictions),
            )
        return metrics

    def save_confusion_matrix(self, path: str | os.PathLike) -> np.ndarray | None:
        """Plot the confusion matrix of the last evaluation to `path` (PNG, plus `.json`); main process only.

        Returns:
            The count matrix on the main process, None elsewhere or before any evaluation.
        """
        if not self.accelerator.is_main_process or not self.predictions:
            return None
        names = [self.id2label[i] for i in range(len(self.id2label))]
        accuracy = self.metrics.get(f"{self.prefix}_accuracy", float("nan"))
        return save_confusion_matrix(
            self.references, self.predictions, names, path, title=f"{self.prefix}: accuracy {accuracy:.3f}"
        )
