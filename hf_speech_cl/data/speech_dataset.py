"""Torch datasets over `datasets` tables: lazy safe decoding, resampling, duration filters, seeded random crops.

`SpeechDataset` (map-style) and `SpeechIterableDataset` (streaming) yield
`{"input_values": np.float32 (samples,), **kept columns}` at the target sampling rate, or skip a clip that cannot be
used. Skips never raise in the middle of an epoch; they are counted in `dataset.stats` (a `DataStats`, shared with
DataLoader worker processes) so the training loop can log them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.context
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from .audio import DEFAULT_SAMPLING_RATE, AudioDecodingError, audio_duration, decode_audio

__all__ = ["CROP_OFFSET", "DataStats", "SpeechDataset", "SpeechIterableDataset", "add_durations", "column_as_numpy"]

logger = logging.getLogger(__name__)

#: Name of the virtual column an item carries when it is in `keep_columns`: where the clip's crop starts in the
#: decoded audio, in samples at the target rate (0 when not cropped). HuBERT cuts its frame labels with it.
CROP_OFFSET = "crop_offset"

#: Decode errors warned about one by one before further ones are only counted.
_MAX_DECODE_WARNINGS = 20


class DataStats:
    """Counters of clips the pipeline skipped or changed, and the names of the first skipped ones, shared by the
    DataLoader worker processes.

    Fields (attributes, also `as_dict()`):
        corrupt: files whose header or audio could not be decoded (skipped).
        empty: clips with no samples (skipped).
        non_finite: clips holding NaN or infinite samples (skipped at decode time: one such clip would make the
            update's loss NaN and, through normalisation layers' running statistics, the saved model).
        too_short: clips shorter than `min_duration_s` or the encoder's receptive field (skipped).
        too_long: clips longer than `max_duration_s` (skipped).
        resampled: clips decoded at another sampling rate and resampled.
        cropped: clips randomly cropped to the maximum crop length.
        padded: evaluation clips shorter than the encoder's receptive field, zero-padded to it so they are scored.

    `examples()` gives, for each skip cause, the names (the row's `id`, else its audio path, else `row N`) of the
    first `MAX_NAMES` clips skipped for it; `report()` both, for logs and `train_results.json`.

    Filters applied when a dataset is built count each clip once; events met while decoding (a corrupt file that
    had a readable header or a `duration` column, resampling, crops) count each time they happen, i.e. once per
    epoch. The counts live in shared memory (`multiprocessing.Array`), so increments made in DataLoader workers
    are visible in the training process; a copy pickled outside process start-up (e.g. `copy.deepcopy`) is a
    snapshot with its own counters.
    """

    FIELDS: tuple[str, ...] = (
        "corrupt",
        "empty",
        "non_finite",
        "too_short",
        "too_long",
        "resampled",
        "cropped",
        "padded",
    )
    #: The counters that are skips (a clip left out), in the order reports list them.
    SKIPS: tuple[str, ...] = ("corrupt", "empty", "non_finite", "too_short", "too_long")
    #: Names kept per skip cause, and the bytes kept of each name.
    MAX_NAMES = 5
    NAME_BYTES = 160

    def __init__(self, counts: Sequence[int] | None = None):
        self._counts = multiprocessing.Array("q", list(counts) if counts is not None else [0] * len(self.FIELDS))
        self._names = multiprocessing.Array("c", len(self.SKIPS) * self.MAX_NAMES * self.NAME_BYTES)
        self._built = dict.fromkeys(self.FIELDS, 0)

    def mark_built(self) -> None:
        """Record the counts of the filters applied when the dataset was built (identical on every process), so
        that `merge` adds only the decode-time counts of each process to them."""
        self._built = self.as_dict()

    def snapshot(self) -> dict[str, Any]:
        """Plain-data copy (`counts`, `built`, `examples`) for `merge` across processes (`gather_object`)."""
        return {"counts": self.as_dict(), "built": dict(self._built), "examples": self.examples()}

    @classmethod
    def merge(cls, snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The `report()` of several processes' `snapshot()`s: build-time counts once, decode-time counts summed,
        the first `MAX_NAMES` names of each cause."""
        if not snapshots:
            return {"skipped": {}, "examples": {}, "resampled": 0, "cropped": 0, "padded": 0}
        built = snapshots[0]["built"]
        totals = {
            key: built.get(key, 0) + sum(s["counts"].get(key, 0) - s["built"].get(key, 0) for s in snapshots)
            for key in cls.FIELDS
        }
        examples: dict[str, list[str]] = {}
        for snap in snapshots:
            for cause, names in snap["examples"].items():
                kept = examples.setdefault(cause, [])
                kept.extend(n for n in names if n not in kept and len(kept) < cls.MAX_NAMES)
        return {
            "skipped": {cause: totals[cause] for cause in cls.SKIPS if totals[cause]},
            "examples": examples,
            **{key: totals[key] for key in ("resampled", "cropped", "padded")},
        }

    def increment(self, name: str, amount: int = 1, examples: Sequence[str] = ()) -> int:
        """Add `amount` to counter `name` atomically; return its previous value (0 → first occurrence).

        `examples`: names of the clips counted (the first of them are kept while fewer than `MAX_NAMES` are).
        """
        index = self._index(name)
        with self._counts.get_lock():
            previous = self._counts[index]
            self._counts[index] = previous + amount
        if examples and name in self.SKIPS:
            base = self.SKIPS.index(name) * self.MAX_NAMES
            for slot, example in zip(range(previous, self.MAX_NAMES), examples):
                encoded = str(example).encode("utf-8", "replace")[: self.NAME_BYTES - 1]
                start = (base + slot) * self.NAME_BYTES
                with self._names.get_lock():
                    self._names[start : start + self.NAME_BYTES] = encoded.ljust(self.NAME_BYTES, b"\0")
        return previous

    def examples(self) -> dict[str, list[str]]:
        """`{skip cause: names of its first clips}` for the causes that skipped something."""
        with self._names.get_lock():
            raw = self._names.raw
        found: dict[str, list[str]] = {}
        for i, cause in enumerate(self.SKIPS):
            names = []
            for slot in range(self.MAX_NAMES):
                start = (i * self.MAX_NAMES + slot) * self.NAME_BYTES
                name = raw[start : start + self.NAME_BYTES].split(b"\0", 1)[0]
                if name:
                    names.append(name.decode("utf-8", "replace"))
            if names:
                found[cause] = names
        return found

    def report(self) -> dict[str, Any]:
        """`{"skipped": {cause: count}, "examples": {cause: [names]}, "resampled": n, "cropped": n, "padded": n}`:
        what `train` writes to `train_results.json` (`data_report`, merged over processes) and logs."""
        return self.merge([self.snapshot()])

    def as_dict(self) -> dict[str, int]:
        """All counters as `{name: count}`."""
        with self._counts.get_lock():
            return dict(zip(self.FIELDS, self._counts[:]))

    @property
    def skipped(self) -> int:
        """Clips dropped for any reason (corrupt + empty + non-finite + too short + too long)."""
        counts = self.as_dict()
        return sum(counts[cause] for cause in self.SKIPS)

    def _index(self, name: str) -> int:
        try:
            return self.FIELDS.index(name)
        except ValueError:
            raise ValueError(f"Unknown DataStats counter {name!r}; expected one of {self.FIELDS}") from None

    def __getattr__(self, name: str) -> int:
        if name in DataStats.FIELDS:
            return self._counts[DataStats.FIELDS.index(name)]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # Shared memory can only travel to a process being started (DataLoader workers with "spawn"); anywhere
        # else pickle a snapshot.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"shared": self._counts, "names": self._names, "built": self._built}
        return {"snapshot": self._counts[:], "names_snapshot": self._names.raw, "built": self._built}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._counts = state["shared"]
            self._names = state["names"]
        else:
            self._counts = multiprocessing.Array("q", state["snapshot"])
            self._names = multiprocessing.Array("c", len(self.SKIPS) * self.MAX_NAMES * self.NAME_BYTES)
            self._names.raw = state["names_snapshot"]
        self._built = dict(state.get("built") or dict.fromkeys(self.FIELDS, 0))

    def __repr__(self) -> str:
        return f"DataStats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"


def column_as_numpy(dataset: datasets.Dataset, column: str) -> np.ndarray:
    """One column of a `datasets.Dataset` as a NumPy array, read in one Arrow slice (not row by row)."""
    return np.asarray(dataset.with_format("numpy", columns=[column])[:][column])


def _durations_batch(audio: list[Any]) -> dict[str, list[float]]:
    return {"duration": [audio_duration(value) for value in audio]}


def add_durations(
    dataset: datasets.Dataset, audio_column: str = "audio", *, num_proc: int | None = None
) -> datasets.Dataset:
    """Add a `duration` column (float64 seconds, `nan` for an unreadable file) read from audio headers only.

    A `Dataset.map` over the audio column with decoding switched off: each file's header is read with
    `soundfile.info` (torchcodec for other containers). Like any `map` on a dataset backed by Arrow files, the result
    is cached beside them, so headers are read once per dataset.

    Raises:
        ValueError: if `audio_column` is missing.
    """
    if audio_column not in dataset.column_names:
        raise ValueError(f"Audio column {audio_column!r} not in the dataset's columns {dataset.column_names}")
    feature = dataset.features[audio_column]
    decoded = isinstance(feature, datasets.Audio) and feature.decode
    if decoded:
        dataset = dataset.cast_column(audio_column, datasets.Audio(sampling_rate=feature.sampling_rate, decode=False))
    features = dataset.features.copy()
    features["duration"] = datasets.Value("float64")
    dataset = dataset.map(
        _durations_batch,
        batched=True,
        batch_size=256,
        input_columns=[audio_column],
        features=features,
        num_proc=num_proc,
        desc="Reading audio headers",
    )
    return dataset.cast_column(audio_column, feature) if decoded else dataset


def _to_samples(seconds: float | None, sampling_rate: int, rounding: Any) -> int | None:
    return None if seconds is None else int(rounding(seconds * sampling_rate))


class _ClipMaker:
    """What the map-style and iterable datasets share: decode one row, check its length, crop it."""

    def _setup(
        self,
        *,
        sampling_rate: int,
        audio_column: str,
        keep_columns: Sequence[str],
        min_duration_s: float,
        max_duration_s: float | None,
        min_input_samples: int,
        max_crop_s: float | None,
        seed: int,
        pad_short: bool = False,
        name_column: str | None = "id",
    ) -> None:
        if sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate}")
        if min_duration_s < 0 or (max_duration_s is not None and max_duration_s < min_duration_s):
            raise ValueError(
                f"Need 0 <= min_duration_s <= max_duration_s, got min_duration_s={min_duration_s}, "
                f"max_duration_s={max_duration_s}"
            )
        if max_crop_s is not None and max_crop_s <= 0:
            raise ValueError(f"max_crop_s must be positive (seconds) or None, got {max_crop_s}")
        if min_input_samples < 1:
            raise ValueError(f"min_input_samples must be >= 1, got {min_input_samples}")
        self.sampling_rate = sampling_rate
        self.audio_column = audio_column
        self.return_crop_offset = CROP_OFFSET in keep_columns
        self.keep_columns = tuple(column for column in keep_columns if column != CROP_OFFSET)
        self.min_input_samples = min_input_samples
        self.min_samples = max(_to_samples(min_duration_s, sampling_rate, math.ceil), min_input_samples)
        self.max_samples = _to_samples(max_duration_s, sampling_rate, math.floor)
        self.crop_samples = _to_samples(max_crop_s, sampling_rate, math.floor)
        if self.crop_samples is not None and self.crop_samples < self.min_samples:
            raise ValueError(
                f"max_crop_s={max_crop_s} gives {self.crop_samples} samples, fewer than the minimum clip length "
                f"{self.min_samples} samples (min_duration_s={min_duration_s}, min_input_samples={min_input_samples})"
            )
        self.seed = seed
        self.epoch = 0
        self.pad_short = pad_short
        self.name_column = name_column
        self.stats = DataStats()

    def clip_name(self, row: dict[str, Any], fallback: str) -> str:
        """How logs and reports name a clip: its `name_column` value (LibriSpeech `id`), else its audio file's path,
        else `fallback` (e.g. `row 12`)."""
        if self.name_column and row.get(self.name_column) is not None:
            return str(row[self.name_column])
        value = row.get(self.audio_column)
        path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
        return str(path) if path else fallback

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of epoch `epoch` (crop offsets are a function of `(seed, epoch, item)`)."""
        self.epoch = epoch

    def _length_problem(self, num_samples: int) -> str | None:
        """Why a decoded clip cannot be used, or `None`.

        One sample of slack around the duration limits: a clip that passed the filters on its header duration
        (`round(duration * sampling_rate)`) may decode, after resampling, one sample shorter or longer. The
        receptive field is a hard limit.
        """
        if num_samples == 0:
            return "empty"
        if num_samples < max(self.min_samples - 1, self.min_input_samples) and not self.pad_short:
            return "too_short"
        if self.max_samples is not None and num_samples > self.max_samples + 1:
            return "too_long"
        return None

    def _make_clip(self, row: dict[str, Any], rng_key: Sequence[int], fallback_name: str) -> dict[str, Any] | None:
        value = row[self.audio_column]
        try:
            waveform, native = decode_audio(value, self.sampling_rate)
        except AudioDecodingError as error:
            name = self.clip_name(row, fallback_name)
            if self.stats.increment("corrupt", examples=[name]) < _MAX_DECODE_WARNINGS:
                logger.warning("Skipping unreadable audio %s (counted in stats.corrupt): %s", name, error)
            return None
        if waveform.size and not np.isfinite(waveform).all():
            name = self.clip_name(row, fallback_name)
            if self.stats.increment("non_finite", examples=[name]) < _MAX_DECODE_WARNINGS:
                logger.warning(
                    "Skipping %s: %d of its %d samples are NaN or infinite (counted in stats.non_finite)",
                    name,
                    int((~np.isfinite(waveform)).sum()),
                    waveform.size,
                )
            return None
        if native != self.sampling_rate and waveform.size and self.stats.increment("resampled") == 0:
            logger.warning(
                "Audio at %d Hz is resampled to %d Hz on the fly (logged once; counted in stats.resampled). "
                "Resample the dataset once beforehand to save the time.",
                native,
                self.sampling_rate,
            )
        problem = self._length_problem(len(waveform))
        if problem is not None:
            self.stats.increment(problem, examples=[self.clip_name(row, fallback_name)])
            return None
        if self.pad_short and len(waveform) < self.min_samples:
            # evaluation scores every utterance: one shorter than the receptive field gets zeros up to it
            waveform = np.pad(waveform, (0, self.min_samples - len(waveform)))
            self.stats.increment("padded")
        start = 0
        if self.crop_samples is not None and len(waveform) > self.crop_samples:
            # fairseq RawAudioDataset.crop_to_max_size: a uniformly drawn window of the maximum size.
            start = int(np.random.default_rng(list(rng_key)).integers(0, len(waveform) - self.crop_samples + 1))
            waveform = waveform[start : start + self.crop_samples]
            self.stats.increment("cropped")
        clip = {"input_values": waveform, **{column: row[column] for column in self.keep_columns}}
        if self.return_crop_offset:
            clip[CROP_OFFSET] = start
        return clip


def _check_columns(column_names: Sequence[str] | None, audio_column: str, keep_columns: Sequence[str]) -> None:
    if column_names is None:  # a stream whose features are unknown until read
        return
    missing = [c for c in (audio_column, *keep_columns) if c not in column_names]
    if missing:
        raise ValueError(f"Columns {missing} not in the dataset's columns {list(column_names)}")


def _undecoded(dataset: Any, audio_column: str) -> Any:
    """Switch `datasets.Audio` decoding off: we decode ourselves, inside a try/except."""
    features = getattr(dataset, "features", None)
    feature = features.get(audio_column) if features else None
    if isinstance(feature, datasets.Audio) and feature.decode:
        return dataset.cast_column(audio_column, datasets.Audio(sampling_rate=feature.sampling_rate, decode=False))
    return dataset


class SpeechDataset(torch.utils.data.Dataset, _ClipMaker):
    """Map-style speech dataset: item `i` is `{"input_values": np.float32 (samples,), **kept columns}` or `None`.

    At construction, clip durations come from `duration_column` if the dataset has one, else from the audio
    headers (`add_durations`, cached); clips with an unreadable header, no samples, fewer samples than
    `max(min_duration_s * sampling_rate, min_input_samples)` or more than `max_duration_s * sampling_rate` are
    left out and counted in `stats`. Items are decoded lazily in `__getitem__` inside a try/except: an unreadable
    file gives `None` (warned, counted; `AudioCollator` drops it) instead of an exception in the middle of an epoch.
    Audio at another rate is resampled to `sampling_rate` (logged once, counted).

    Random crops (`max_crop_s`) take a uniformly drawn window (fairseq `RawAudioDataset.crop_to_max_size`) whose
    offset is a function of `(seed, epoch, index)` only: the same in every DataLoader worker layout and on resume.
    Call `set_epoch(epoch)` for new crops each epoch (`SeededLengthGroupedSampler.set_epoch` forwards to it).

    Args:
        dataset: a `datasets.Dataset` with an audio column (`datasets.Audio`, a path string, or decoded dicts).
        sampling_rate: target rate in Hz (the feature extractor's `sampling_rate`).
        audio_column: name of the audio column.
        keep_columns: columns passed through in each item (e.g. `text`, `label`, `speaker_id`, `id`), and the
            virtual column `CROP_OFFSET` (`"crop_offset"`): the crop's start in samples (0 when not cropped).
        min_duration_s: shortest clip kept, in seconds.
        max_duration_s: longest clip kept, in seconds (`None`: no limit). Applied before cropping.
        min_input_samples: shortest clip kept, in samples; pass `min_input_samples(config)` (the encoder's
            receptive field) so every clip yields at least one frame.
        max_crop_s: crop longer clips to this many seconds at a random offset (`None`: no crop).
        seed: seed of the crop offsets.
        pad_short: evaluation: instead of dropping clips shorter than `min_duration_s` / `min_input_samples`,
            zero-pad them to that length (counted in `stats.padded`), so that every non-empty clip is scored.
        name_column: the column naming a clip in logs and drop reports (LibriSpeech: `id`); when missing, the audio
            file's path, else `row N`.
        duration_column: a column of durations in seconds, used instead of reading headers when present.
        num_proc: processes for reading headers.

    Attributes:
        lengths: `list[int]`, the length in samples of each item after cropping (what `SeededLengthGroupedSampler`
            groups by).
        stats: the `DataStats` counters.

    Raises:
        ValueError: on a missing column or inconsistent limits (the message quotes the values).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        *,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        audio_column: str = "audio",
        keep_columns: Sequence[str] = (),
        min_duration_s: float = 0.0,
        max_duration_s: float | None = None,
        min_input_samples: int = 1,
        max_crop_s: float | None = None,
        seed: int = 0,
        pad_short: bool = False,
        name_column: str | None = "id",
        duration_column: str = "duration",
        num_proc: int | None = None,
    ):
        self._setup(
            sampling_rate=sampling_rate,
            audio_column=audio_column,
            keep_columns=keep_columns,
            min_duration_s=min_duration_s,
            max_duration_s=max_duration_s,
            min_input_samples=min_input_samples,
            max_crop_s=max_crop_s,
            seed=seed,
            pad_short=pad_short,
            name_column=name_column if name_column in dataset.column_names else None,
        )
        _check_columns(dataset.column_names, audio_column, self.keep_columns)
        if duration_column not in dataset.column_names:
            dataset = add_durations(dataset, audio_column, num_proc=num_proc)
            duration_column = "duration"
        durations = column_as_numpy(dataset, duration_column).astype(np.float64)
        samples = np.where(np.isfinite(durations) & (durations >= 0), np.round(durations * sampling_rate), -1)
        keep = np.ones(len(durations), dtype=bool)
        named = _undecoded(
            dataset.select_columns(
                list(dict.fromkeys([audio_column, *([self.name_column] if self.name_column else [])]))
            ),
            audio_column,
        )
        too_short = (samples > 0) & (samples < self.min_samples)
        for problem, rows in (
            ("corrupt", samples < 0),
            ("empty", samples == 0),
            ("too_short", too_short & (not pad_short)),
            ("too_long", samples > (self.max_samples if self.max_samples is not None else np.inf)),
        ):
            if rows.any():
                first = np.flatnonzero(rows)[: DataStats.MAX_NAMES].tolist()
                names = [self.clip_name(named[i], f"row {i}") for i in first]
                self.stats.increment(problem, int(rows.sum()), examples=names)
                keep &= ~rows
        if self.stats.skipped:
            logger.warning(
                "%d of %d clips left out before training: %s",
                self.stats.skipped,
                len(durations),
                ", ".join(
                    f"{cause} {count} (e.g. {', '.join(self.stats.examples().get(cause, []))})"
                    for cause, count in self.stats.report()["skipped"].items()
                ),
            )
        self.stats.mark_built()
        self.indices = np.flatnonzero(keep)
        if len(self.indices) == 0:
            logger.warning("No clip of %d passes the duration filters: %s", len(durations), self.stats)
        kept = samples[self.indices].astype(np.int64)
        if pad_short:
            kept = np.maximum(kept, self.min_samples)
        if self.crop_samples is not None:
            kept = np.minimum(kept, self.crop_samples)
        self.lengths: list[int] = kept.tolist()
        columns = [audio_column, *self.keep_columns, *([self.name_column] if self.name_column else [])]
        self.dataset = _undecoded(dataset.select_columns(list(dict.fromkeys(columns))), audio_column)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a SpeechDataset of {len(self)} clips")
        index = index % len(self)
        try:
            row = self.dataset[int(self.indices[index])]
        except Exception as error:  # a row that cannot even be read is a corrupt clip
            if self.stats.increment("corrupt") < _MAX_DECODE_WARNINGS:
                logger.warning("Skipping row %d that cannot be read (counted in stats.corrupt): %s", index, error)
            return None
        return self._make_clip(row, (self.seed, self.epoch, index), f"row {int(self.indices[index])}")


