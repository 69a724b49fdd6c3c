"""A collator that attaches HuBERT pseudo-labels to audio batches, cropped together with the audio.

Labels stay where `stages.label_split` wrote them (a `save_to_disk` folder per split, memory-mapped): each clip finds
its row by its id (the `id` column `label_split` copies beside the labels), so the audio dataset is never copied,
and any subset, order or filter of the rows (duration limits, `max_train_samples`, `train_minutes`, shuffling) is
fine. A clip cut at a random offset (`SpeechDataset(max_crop_s=...)`, keeping the virtual column `crop_offset`)
gets the labels of the same stretch of audio (`stages.crop_labels`, fairseq `HubertDataset.collater_frm_label`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor

from ..data.collators import AudioCollator
from ..data.speech_dataset import CROP_OFFSET
from .stages import LABEL_INFO_FILE, LABELS_COLUMN, crop_labels

__all__ = ["CROP_OFFSET_COLUMN", "DataCollatorForHubertPretraining"]

#: Item key holding where a clip's crop starts, in samples (`SpeechDataset` adds it when it is kept).
CROP_OFFSET_COLUMN = CROP_OFFSET


def _read_label_rate(path: Path) -> dict[str, Any]:
    info_file = path / LABEL_INFO_FILE
    if not info_file.is_file():
        raise ValueError(f"{path} has no {LABEL_INFO_FILE}: pass `label_rate` (Hz) explicitly.")
    return json.loads(info_file.read_text())


@dataclass
class DataCollatorForHubertPretraining:
    """Pad and normalise clips (`AudioCollator`) and add their pseudo-labels as `labels` `(B, L)` int64.

    For an item with `input_values` of `n` samples, id `i` and crop offset `o` samples (0 when absent), the labels
    are `crop_labels(labels_of[i], o, n, sampling_rate, label_rate)`: `round(n · label_rate / sampling_rate)` labels
    from index `round(o · label_rate / sampling_rate)`, cut at the end of the utterance's labels. Rows are padded
    with `label_pad_value` (-100, ignored by `HubertForPreTraining`). The batch holds only what
    `HubertForPreTraining.forward` takes: `input_values`, `attention_mask`, `labels`.

    Args:
        feature_extractor: the model's `Wav2Vec2FeatureExtractor` (its `sampling_rate` is the clips' rate).
        labels: `label_split` outputs (folders or `datasets.Dataset`s with `labels` and `id_column`), e.g. one for
            the training split and one for the evaluation split: one collator serves both loaders.
        label_rate: labels per second (Hz); default: read from the folders' `label_info.json` (must agree).
        id_column: the column that names a row in both the audio dataset (keep it: `keep_columns=[id_column,
            CROP_OFFSET_COLUMN]`) and the labels.
        pad_to_multiple_of: see `AudioCollator`.
        label_pad_value: padding of `labels`.

    Raises:
        ValueError: (construction) label sets without `id_column` or `labels`, an id found twice, no or conflicting
            label rates, a label sampling rate other than the feature extractor's; (call) an item without
            `id_column`, an unknown id, or an item shorter than its labels imply that carries no crop offset (it
            was cropped and its labels cannot be placed).
    """

    feature_extractor: Wav2Vec2FeatureExtractor
    labels: Sequence[datasets.Dataset | str | Path]
    label_rate: float | None = None
    id_column: str = "id"
    pad_to_multiple_of: int | None = None
    label_pad_value: int = -100
    _sets: list[datasets.Dataset] = field(init=False, repr=False)
    _where: dict[Any, tuple[int, int]] = field(init=False, repr=False)
    _audio: AudioCollator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sources = [self.labels] if isinstance(self.labels, (str, Path, datasets.Dataset)) else list(self.labels)
        if not sources:
            raise ValueError("`labels` is empty: give at least one `label_split` output.")
        rates: set[float] = set()
        self._sets, self._where = [], {}
        sampling_rate = self.feature_extractor.sampling_rate
        for number, source in enumerate(sources):
            if not isinstance(source, datasets.Dataset):
                if self.label_rate is None:
                    info = _read_label_rate(Path(source))
                    rates.add(float(info["label_rate"]))
                    if info.get("sampling_rate") not in (None, sampling_rate):
                        raise ValueError(
                            f"Labels in {source} were made from audio at {info['sampling_rate']} Hz, but the feature "
                            f"extractor reads {sampling_rate} Hz: crop offsets would not line up."
                        )
                source = datasets.load_from_disk(str(source))
            missing = [c for c in (LABELS_COLUMN, self.id_column) if c not in source.column_names]
            if missing:
                raise ValueError(f"Label set {number} lacks the columns {missing}; it has {source.column_names}.")
            for row, key in enumerate(source[self.id_column]):
                if key in self._where:
                    raise ValueError(
                        f"{self.id_column}={key!r} occurs more than once in the label sets ({self._where[key]} and "
                        f"{(number, row)}): ids must name one utterance."
                    )
                self._where[key] = (number, row)
            self._sets.append(source.select_columns([LABELS_COLUMN]).with_format("numpy"))
        if self.label_rate is None:
            if len(rates) != 1:
                raise ValueError(f"Need one label rate for all label sets, found {sorted(rates) or 'none'}.")
            self.label_rate = rates.pop()
        if self.label_rate <= 0:
            raise ValueError(f"`label_rate` must be positive (Hz), got {self.label_rate}.")
        self._audio = AudioCollator(self.feature_extractor, pad_to_multiple_of=self.pad_to_multiple_of)

    def labels_of(self, key: Any) -> np.ndarray:
        """The whole utterance's labels `(frames,)` of the row named `key`.

        Raises:
            ValueError: unknown id.
        """
        if key not in self._where:
            raise ValueError(
                f"No pseudo-labels for {self.id_column}={key!r}: the labels were made for other rows (another "
                "dataset, split or corpus build?)."
            )
        number, row = self._where[key]
        return np.asarray(self._sets[number][row][LABELS_COLUMN])

    def item_labels(self, item: dict[str, Any]) -> np.ndarray:
        """The labels of one item's audio (see the class docstring), int64 `(frames,)`."""
        if self.id_column not in item:
            raise ValueError(
                f"Item without {self.id_column!r} (keys {sorted(item)}): keep it in the dataset "
                f"(`keep_columns=[{self.id_column!r}, {CROP_OFFSET_COLUMN!r}]`)."
            )
        full = self.labels_of(item[self.id_column])
        num_samples = len(item["input_values"])
        sampling_rate = self.feature_extractor.sampling_rate
        offset = item.get(CROP_OFFSET_COLUMN)
        if offset is None:
            expected = int(round(num_samples * self.label_rate / sampling_rate))
            if expected < len(full):  # an uncropped clip never has fewer label slots than labels
                raise ValueError(
                    f"Item {item[self.id_column]!r} has {num_samples} samples ({expected} labels at "
                    f"{self.label_rate:g} Hz) but its utterance has {len(full)} labels, and no "
                    f"{CROP_OFFSET_COLUMN!r}: it was cropped somewhere unknown. Keep {CROP_OFFSET_COLUMN!r} in "
                    "the dataset's `keep_columns`."
                )
            offset = 0
        return crop_labels(full, int(offset), num_samples, sampling_rate, self.label_rate).astype(np.int64)

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor] | None:
        features = [f for f in features if f is not None]
        if not features:
            return None
        labels = [torch.from_numpy(self.item_labels(f)) for f in features]
        batch = self._audio([{"input_values": f["input_values"]} for f in features])
        batch["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=self.label_pad_value)
        return batch
