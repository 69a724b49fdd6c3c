"""Frame features for HuBERT pseudo-labels, and a memory-mapped store for the features of a whole split.

The features are the ones a `HubertPseudoLabeler` computes (one implementation, so labels made from dumped features
equal the labeler's own): Kaldi MFCC + Δ + ΔΔ (`mfcc_features`, fairseq `dump_mfcc_feature.py`) or a hidden layer
of a HuBERT encoder (`hubert_layer_features`, fairseq `dump_hubert_feature.py`, either layer convention).

A split's features are written frame after frame into one raw float32 file (`FeatureStore`), with the frame count of
every utterance beside it, and read back memory-mapped: fairseq's `.npy` + `.len` shards, without its
`learn_kmeans.py` habit of loading everything into RAM. Disk needed: frames × dim × 4 bytes (LibriSpeech 960 h:
MFCC at 100 Hz 52 GB, a BASE layer at 50 Hz 530 GB; dump a subset with `max_utterances` for k-means if that is too
much and label with the labeler itself).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.hubert_pretraining import HubertPseudoLabeler, hubert_layer_features, kaldi_mfcc

__all__ = [
    "FeatureStore",
    "FeatureStoreWriter",
    "dump_features",
    "hubert_layer_features",
    "iter_waveforms",
    "mfcc_features",
    "prepare_audio_column",
]

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.f32"
LENGTHS_FILE = "lengths.npy"
INFO_FILE = "features.json"


def mfcc_features(waveform: torch.Tensor | np.ndarray, sampling_rate: int, **kwargs: Any) -> torch.Tensor:
    """39-d Kaldi MFCC (13 + Δ + ΔΔ) of one waveform `(samples,)` in [-1, 1] → `(frames, 39)` float32.

    fairseq `dump_mfcc_feature.py` settings: `torchaudio.compliance.kaldi.mfcc(use_energy=False)` (25 ms window,
    10 ms hop) then `torchaudio.functional.compute_deltas` twice. `kwargs`: `num_ceps`, `num_mel_bins`,
    `frame_length_ms`, `frame_shift_ms`, `num_deltas` (see `kaldi_mfcc`).
    """
    return kaldi_mfcc(torch.as_tensor(waveform, dtype=torch.float32), sampling_rate, **kwargs)


def prepare_audio_column(
    dataset: datasets.Dataset, sampling_rate: int, audio_column: str = "audio"
) -> datasets.Dataset:
    """`dataset` with only `audio_column`, decoded at `sampling_rate` (cast, so `datasets` resamples if needed).

    Raises:
        ValueError: the column is missing or is not an `Audio` feature.
    """
    if audio_column not in dataset.column_names:
        raise ValueError(f"No audio column {audio_column!r} in the dataset; columns: {dataset.column_names}.")
    feature = dataset.features[audio_column]
    if not isinstance(feature, datasets.Audio):
        raise ValueError(f"Column {audio_column!r} is {type(feature).__name__}, expected a datasets.Audio feature.")
    dataset = dataset.select_columns([audio_column])
    if feature.sampling_rate != sampling_rate or not feature.decode:
        dataset = dataset.cast_column(
            audio_column, datasets.Audio(sampling_rate=sampling_rate, num_channels=feature.num_channels)
        )
    return dataset


def iter_waveforms(
    dataset: datasets.Dataset, sampling_rate: int, audio_column: str = "audio", indices: list[int] | None = None
) -> Iterator[np.ndarray]:
    """Mono float32 waveforms in [-1, 1] at `sampling_rate`, one per row (or per row of `indices`), in order.

    Decoded by `datasets` (`x["array"]`, `x["sampling_rate"]`); multi-channel audio is averaged to mono.

    Raises:
        ValueError: a decoded row does not have `sampling_rate`.
    """
    dataset = prepare_audio_column(dataset, sampling_rate, audio_column)
    rows = range(len(dataset)) if indices is None else indices
    for row in rows:
        audio = dataset[int(row)][audio_column]
        if audio["sampling_rate"] != sampling_rate:
            raise ValueError(f"Row {row} decoded at {audio['sampling_rate']} Hz, expected {sampling_rate} Hz.")
        waveform = np.asarray(audio["array"], dtype=np.float32)
        if waveform.ndim == 2:  # (channels, samples)
            waveform = waveform.mean(axis=0 if waveform.shape[0] < waveform.shape[1] else 1)
        yield waveform


class FeatureStoreWriter:
    """Appends `(frames, dim)` float32 blocks to `path/features.f32`; `close()` writes lengths and metadata.

    Use as a context manager; on an exception nothing is finalised (no `features.json`), so an interrupted dump is
    never mistaken for a finished one.
    """

    def __init__(self, path: str | Path, dim: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.lengths: list[int] = []
        self._file = open(self.path / FEATURES_FILE, "wb")  # noqa: SIM115 - closed in close()

    def append(self, features: np.ndarray | torch.Tensor) -> None:
        """Add one utterance's features `(frames, dim)`.

        Raises:
            ValueError: wrong shape.
        """
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"Expected features of shape (frames, {self.dim}). Found: {list(features.shape)}")
        self._file.write(features.tobytes())
        self.lengths.append(features.shape[0])

    def close(self, info: dict[str, Any] | None = None) -> FeatureStore:
        """Finish: write `lengths.npy` and `features.json` (with `info`), return the store opened for reading."""
        self._file.close()
        np.save(self.path / LENGTHS_FILE, np.asarray(self.lengths, dtype=np.int64))
        meta = {
            "dim": self.dim,
            "dtype": "float32",
            "num_utterances": len(self.lengths),
            "num_frames": int(sum(self.lengths)),
            **(info or {}),
        }
        (self.path / INFO_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return FeatureStore(self.path)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._file.closed:
            self._file.close()


class FeatureStore:
    """Read side of a dumped split: `store[i]` is utterance i's `(frames, dim)` features, memory-mapped.

    Attributes:
        features: `(num_frames, dim)` float32 `np.memmap` of all frames, utterance after utterance.
        lengths: `(num_utterances,)` frames per utterance; `offsets` their starts.
        info: the metadata written with the dump (`features.json`).

    Raises:
        FileNotFoundError: `path` holds no finished dump.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / INFO_FILE).exists():
            raise FileNotFoundError(f"No finished feature dump in {self.path} (missing {INFO_FILE}).")
        self.info: dict[str, Any] = json.loads((self.path / INFO_FILE).read_text())
        self.lengths = np.load(self.path / LENGTHS_FILE)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.dim = int(self.info["dim"])
        num_frames = int(self.lengths.sum())
        self.features = (
            np.memmap(self.path / FEATURES_FILE, dtype=np.float32, mode="r", shape=(num_frames, self.dim))
            if num_frames
            else np.zeros((0, self.dim), dtype=np.float32)
        )

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.offsets[index])
        return self.features[start : start + int(self.lengths[index])]

    def sample_utterances(self, fraction: float, seed: int = 0) -> np.ndarray:
        """Indices of `ceil(fraction × utterances)` utterances drawn without replacement, sorted.

        fairseq `learn_kmeans.py` samples utterances (`--percent`), not frames, so whole utterances come in.

        Raises:
            ValueError: `fraction` outside (0, 1].
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"`fraction` must lie in (0, 1], got {fraction}.")
        if fraction == 1:
            return np.arange(len(self))
        count = max(1, math.ceil(len(self) * fraction))
        return np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))

    def gather(self, utterances: np.ndarray) -> np.ndarray:
        """The frames of `utterances` (sorted indices) concatenated into one in-memory `(frames, dim)` array,
        read from the memory map in file order."""
        total = int(self.lengths[utterances].sum())
        out = np.empty((total, self.dim), dtype=np.float32)
        position = 0
        for index in utterances:
            block = self[int(index)]
            out[position : position + len(block)] = block
            position += len(block)
        return out

    def iter_blocks(self, max_frames: int = 1 << 18) -> Iterator[tuple[int, int, np.ndarray]]:
        """`(first, last, frames)`: the frames of utterances `first..last-1` (whole, consecutive) as one in-memory
        block of at most `max_frames` frames (more only for a single longer utterance)."""
        first = 0
        while first < len(self):
            last, frames = first, 0
            while last < len(self) and (frames == 0 or frames + self.lengths[last] <= max_frames):
                frames += int(self.lengths[last])
                last += 1
            start = int(self.offsets[first])
            yield first, last, np.asarray(self.features[start : start + frames])
            first = last


def dump_features(
    dataset: datasets.Dataset,
    labeler: HubertPseudoLabeler,
    output_dir: str | Path,
    *,
    audio_column: str = "audio",
    max_utterances: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FeatureStore:
    """Compute the labeler's features for every row of `dataset` and store them in `output_dir`.

    Args:
        dataset: rows with an `Audio` column (decoded by `datasets` at `labeler.config.sampling_rate`).
        labeler: its feature source is used (centroids are not needed yet).
        output_dir: folder for `features.f32`, `lengths.npy`, `features.json` (written directly: wrap the call in
            `stages.run_stage` for an atomic, resumable dump).
        max_utterances: dump only a random subset of this many rows (seeded), e.g. to bound the disk a k-means
            sample needs; `features.json` records which rows (`rows`).
        device: where the labeler runs (default: where it is).

    Returns:
        The finished `FeatureStore`.
    """
    if device is not None:
        labeler.to(device)
    device = labeler.device
    rows = None
    if max_utterances is not None and max_utterances < len(dataset):
        rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_utterances, replace=False)).tolist()
    count = len(dataset) if rows is None else len(rows)
    config = labeler.config
    started = time.perf_counter()
    audio_seconds = 0.0
    with FeatureStoreWriter(output_dir, config.feature_dim) as writer:
        waveforms = iter_waveforms(dataset, config.sampling_rate, audio_column, rows)
        for waveform in tqdm(waveforms, total=count, desc=f"features ({config.feature_type})", disable=not progress):
            features, _ = labeler.extract_features(torch.from_numpy(waveform).to(device))
            writer.append(features[0])
            audio_seconds += len(waveform) / config.sampling_rate
        seconds = time.perf_counter() - started
        store = writer.close(
            {
                "feature_type": config.feature_type,
                "layer": config.layer,
                "feature_convention": config.feature_convention if config.feature_type == "hubert" else None,
                "normalize_input": config.normalize_input if config.feature_type == "hubert" else None,
                "frame_rate": config.label_rate,
                "sampling_rate": config.sampling_rate,
                "rows": rows,
                "dataset_rows": len(dataset),
                "audio_seconds": audio_seconds,
                "seconds": seconds,
            }
        )
    logger.info(
        "Dumped %d frames × %d of %d utterances (%.1f s of audio) in %.1f s",
        store.num_frames,
        store.dim,
        len(store),
        audio_seconds,
        seconds,
    )
    return store
