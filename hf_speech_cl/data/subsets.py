"""Reproducible, speaker-balanced subsets of a given duration (the 10 min / 1 h / 10 h fine-tuning splits).

Libri-light's limited-supervision sets (Kahn et al. 2020, §3.2) draw 10 min, 1 h and 10 h of LibriSpeech balanced
over speakers (and genders, clean/other), each nested in the next. `select_subset_by_duration` does the same from any
dataset with durations and speakers: every speaker contributes about the same duration, and with one seed a shorter
subset is contained in a longer one.
"""

from __future__ import annotations

import heapq

import datasets
import numpy as np

from .speech_dataset import add_durations, column_as_numpy

__all__ = ["select_subset_by_duration"]


def select_subset_by_duration(
    dataset: datasets.Dataset,
    minutes: float,
    seed: int = 0,
    speaker_column: str | None = "speaker_id",
    *,
    duration_column: str = "duration",
    audio_column: str = "audio",
    num_proc: int | None = None,
    min_duration_s: float = 0.0,
    max_duration_s: float | None = None,
) -> datasets.Dataset:
    """Rows totalling `minutes` of audio (within one utterance), balanced across speakers, chosen by `seed`.

    Each speaker's utterances are shuffled, and the speaker with the least selected audio so far (ties: a seeded
    random speaker order) gives its next utterance, until the total reaches `minutes`; the last utterance is kept
    only if that lands closer to the target. So the per-speaker durations differ by at most about one utterance (a
    speaker who runs out of audio drops out), the result is a function of `(dataset, seed)`, and the subset for a
    smaller `minutes` is contained in the subset for a larger one.

    Args:
        dataset: a `datasets.Dataset`; durations come from `duration_column` (seconds), else from audio headers.
        minutes: total duration wanted, in minutes (> 0).
        seed: seed of the choice.
        speaker_column: column of speaker ids; `None` treats every row as one speaker (no balancing).
        duration_column: column of durations in seconds.
        audio_column: audio column to read durations from when `duration_column` is missing.
        num_proc: processes for reading headers.
        min_duration_s / max_duration_s: only clips of this duration range (seconds; the training filters) are
            candidates, so the subset holds `minutes` of audio that training will actually use.

    Returns:
        `dataset.select(indices)` with the chosen rows in their original order (with a `duration` column, read from
        the headers if the dataset had none, so the training dataset need not read them again).

    Raises:
        ValueError: `minutes <= 0`, more minutes than the dataset holds, or a missing column.
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if speaker_column is not None and speaker_column not in dataset.column_names:
        raise ValueError(
            f"Speaker column {speaker_column!r} not in the dataset's columns {dataset.column_names} "
            "(pass speaker_column=None to select without balancing speakers)"
        )
    if duration_column not in dataset.column_names:
        dataset = add_durations(dataset, audio_column, num_proc=num_proc)
        duration_column = "duration"
    durations = column_as_numpy(dataset, duration_column).astype(np.float64)
    usable = np.isfinite(durations) & (durations > 0) & (durations >= min_duration_s)
    if max_duration_s is not None:
        usable &= durations <= max_duration_s
    target = minutes * 60.0
    available = float(durations[usable].sum())
    if target > available:
        raise ValueError(
            f"Asked for {minutes} minutes but the dataset holds {available / 60:.2f} minutes of readable audio "
            f"in {int(usable.sum())} clips between {min_duration_s:g} and "
            f"{'any' if max_duration_s is None else f'{max_duration_s:g}'} s"
        )
    speakers = column_as_numpy(dataset, speaker_column) if speaker_column is not None else np.zeros(len(durations))
    rng = np.random.default_rng(seed)
    # One queue of shuffled utterances per speaker; speakers in a seeded random order for tie-breaking.
    queues = {}
    for speaker in rng.permutation(np.unique(speakers[usable])):
        rows = np.flatnonzero(usable & (speakers == speaker))
        queues[len(queues)] = list(rng.permutation(rows))
    heap = [(0.0, rank) for rank in queues]  # (seconds selected from the speaker, tie-break rank)
    chosen: list[int] = []
    total = 0.0
    while total < target and heap:
        seconds, rank = heapq.heappop(heap)
        row = int(queues[rank].pop())
        chosen.append(row)
        total += durations[row]
        if queues[rank]:
            heapq.heappush(heap, (seconds + durations[row], rank))
    if len(chosen) > 1 and total - target > target - (total - durations[chosen[-1]]):
        chosen.pop()
    return dataset.select(sorted(chosen))