class SpeechIterableDataset(torch.utils.data.IterableDataset, _ClipMaker):
    """Streaming counterpart of `SpeechDataset`: decodes, filters and crops each example as it arrives.

    Unusable clips are skipped inside the generator and counted in `stats`. Inside DataLoader workers, a
    `datasets.IterableDataset` splits its shards between the workers itself. `set_epoch(epoch)` is forwarded to the
    wrapped dataset (its shuffling is seeded by `seed + epoch`). Crop offsets are a function of
    `(seed, epoch, worker, position in the worker's stream)`.

    Args:
        dataset: a `datasets.IterableDataset` (or any iterable of row dicts).
        The other arguments are those of `SpeechDataset`.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset | Iterable[dict[str, Any]],
        *,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        audio_column: str = "audio",
        keep_columns: Sequence[str] = (),
        min_duration_s: float = 0.0,
        max_duration_s: float | None = None,
        min_input_samples: int = 1,
        max_crop_s: float | None = None,
        seed: int = 0,
        pad_short: bool = False,
        name_column: str | None = "id",
    ):
        self._setup(
            sampling_rate=sampling_rate,
            audio_column=audio_column,
            keep_columns=keep_columns,
            min_duration_s=min_duration_s,
            max_duration_s=max_duration_s,
            min_input_samples=min_input_samples,
            max_crop_s=max_crop_s,
            seed=seed,
            pad_short=pad_short,
            name_column=name_column,
        )
        _check_columns(getattr(dataset, "column_names", None), audio_column, self.keep_columns)
        self.dataset = _undecoded(dataset, audio_column)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and on the wrapped dataset (reshuffles a shuffled `datasets.IterableDataset`)."""
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        for position, row in enumerate(self.dataset):
            clip = self._make_clip(row, (self.seed, self.epoch, worker_id, position), f"example {position}")
            if clip is not None:
                yield clip
