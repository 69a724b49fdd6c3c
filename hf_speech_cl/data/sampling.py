"""Batches grouped by length (less padding), in an order that is a function of `(seed, epoch)` only.

Map-style datasets use `SeededLengthGroupedSampler`: transformers' `LengthGroupedSampler` (random permutation →
mega-batches of 50 batches → sorted by length inside each, longest batch first) whose generator is re-seeded from
`(seed, epoch)` at every iteration. Streaming datasets use `LengthGroupedIterable`: a window of examples is sorted by
length, cut into batches, and the batches of the window are emitted in a seeded random order.

Reproducibility and resuming: `accelerate` calls `set_epoch(epoch)` on the sampler of a prepared DataLoader (and the
shared training loop calls `dataloader.set_epoch(epoch)` at the start of each epoch), so every process draws the same
order for an epoch and a resumed run can skip the batches it had already seen
(`accelerator.skip_first_batches`) and continue with exactly the batches an uninterrupted run would have seen.
Use `num_workers` freely but not `persistent_workers=True` with random crops: persistent workers keep the dataset
copy of the first epoch, so crops would not change with `set_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

__all__ = ["LengthGroupedIterable", "SeededLengthGroupedSampler", "epoch_seed", "make_dataloader"]


def epoch_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixing `seed` with `keys` (epoch, worker, ...) through `numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' `LengthGroupedSampler`, deterministic given `(seed, epoch)`, with `set_epoch`.

    Args:
        lengths: length of every item (e.g. `SpeechDataset.lengths`, in samples).
        batch_size: the per-device batch size (items of a batch have similar lengths).
        seed: seed of the order.
        group_by_length: `False` gives a plain seeded random permutation.
        shuffle: `False` gives a fixed order: indices sorted by decreasing length if `group_by_length` (least
            padding, e.g. for evaluation), else `0..n-1`.
        mega_batch_mult: batches per sorted mega-batch (transformers' default: `min(n // (4 * batch_size), 50)`).
        dataset: forwarded `set_epoch` calls go to `dataset.set_epoch` too (new random crops each epoch).

    Raises:
        ValueError: if `batch_size < 1`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group_by_length: bool = True,
        shuffle: bool = True,
        mega_batch_mult: int | None = None,
        dataset: Any = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(batch_size, lengths=list(lengths), generator=torch.Generator())
        self.seed = seed
        self.epoch = 0
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.mega_batch_mult = mega_batch_mult
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch `epoch` from the next `__iter__` on (and tell the dataset, for its crops)."""
        self.epoch = epoch
        if self.dataset is not None and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.lengths:
            return iter(())
        if not self.shuffle:
            if self.group_by_length:
                return iter(sorted(range(len(self.lengths)), key=lambda i: -self.lengths[i]))
            return iter(range(len(self.lengths)))
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        if not self.group_by_length:
            return iter(torch.randperm(len(self.lengths), generator=self.generator).tolist())
        return iter(
            get_length_grouped_indices(
                self.lengths, self.batch_size, mega_batch_mult=self.mega_batch_mult, generator=self.generator
            )
        )


class LengthGroupedIterable(torch.utils.data.IterableDataset):
    """Length grouping for streams: sort a window of `buffer_size` examples by length, emit it batch by batch.

    Each window (rounded up to a multiple of `batch_size`) is sorted by the length of `input_values`, cut into
    consecutive batches of `batch_size`, and the batches are emitted in a random order drawn from
    `(seed, epoch, worker, window)`; with `shuffle=False` they keep their sorted order. A DataLoader over this
    iterable with the same `batch_size` then forms exactly these batches (each worker emits whole batches). Only the
    last window of a stream can end with a smaller batch, and it is emitted last.

    Args:
        dataset: an iterable dataset of `{"input_values": array, ...}` items (`SpeechIterableDataset`).
        batch_size: the DataLoader's batch size.
        buffer_size: examples per window (more: less padding and better mixing, more memory).
        seed: seed of the batch order.
        shuffle: shuffle the batches of a window.

    Raises:
        ValueError: if `batch_size` or `buffer_size` is < 1.
    """

    def __init__(self, dataset: Any, batch_size: int, *, buffer_size: int = 1000, seed: int = 0, shuffle: bool = True):
        if batch_size < 1 or buffer_size < 1:
            raise ValueError(f"batch_size and buffer_size must be >= 1, got {batch_size} and {buffer_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.buffer_size = -(-buffer_size // batch_size) * batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def stats(self) -> Any:
        """The wrapped dataset's `DataStats`."""
        return getattr(self.dataset, "stats", None)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch `epoch` (forwarded to the wrapped dataset)."""
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _emit(self, buffer: list[dict[str, Any]], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        buffer.sort(key=lambda item: len(item["input_values"]))
        batches = [buffer[i : i + self.batch_size] for i in range(0, len(buffer), self.batch_size)]
        full = len(batches) if len(batches[-1]) == self.batch_size else len(batches) - 1
        order = rng.permutation(full).tolist() if self.shuffle else list(range(full))
        for i in [*order, *range(full, len(batches))]:
            yield from batches[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, worker.id if worker is not None else 0))
        buffer: list[dict[str, Any]] = []
        for item in self.dataset:
            buffer.append(item)
            if len(buffer) == self.buffer_size:
                yield from self._emit(buffer, rng)
                buffer = []
        if buffer:
            yield from self._emit(buffer, rng)


def make_dataloader(
    dataset: Any,
    collator: Callable[[list[Any]], Any],
    batch_size: int,
    *,
    shuffle: bool = True,
    group_by_length: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    buffer_size: int = 1000,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with length-grouped, `(seed, epoch)`-deterministic batches.

    Map-style datasets (with a `lengths` attribute, like `SpeechDataset`) get a `SeededLengthGroupedSampler`;
    iterable datasets are wrapped in `LengthGroupedIterable` when `group_by_length` (shuffle a stream itself with
    `datasets.IterableDataset.shuffle`, as `build_speech_datasets` does). Either way
    `dataloader.sampler.set_epoch` / `dataloader.dataset.set_epoch` exist, so `accelerate`'s prepared loader sets the
    epoch itself.

    Args:
        dataset: `SpeechDataset`, `SpeechIterableDataset`, or any dataset whose items the collator accepts.
        collator: e.g. `AudioCollator` or `DataCollatorForWav2Vec2Pretraining`.
        batch_size: items per batch (per process).
        shuffle: random order (training) or a fixed one (evaluation).
        group_by_length: group items of similar length into a batch.
        seed: seed of the order.
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete batch.
        buffer_size: window of the streaming length grouping (examples).
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).

    Raises:
        ValueError: `group_by_length` with a map-style dataset that has no `lengths`.
    """
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if group_by_length:
            dataset = LengthGroupedIterable(dataset, batch_size, buffer_size=buffer_size, seed=seed, shuffle=shuffle)
        sampler = None
    else:
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            if group_by_length:
                raise ValueError(
                    f"group_by_length needs the item lengths: {type(dataset).__name__} has no `lengths` attribute "
                    "(wrap the data in a SpeechDataset, or pass group_by_length=False)"
                )
            lengths = [0] * len(dataset)
        sampler = SeededLengthGroupedSampler(
            lengths, batch_size, seed=seed, group_by_length=group_by_length, shuffle=shuffle, dataset=dataset
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
