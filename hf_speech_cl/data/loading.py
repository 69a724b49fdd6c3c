"""One function from a dataset spec to a `datasets` split, whatever the spec names.

A spec is one of:
- an offline corpus name (`hf_speech_cl.data.synthetic.CORPORA`): `load_corpus(name, cache_dir=..., **kwargs)[split]`;
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (a `Dataset` is taken whole, a
  `DatasetDict` gives `split`);
- any other local folder: `datasets.load_dataset(folder)`, which picks the builder from the files it holds: data
  shards in a Hub layout (Parquet, Arrow, JSON, CSV; e.g. a copy of `openslr/librispeech_asr` holding
  `data/train-00000-of-00001.parquet`, splits named by the file names) or audio files (audiofolder: optionally a
  `metadata.csv` with a `file_name` column and extra columns; `train/`, `validation/`... subfolders become splits),
  streaming or not; a folder holding none of these is a `ValueError` saying what was looked for;
- anything else: a Hub dataset, `datasets.load_dataset(name, config, split=split, streaming=streaming)`
  (e.g. `openslr/librispeech_asr`, config `clean`, split `train.100`; stream the 960 h with `streaming=True`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets

from .audio import DEFAULT_SAMPLING_RATE

__all__ = ["is_offline_corpus", "load_split", "load_speech_dataset"]

logger = logging.getLogger(__name__)


def is_offline_corpus(name: str) -> bool:
    """Whether `name` is one of the offline synthetic corpora (`hf_speech_cl.data.synthetic.CORPORA`)."""
    from .synthetic import CORPORA

    return name in CORPORA


def _pick_split(splits: Any, split: str, name: str) -> Any:
    if split not in splits:
        raise ValueError(f"Split {split!r} not found in {name!r}; available splits: {sorted(splits)}")
    return splits[split]


def _is_save_to_disk_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))


def load_speech_dataset(
    name: str,
    *,
    config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    sampling_rate: int | None = DEFAULT_SAMPLING_RATE,
    audio_column: str = "audio",
    cache_dir: str | os.PathLike | None = None,
    **corpus_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load split `split` of the dataset that `name` names (see the module docstring for the four kinds).

    Args:
        name: an offline corpus name, a local folder (`save_to_disk` output, Hub-layout data shards or audio
            files), or a Hub dataset id.
        config: the Hub dataset's configuration (e.g. `clean`), or an offline corpus' named size
            (`hf_speech_cl.data.synthetic.CORPUS_CONFIGS`, e.g. `large`); ignored by local folders.
        split: the split to return (e.g. `train`, `validation`, `train.100`).
        streaming: return a `datasets.IterableDataset` that reads as it goes (Hub and audiofolder: without
            downloading everything first; offline corpora and `save_to_disk` folders: `to_iterable_dataset()`).
        sampling_rate: cast the audio column to `datasets.Audio(sampling_rate=...)` so that decoding through
            `datasets` gives audio at this rate (Hz); `None` keeps the stored rate. The feature extractor's
            `sampling_rate` belongs here.
        audio_column: the audio column, which must exist.
        cache_dir: cache folder for `datasets` (Hub, audiofolder) and for building the offline corpora.
        **corpus_kwargs: offline corpora: size parameters and `seed` of `load_corpus`; Hub and audiofolder: extra
            keyword arguments of `datasets.load_dataset` (`revision`, `token`, `data_files`, ...).

    Returns:
        A `datasets.Dataset`, or a `datasets.IterableDataset` when `streaming`.

    Raises:
        ValueError: the split does not exist (the message lists the splits), the audio column is missing, or a local
            folder holds nothing loadable (the message lists what was looked for).
    """
    if is_offline_corpus(name):
        from .synthetic import load_corpus

        dataset = _pick_split(load_corpus(name, cache_dir=cache_dir, config=config, **corpus_kwargs), split, name)
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 64)))
    elif os.path.isdir(name) and _is_save_to_disk_folder(name):
        loaded = datasets.load_from_disk(name)
        dataset = _pick_split(loaded, split, name) if isinstance(loaded, datasets.DatasetDict) else loaded
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 64)))
    elif os.path.isdir(name):
        try:
            loaded = datasets.load_dataset(name, streaming=streaming, cache_dir=cache_dir, **corpus_kwargs)
        except (datasets.data_files.EmptyDatasetError, datasets.exceptions.DataFilesNotFoundError) as error:
            raise ValueError(
                f"Folder {name!r} holds no dataset `hf_speech_cl` can load: looked for a `save_to_disk` folder "
                "(dataset_dict.json or state.json), data shards in a Hub layout (.parquet, .arrow, .json/.jsonl, "
                ".csv, e.g. data/train-00000-of-00001.parquet) and audio files (.wav, .flac, .mp3, ... for an "
                f"audiofolder, optionally with metadata.csv), and found none ({error})"
            ) from None
        dataset = _pick_split(loaded, split, name)
    else:
        dataset = datasets.load_dataset(
            name, config, split=split, streaming=streaming, cache_dir=cache_dir, **corpus_kwargs
        )
    features = dataset.features
    if features is not None:
        if audio_column not in features:
            raise ValueError(f"Audio column {audio_column!r} not in the columns {list(features)} of {name!r}")
        feature = features[audio_column]
        if (
            sampling_rate is not None
            and isinstance(feature, datasets.Audio)
            and feature.sampling_rate != sampling_rate
        ):
            dataset = dataset.cast_column(
                audio_column,
                datasets.Audio(
                    sampling_rate=sampling_rate,
                    decode=feature.decode,
                    num_channels=feature.num_channels,
                    stream_index=feature.stream_index,
                ),
            )
    return dataset


def load_split(
    data_args: Any, split: str, *, streaming: bool | None = None, sampling_rate: int | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """`load_speech_dataset` of split `split` of the dataset that `data_args` (a `DataArguments`) names: its name,
    config, `dataset_kwargs`, audio column and cache, streaming as `data_args.streaming` unless `streaming` says
    otherwise, decoded at `sampling_rate` (default `data_args.sampling_rate`).

    Raises:
        ValueError: see `load_speech_dataset`.
    """
    return load_speech_dataset(
        data_args.dataset_name,
        config=data_args.dataset_config,
        split=split,
        streaming=data_args.streaming if streaming is None else streaming,
        sampling_rate=data_args.sampling_rate if sampling_rate is None else sampling_rate,
        audio_column=data_args.audio_column,
        cache_dir=data_args.cache_dir,
        **data_args.dataset_kwargs_dict,
    )
