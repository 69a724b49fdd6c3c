"""Fine-tuning's additions to the shared data pipeline: a third (test) split, and column values of a split."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import datasets

from ..data import DataArguments, SpeechDataset, SpeechIterableDataset, build_speech_datasets, load_split
from ..data.pipeline import eval_clip_options

__all__ = [
    "build_eval_dataset",
    "eval_batches",
    "build_finetuning_datasets",
    "class_label_names",
    "column_values",
    "loader_kwargs",
]


def build_finetuning_datasets(
    data_args: DataArguments,
    *,
    sampling_rate: int,
    min_input_samples: int,
    seed: int,
    column: str,
    test_split: str | None,
) -> dict[str, SpeechDataset | SpeechIterableDataset | None]:
    """`{"train", "validation", "test"}` datasets keeping `column` (transcripts or labels) beside the audio.

    Train and validation come from `build_speech_datasets` (the `train_minutes` subset, duration filters, crops);
    test from `build_eval_dataset`. A missing `eval_split` / `test_split` gives None.
    """
    train, validation = build_speech_datasets(
        data_args, sampling_rate=sampling_rate, min_input_samples=min_input_samples, seed=seed, keep_columns=[column]
    )
    test = None
    if test_split is not None:
        test = build_eval_dataset(
            data_args,
            test_split,
            sampling_rate=sampling_rate,
            min_input_samples=min_input_samples,
            keep_columns=(column,),
        )
    return {"train": train, "validation": validation, "test": test}


def loader_kwargs(data_args: DataArguments, seed: int) -> dict[str, Any]:
    """The `make_dataloader` options that `data_args` set (length grouping, workers, stream window) and the seed."""
    return {
        "group_by_length": data_args.group_by_length,
        "seed": seed,
        "num_workers": data_args.dataloader_num_workers,
        "buffer_size": data_args.shuffle_buffer_size,
    }


def build_eval_dataset(
    data_args: DataArguments,
    split: str,
    *,
    sampling_rate: int,
    min_input_samples: int,
    keep_columns: tuple[str, ...],
) -> SpeechDataset | SpeechIterableDataset:
    """Split `split` prepared like `build_speech_datasets` prepares the eval split (every utterance up to
    `max_eval_duration_s`, short ones padded, the first `max_eval_samples`, no crop, fixed order): the test split.

    Raises:
        ValueError: the split or a column does not exist.
    """
    dataset = load_split(data_args, split, sampling_rate=sampling_rate)
    common: dict[str, Any] = {
        "sampling_rate": sampling_rate,
        "audio_column": data_args.audio_column,
        "keep_columns": keep_columns,
        "min_input_samples": min_input_samples,
        "max_crop_s": None,
        **eval_clip_options(data_args),
    }
    if data_args.streaming:
        if data_args.max_eval_samples is not None:
            dataset = dataset.take(data_args.max_eval_samples)
        return SpeechIterableDataset(dataset, **common)
    if data_args.max_eval_samples is not None:
        dataset = dataset.select(range(min(data_args.max_eval_samples, len(dataset))))
    return SpeechDataset(dataset, num_proc=data_args.preprocessing_num_workers, **common)


def column_values(dataset: SpeechDataset | SpeechIterableDataset, column: str, limit: int | None = None) -> list[Any]:
    """The values of `column` for the clips `dataset` yields (after its duration filters), without decoding audio.

    A streaming dataset is read from the start, at most `limit` rows (it holds no index of its clips).
    """
    if isinstance(dataset, SpeechDataset):
        indices = dataset.indices if limit is None else dataset.indices[:limit]
        return list(dataset.dataset.select(indices)[column])
    return [row[column] for row in itertools.islice(iter(dataset.dataset), limit)]


def class_label_names(dataset: SpeechDataset | SpeechIterableDataset, column: str) -> list[str] | None:
    """The names of `column` if the underlying table types it as a `datasets.ClassLabel`, else None."""
    features = getattr(dataset.dataset, "features", None) or {}
    feature = features.get(column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def eval_batches(
    dataloader: Iterable[dict[str, Any] | None], max_batches: int | None = None
) -> Iterator[dict[str, Any] | None]:
    """The batches an evaluator scores: copies (safe to `pop` from) of the first `max_batches` (all when `None`).

    A batch whose every clip was unreadable (see `SpeechDataset`) is yielded as `None`: the evaluator must still
    enter its `gather_for_metrics` with no item, or the processes' all-gathers would pair up different batches.
    """
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        yield None if batch is None else dict(batch)
