"""One data pipeline for every recipe: dataset spec → 16 kHz clips (filtered, cropped) → length-grouped batches.

```python
from hf_speech_cl.data import DataArguments, build_pretraining_dataloaders

train_loader, eval_loader = build_pretraining_dataloaders(
    data_args, feature_extractor, model.config, batch_size=8, seed=42,
    collator=DataCollatorForWav2Vec2Pretraining(model=model, feature_extractor=feature_extractor),
)
```

The parts, usable one by one: `load_speech_dataset` (spec → `datasets` split), `SpeechDataset` /
`SpeechIterableDataset` (safe decoding, resampling, filters, crops, `stats`), `make_dataloader` (length grouping,
`(seed, epoch)`-deterministic order), `AudioCollator` / `DataCollatorForWav2Vec2Pretraining` (padding, normalisation,
masks and negatives), `select_subset_by_duration` (speaker-balanced fine-tuning subsets), and the offline corpora
(`CORPORA`, `load_corpus`).
"""

from .arguments import DataArguments
from .audio import (
    DEFAULT_SAMPLING_RATE,
    AudioDecodingError,
    audio_duration,
    decode_audio,
    min_input_samples,
    receptive_field_samples,
    resample,
)
from .collators import AudioCollator, DataCollatorForWav2Vec2Pretraining, num_masked_frames
from .loading import is_offline_corpus, load_speech_dataset, load_split
from .pipeline import build_pretraining_dataloaders, build_speech_datasets
from .sampling import LengthGroupedIterable, SeededLengthGroupedSampler, epoch_seed, make_dataloader
from .speech_dataset import DataStats, SpeechDataset, SpeechIterableDataset, add_durations, column_as_numpy
from .subsets import select_subset_by_duration
from .synthetic import CORPORA, load_corpus

__all__ = [
    "CORPORA",
    "DEFAULT_SAMPLING_RATE",
    "AudioCollator",
    "AudioDecodingError",
    "DataArguments",
    "DataCollatorForWav2Vec2Pretraining",
    "DataStats",
    "LengthGroupedIterable",
    "SeededLengthGroupedSampler",
    "SpeechDataset",
    "SpeechIterableDataset",
    "add_durations",
    "audio_duration",
    "build_pretraining_dataloaders",
    "build_speech_datasets",
    "column_as_numpy",
    "decode_audio",
    "epoch_seed",
    "is_offline_corpus",
    "load_corpus",
    "load_split",
    "load_speech_dataset",
    "make_dataloader",
    "min_input_samples",
    "num_masked_frames",
    "receptive_field_samples",
    "resample",
    "select_subset_by_duration",
]
