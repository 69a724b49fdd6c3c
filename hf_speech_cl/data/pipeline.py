"""From `DataArguments` to datasets and DataLoaders: the few lines every recipe would otherwise repeat."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import DataLoader
from transformers import Wav2Vec2FeatureExtractor

from .arguments import DataArguments
from .audio import min_input_samples as encoder_min_input_samples
from .collators import AudioCollator
from .loading import load_split
from .sampling import make_dataloader
from .speech_dataset import SpeechDataset, SpeechIterableDataset
from .subsets import select_subset_by_duration

__all__ = ["build_pretraining_dataloaders", "build_speech_datasets", "eval_clip_options"]

logger = logging.getLogger(__name__)

SpeechData = SpeechDataset | SpeechIterableDataset


def _load_split(
    data_args: DataArguments,
    split: str,
    *,
    sampling_rate: int,
    max_samples: int | None,
    minutes: float | None,
    shuffle: bool,
    seed: int,
    min_input_samples: int = 1,
) -> Any:
    dataset = load_split(data_args, split, sampling_rate=sampling_rate)
    if data_args.streaming:
        if minutes is not None:
            raise ValueError(
                f"train_minutes={minutes} needs the whole split to choose from: use it without --streaming"
            )
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        return dataset.take(max_samples) if max_samples is not None else dataset
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if minutes is not None:
        if data_args.speaker_column is not None and data_args.speaker_column not in dataset.column_names:
            raise ValueError(
                f"--train_minutes {minutes:g} balances the subset over speakers, but the speaker column "
                f"{data_args.speaker_column!r} is not among the columns {dataset.column_names} of "
                f"{data_args.dataset_name!r}: name it with --speaker_column, or pass --speaker_column none for a "
                "random subset"
            )
        dataset = select_subset_by_duration(
            dataset,
            minutes,
            seed,
            data_args.speaker_column,
            audio_column=data_args.audio_column,
            num_proc=data_args.preprocessing_num_workers,
            # counted after the length filters: the subset is what training will use
            min_duration_s=max(data_args.min_duration_s, min_input_samples / sampling_rate),
            max_duration_s=data_args.max_duration_s,
        )
    return dataset


def eval_clip_options(data_args: DataArguments, pad_to_s: float = 0.0) -> dict[str, Any]:
    """The filters of evaluation and test splits: every non-empty utterance up to `max_eval_duration_s` (default: no
    limit), no crop; clips shorter than `pad_to_s` seconds or the receptive field are zero-padded to it, not
    dropped (pretraining evaluation pads to `min_duration_s`, so that a wav2vec 2.0 / HuBERT clip can be masked)."""
    return {"min_duration_s": pad_to_s, "max_duration_s": data_args.max_eval_duration_s, "pad_short": True}


def build_speech_datasets(
    data_args: DataArguments,
    *,
    sampling_rate: int | None = None,
    min_input_samples: int = 1,
    seed: int = 0,
    keep_columns: Sequence[str] = (),
    eval_pad_to_s: float = 0.0,
) -> tuple[SpeechData, SpeechData | None]:
    """The training and evaluation datasets that `data_args` describe.

    Training: `train_split`, shuffled (streams: a seeded shuffle window), the first `max_train_samples`, a
    `train_minutes` speaker-balanced subset of the clips that pass the duration filters, the filters, random crops
    of `max_train_crop_s`. Evaluation: `eval_split`, the first `max_eval_samples`, every utterance up to
    `max_eval_duration_s` (`eval_clip_options`), no crop.

    Args:
        data_args: the parsed `DataArguments`.
        sampling_rate: target rate in Hz (default `data_args.sampling_rate`).
        min_input_samples: shortest clip in samples, e.g. `min_input_samples(encoder_config)`.
        seed: seed of shuffling, crops and subset choice.
        keep_columns: columns to pass through to the collator (e.g. `[data_args.text_column]`).
        eval_pad_to_s: evaluation clips shorter than this (seconds) are zero-padded to it (`eval_clip_options`).

    Returns:
        `(train, eval)`: `SpeechDataset`s, or `SpeechIterableDataset`s when streaming; `eval` is `None` without
        `eval_split`.

    Raises:
        ValueError: a missing split or column, or `train_minutes` with `streaming`.
    """
    sampling_rate = sampling_rate if sampling_rate is not None else data_args.sampling_rate
    common: dict[str, Any] = {
        "sampling_rate": sampling_rate,
        "audio_column": data_args.audio_column,
        "keep_columns": tuple(keep_columns),
        "min_duration_s": data_args.min_duration_s,
        "max_duration_s": data_args.max_duration_s,
        "min_input_samples": min_input_samples,
        "seed": seed,
    }
    wrap: Callable[..., SpeechData]
    if data_args.streaming:
        wrap = SpeechIterableDataset
    else:
        common["num_proc"] = data_args.preprocessing_num_workers
        wrap = SpeechDataset
    train_raw = _load_split(
        data_args,
        data_args.train_split,
        sampling_rate=sampling_rate,
        max_samples=data_args.max_train_samples,
        minutes=data_args.train_minutes,
        shuffle=True,
        seed=seed,
        min_input_samples=min_input_samples,
    )
    train = wrap(train_raw, max_crop_s=data_args.max_train_crop_s, **common)
    if data_args.eval_split is None:
        return train, None
    eval_raw = _load_split(
        data_args,
        data_args.eval_split,
        sampling_rate=sampling_rate,
        max_samples=data_args.max_eval_samples,
        minutes=None,
        shuffle=False,
        seed=seed,
    )
    return train, wrap(eval_raw, max_crop_s=None, **{**common, **eval_clip_options(data_args, eval_pad_to_s)})


def build_pretraining_dataloaders(
    data_args: DataArguments,
    feature_extractor: Wav2Vec2FeatureExtractor,
    encoder_config: Any,
    *,
    batch_size: int,
    seed: int = 0,
    collator: Callable[[list[Any]], Any] | None = None,
    eval_batch_size: int | None = None,
    keep_columns: Sequence[str] = (),
    min_clips: int = 1,
) -> tuple[DataLoader, DataLoader | None]:
    """Training and evaluation DataLoaders for a pretraining recipe.

    Clips shorter than the encoder's receptive field (`min_input_samples(encoder_config)`) are always dropped.
    The training loader draws length-grouped batches in an order fixed by `(seed, epoch)`; the evaluation loader
    has a fixed order.

    Args:
        data_args: the parsed `DataArguments`.
        feature_extractor: the model's feature extractor; its `sampling_rate` is the target rate.
        encoder_config: the encoder's config (`conv_kernel`, `conv_stride`), e.g. `Wav2Vec2Config`.
        batch_size: clips per batch per process (training).
        seed: seed of order, crops and shuffling.
        collator: default `AudioCollator(feature_extractor)`; e.g. `DataCollatorForWav2Vec2Pretraining`.
        eval_batch_size: clips per evaluation batch (default `batch_size`).
        keep_columns: columns passed through to the collator.
        min_clips: fewest clips per batch the objective needs (SimCLR: 2). The default collator returns `None` for
            a batch with fewer left after unreadable clips are dropped (skipped by every process together), and a
            map-style training set whose last batch would be smaller drops it (`drop_last`).

    Returns:
        `(train_loader, eval_loader)`; `eval_loader` is `None` without `eval_split`.

    Raises:
        ValueError: `data_args.sampling_rate` differs from the feature extractor's (the model's) rate.
    """
    if data_args.sampling_rate != feature_extractor.sampling_rate:
        raise ValueError(
            f"--sampling_rate {data_args.sampling_rate} differs from the model's feature extractor "
            f"({feature_extractor.sampling_rate} Hz): set --sampling_rate {feature_extractor.sampling_rate}"
        )
    train, evaluation = build_speech_datasets(
        data_args,
        sampling_rate=feature_extractor.sampling_rate,
        min_input_samples=encoder_min_input_samples(encoder_config),
        seed=seed,
        keep_columns=keep_columns,
        eval_pad_to_s=data_args.min_duration_s,  # short eval clips padded to what training masks, not dropped
    )
    collator = collator if collator is not None else AudioCollator(feature_extractor, min_clips=min_clips)
    loader_kwargs = {
        "group_by_length": data_args.group_by_length,
        "seed": seed,
        "num_workers": data_args.dataloader_num_workers,
        "buffer_size": data_args.shuffle_buffer_size,
    }
    remainder = len(train) % batch_size if hasattr(train, "__len__") else 0
    drop_last = 0 < remainder < min_clips
    train_loader = make_dataloader(train, collator, batch_size, shuffle=True, drop_last=drop_last, **loader_kwargs)
    if evaluation is None:
        return train_loader, None
    eval_loader = make_dataloader(evaluation, collator, eval_batch_size or batch_size, shuffle=False, **loader_kwargs)
    return train_loader, eval_loader
