"""`DataArguments`: the data options every recipe parses with `transformers.HfArgumentParser`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .audio import DEFAULT_SAMPLING_RATE

__all__ = ["DataArguments"]

_SYNTHETIC_NOTE = (
    "synthetic speech generated offline by Debian text-to-speech engines (espeak-ng, flite, festival) with many "
    "voices, rates and pitches; not recorded human speech, so results do not transfer to real audio as is"
)


@dataclass
class DataArguments:
    """What to train on and how clips are turned into batches (one set of options for every recipe).

    Durations are in seconds; sizes in examples. Field names are distinct from `PretrainingArguments`, so both
    dataclasses go in one `HfArgumentParser`.

    Raises:
        ValueError: (at construction) inconsistent limits or a `dataset_kwargs` that is not a JSON object.
    """

    dataset_name: str = field(
        default="synthetic-librispeech",
        metadata={
            "help": "What to load: an offline corpus (synthetic-librispeech, synthetic-speech-commands, "
            "synthetic-prosody; built on first use), a folder written by `save_to_disk`, a local copy of a Hub "
            "dataset (a folder of Parquet/Arrow/JSON/CSV shards such as data/train-00000-of-00001.parquet), a "
            "folder of audio files (audiofolder, optional metadata.csv), or a Hub dataset id such as "
            "openslr/librispeech_asr."
        },
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "Configuration of a Hub dataset (e.g. `clean` for openslr/librispeech_asr), or the named size "
            "of an offline corpus: `default`, `tiny`, and `large` for synthetic-librispeech (10 h of train audio from "
            "200 speakers, about 6 minutes to build on 2 cores; `--dataset_kwargs` still overrides its fields)."
        },
    )
    dataset_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of extra keyword arguments: size parameters and `seed` of an offline corpus, or "
            'arguments of `datasets.load_dataset` (e.g. \'{"revision": "main"}\'). Default: none.'
        },
    )
    train_split: str = field(
        default="train", metadata={"help": "Split to train on (LibriSpeech on the Hub: e.g. `train.100`)."}
    )
    eval_split: str | None = field(
        default="validation",
        metadata={"help": "Split to evaluate on; an empty string or `none` disables evaluation. Default: validation."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the dataset as a stream instead of downloading and preparing it first (use for the 960 h "
            "of LibriSpeech). Length grouping then sorts within a window of `shuffle_buffer_size` examples."
        },
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "Streaming only: examples in the shuffle window and in the length-grouping window."},
    )
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio. Default: audio."})
    text_column: str = field(default="text", metadata={"help": "Column holding transcripts (ASR). Default: text."})
    label_column: str = field(
        default="label", metadata={"help": "Column holding class labels (classification). Default: label."}
    )
    speaker_column: str | None = field(
        default="speaker_id",
        metadata={
            "help": "Column of speaker ids that `--train_minutes` subsets are balanced over (Libri-light style); "
            "`none`: a seeded random subset, for data without speakers. Only read when --train_minutes is set."
        },
    )
    sampling_rate: int = field(
        default=DEFAULT_SAMPLING_RATE,
        metadata={
            "help": f"Sampling rate in Hz the model expects; audio at other rates is resampled. Default: "
            f"{DEFAULT_SAMPLING_RATE} (Wav2Vec2FeatureExtractor's default, the rate of LibriSpeech)."
        },
    )
    min_duration_s: float = field(
        default=1.0,
        metadata={
            "help": "Drop clips shorter than this many seconds (clips shorter than the encoder's receptive field are "
            "always dropped). Default: 1.0 (fairseq's wav2vec 2.0 recipes use 2 s; keyword clips are 1 s)."
        },
    )
    max_duration_s: float | None = field(
        default=20.0,
        metadata={
            "help": "Training: drop clips longer than this many seconds (before cropping); 0: keep all "
            "(20 s: transformers' run_wav2vec2_pretraining_no_trainer.py). Evaluation and test splits use "
            "--max_eval_duration_s instead."
        },
    )
    max_eval_duration_s: float | None = field(
        default=None,
        metadata={
            "help": "Evaluation and test splits: drop clips longer than this many seconds; unset or 0: score every "
            "utterance, however long (published LibriSpeech numbers include the 30+ s ones; lower "
            "--eval_batch_size if the longest do not fit in memory). Clips shorter than the encoder's receptive "
            "field are zero-padded to it, not dropped."
        },
    )
    max_train_crop_s: float | None = field(
        default=None,
        metadata={
            "help": "Randomly crop training clips longer than this many seconds to this length (seeded by seed, "
            "epoch and clip; fairseq's max_sample_size is 250000 samples = 15.6 s); unset or 0: no crop."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (quick runs). Default: all."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation examples. Default: all."}
    )
    train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Fine-tuning: train on a subset of this many minutes (e.g. 10, 60, 600, like Libri-light's "
            "splits), chosen by the seed among the clips that pass the duration filters, balanced over "
            "--speaker_column; unset or 0: the whole split (the only choice with --streaming)."
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch clips of similar length together to cut padding (seeded per epoch). Default: on."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache folder for `datasets` and the offline corpora. Default: their own defaults."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for reading audio headers (durations). Default: 1."}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes decoding audio. Default: 0 (in the main process)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.eval_split, str) and self.eval_split.strip().lower() in ("", "none"):
            self.eval_split = None
        # A command line cannot say None for a float: 0 (or less) switches these limits off.
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            self.max_duration_s = None
        if self.max_train_crop_s is not None and self.max_train_crop_s <= 0:
            self.max_train_crop_s = None
        if self.max_eval_duration_s is not None and self.max_eval_duration_s <= 0:
            self.max_eval_duration_s = None
        if self.train_minutes is not None and self.train_minutes == 0:
            self.train_minutes = None
        if isinstance(self.speaker_column, str) and self.speaker_column.strip().lower() in ("", "none"):
            self.speaker_column = None
        if self.min_duration_s < 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise ValueError(f"max_duration_s={self.max_duration_s} is below min_duration_s={self.min_duration_s}")
        if self.max_train_crop_s is not None and self.max_train_crop_s < self.min_duration_s:
            raise ValueError(
                f"max_train_crop_s={self.max_train_crop_s} is below min_duration_s={self.min_duration_s}: crops "
                "would be dropped as too short"
            )
        if self.sampling_rate <= 0 or self.shuffle_buffer_size < 1 or self.dataloader_num_workers < 0:
            raise ValueError(
                f"Need sampling_rate > 0, shuffle_buffer_size >= 1, dataloader_num_workers >= 0; got "
                f"{self.sampling_rate}, {self.shuffle_buffer_size}, {self.dataloader_num_workers}"
            )
        if self.train_minutes is not None and self.train_minutes <= 0:
            raise ValueError(f"train_minutes must be positive (0: the whole split), got {self.train_minutes}")
        _ = self.dataset_kwargs_dict  # validate the JSON now, not when the data is loaded

    @property
    def dataset_kwargs_dict(self) -> dict[str, Any]:
        """`dataset_kwargs` parsed from JSON (`{}` when unset)."""
        if not self.dataset_kwargs:
            return {}
        try:
            parsed = json.loads(self.dataset_kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(f"dataset_kwargs is not valid JSON: {self.dataset_kwargs!r} ({error})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"dataset_kwargs must be a JSON object, got {self.dataset_kwargs!r}")
        return parsed

    @property
    def dataset_note(self) -> str | None:
        """What a model card should say about the data: a warning for the synthetic corpora, else `None`."""
        from .loading import is_offline_corpus

        return _SYNTHETIC_NOTE if is_offline_corpus(self.dataset_name) else None
