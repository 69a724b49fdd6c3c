"""Linear frame-level phone probe of frozen speech representations: how much phone identity a layer holds.

A multinomial logistic regression (scikit-learn `LogisticRegression`, L-BFGS, on standardised features) is trained
to predict each frame's phone from the frozen features of that frame, on frames of the training split, and its frame
accuracy is reported on the test split. This is the standard small-compute measure of what a self-supervised
representation holds: the linear phone classification of the wav2vec 2.0 / HuBERT layer-wise analyses (Pasad,
Chou, Livescu 2021, "Layer-wise analysis of a self-supervised speech representation model", §4; Hsu et al. 2021,
"HuBERT", §IV-E measures the same phone information of k-means units with PNMI, fairseq
`examples/hubert/measure_teacher_quality.py`) and the frame-level phone recognition task of SUPERB (Yang et al. 2021,
PR), here with a linear read-out of one layer instead of SUPERB's weighted sum of layers and CTC.

Choices (all documented in the report):

- **Layers**: the Transformer's input, its middle and its last block by default (`hidden_states[0]`, `[N // 2]`,
  `[N]`; `all` probes every one of `0..N`), one probe each; the report lists them and headlines the best. Three
  rather than all: each layer costs two L-BFGS fits (the encoder's and the random reference's), and on the `cpu`
  preset the 15 fits of `all` took 17 of a SimCLR run's 35 minutes on a loaded 2-core machine. The maximum over layers is an oracle choice
  on the test split (as layer-wise analyses report it), made the same way for every encoder; MFCC has one layer.
- **Frames**: encoder frame t stands for the centre of its receptive field, `r / 2 + t * hop` samples (12.5 ms +
  t × 20 ms for the wav2vec 2.0 conv front end at 16 kHz), MFCC frame t for the centre of its 25 ms window (12.5 ms +
  t × 10 ms); it takes the phone of the alignment segment holding that time (`pseudo_labels.metrics.
  alignment_to_frames`, the code PNMI uses). Frames outside every segment are left out. Each representation is
  probed at its own frame rate (MFCC 100 Hz, encoders 50 Hz): accuracy is then the fraction of aligned time whose
  phone is recognised.
- **Cost**: at most `max_train_utterances` random training utterances, and at most
  `ceil(max_train_frames / utterances)` random aligned frames of each; at most `max_test_utterances` random test
  utterances, every aligned frame of them. L-BFGS stops after `max_iter` iterations whatever its convergence (a
  fixed budget; the report says whether it converged). The tiny/cpu presets on the default corpus: seconds.
- **Phones**: the inventory of training and test alignments; test frames of a phone absent from the training frames
  count as errors. The majority-phone baseline (always the most frequent training phone) is reported beside.
- **References**: the same probe on 39-d Kaldi MFCC (13 + Δ + ΔΔ, `pseudo_labels.features.mfcc_features`, the
  features of HuBERT iteration 1) and on a randomly initialised encoder of the checkpoint's config (seeded).
- **Determinism**: utterances, frames and the random encoder are drawn from `seed`; L-BFGS is deterministic.

`PhoneProbe` is the recipes' entry point (`finalize_pretraining(phone_probe=...)`): it loads the splits named by the
recipe's `DataArguments`, skips with a logged reason when they have no phone alignments, and caches what does not
change between calls (the references, and results of identical weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

from ..data.audio import DEFAULT_SAMPLING_RATE, AudioDecodingError, decode_audio, receptive_field_samples
from ..models.hubert_pretraining import HubertPseudoLabelerConfig
from ..presets import default_model_size, encoder_preset
from ..pseudo_labels.features import mfcc_features
from ..pseudo_labels.metrics import alignment_to_frames, phone_inventory
from ..training.export import PHONE_PROBE_FILE  # the report beside the model, written by `finalize_pretraining`
from .checkpoints import NO_PRETRAINING, load_feature_extractor, resolve_encoder_checkpoint

__all__ = [
    "PHONE_PROBE_FILE",
    "REFERENCES",
    "FeatureSource",
    "FrameTiming",
    "NoPhoneAlignmentsError",
    "PhoneProbe",
    "PhoneProbeArguments",
    "PhoneProbeReport",
    "ProbeFrames",
    "ProbeResult",
    "ProbeUtterance",
    "collect_probe_frames",
    "encoder_feature_source",
    "encoder_frame_timing",
    "encoder_hidden_states",
    "linear_probe_accuracy",
    "load_probe_encoder",
    "load_probe_utterances",
    "mfcc_feature_source",
    "mfcc_frame_timing",
    "random_encoder_like",
    "resolve_layers",
    "run_phone_probe",
]

logger = logging.getLogger(__name__)

#: Reference feature sources `run_phone_probe` knows.
REFERENCES = ("mfcc", "random")
#: Layers probed by default: the Transformer's input, its middle and its last block (`resolve_layers`).
DEFAULT_LAYERS = "0,middle,last"
MFCC_DESCRIPTION = "39-d Kaldi MFCC (13 + Δ + ΔΔ)"


class NoPhoneAlignmentsError(ValueError):
    """The dataset has no phone alignment column: the probe cannot run (callers skip it)."""


# ---------------------------------------------------------------------------------------------------------------------
# Arguments (the recipes' `--phone_probe*` flags)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PhoneProbeArguments:
    """The `--phone_probe*` flags of the pretraining recipes (see the module docstring for what they control)."""

    phone_probe: bool = field(
        default=True,
        metadata={
            "help": "At the end of training, train a linear frame-level phone classifier on the frozen hidden states "
            "of every layer of the final model, and of MFCC and a randomly initialised encoder of the same config, "
            "on training frames, and report its frame accuracy on --phone_probe_test_split (log, phone_probe.json, "
            "model card). Skipped, with a log line, when the dataset has no phone alignments. Default: on."
        },
    )
    phone_probe_test_split: str = field(
        default="test", metadata={"help": "Split the probe's accuracy is measured on. Default: test."}
    )
    phone_probe_train_split: str | None = field(
        default=None, metadata={"help": "Split the probe is trained on. Default: the recipe's --train_split."}
    )
    phone_probe_layers: str = field(
        default=DEFAULT_LAYERS,
        metadata={
            "help": "Hidden layers probed, as `hidden_states[i]` (0 = Transformer input, N = last block), "
            "comma-separated: indices, last, middle (N // 2) or all. The best is headlined; each layer costs two "
            f"L-BFGS fits (encoder and random reference). Default: {DEFAULT_LAYERS}."
        },
    )
    phone_probe_references: str = field(
        default="mfcc,random",
        metadata={
            "help": "Reference features probed the same way, comma-separated: mfcc (39-d Kaldi MFCC), random (a "
            "randomly initialised encoder of the same config); empty for none. Default: mfcc,random."
        },
    )
    phone_probe_max_train_utterances: int = field(
        default=200, metadata={"help": "Random training utterances the probe reads (bounds its cost). Default: 200."}
    )
    phone_probe_max_train_frames: int = field(
        default=20000,
        metadata={"help": "Training frames in total, drawn evenly from those utterances. Default: 20000."},
    )
    phone_probe_max_test_utterances: int = field(
        default=300,
        metadata={"help": "Random test utterances (all their aligned frames are scored); 0: all. Default: 300."},
    )
    phone_probe_max_iter: int = field(
        default=200, metadata={"help": "L-BFGS iterations of the logistic regression (a fixed budget). Default: 200."}
    )
    phone_probe_alignment_column: str = field(
        default="phone_alignment",
        metadata={"help": "Column of phone alignments (lists of {phone, start, end} in s). Default: phone_alignment."},
    )

    def __post_init__(self) -> None:
        for name in ("phone_probe_max_train_utterances", "phone_probe_max_train_frames", "phone_probe_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.phone_probe_max_test_utterances < 0:
            raise ValueError(
                f"--phone_probe_max_test_utterances must be >= 0, got {self.phone_probe_max_test_utterances}"
            )
        unknown = set(self.references) - set(REFERENCES)
        if unknown:
            raise ValueError(
                f"--phone_probe_references: unknown {sorted(unknown)}; choose from {', '.join(REFERENCES)}"
            )

    @property
    def references(self) -> tuple[str, ...]:
        """`phone_probe_references` as a tuple of names."""
        return tuple(r.strip() for r in self.phone_probe_references.split(",") if r.strip())


# ---------------------------------------------------------------------------------------------------------------------
# Data: utterances with alignments, frame timing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeUtterance:
    """One utterance: `waveform` `(samples,)` float32 in [-1, 1] at the probe's sampling rate, and its phone
    alignment `[{phone, start (s), end (s)}, ...]`."""

    waveform: np.ndarray
    alignment: list[dict[str, Any]]


def load_probe_utterances(
    dataset: datasets.Dataset | datasets.IterableDataset,
    *,
    sampling_rate: int,
    max_utterances: int | None = None,
    seed: int = 0,
    audio_column: str = "audio",
    alignment_column: str = "phone_alignment",
) -> list[ProbeUtterance]:
    """Decode up to `max_utterances` rows of `dataset` (a seeded random subset in row order; the first rows of a
    stream) with their phone alignments.

    Audio is read undecoded and decoded by `data.audio.decode_audio` (mono, resampled to `sampling_rate` Hz).

    Raises:
        NoPhoneAlignmentsError: `dataset` has no `alignment_column`.
        ValueError: `dataset` has no `audio_column`.
    """
    columns = list(dataset.column_names or (dataset.features or {}))
    if alignment_column not in columns:
        raise NoPhoneAlignmentsError(
            f"the dataset has no `{alignment_column}` column of phone alignments (columns: {columns})"
        )
    if audio_column not in columns:
        raise ValueError(f"No audio column {audio_column!r} in the dataset; columns: {columns}.")
    if isinstance(dataset, datasets.Dataset):
        if max_utterances and len(dataset) > max_utterances:
            rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_utterances, replace=False))
            dataset = dataset.select(rows.tolist())
    elif max_utterances:
        dataset = dataset.take(max_utterances)
    dataset = dataset.select_columns([audio_column, alignment_column])
    dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    utterances, skipped = [], 0
    for row in dataset:
        try:
            waveform = decode_audio(row[audio_column], sampling_rate)[0]
        except AudioDecodingError:
            waveform = np.zeros(0, np.float32)
        if not waveform.size or not np.isfinite(waveform).all():  # unreadable, empty or NaN: as the training data
            skipped += 1
            continue
        utterances.append(ProbeUtterance(waveform, list(row[alignment_column])))
    if skipped:
        logger.warning("Phone probe: %d unreadable, empty or non-finite utterances left out", skipped)
    return utterances


@dataclass(frozen=True)
class FrameTiming:
    """Frame t of a feature stream stands for time `offset + t / rate` seconds.

    Attributes:
        rate: frames per second (Hz).
        offset: seconds; the centre of frame 0's analysis window.
    """

    rate: float
    offset: float


def encoder_frame_timing(config: Any, sampling_rate: int) -> FrameTiming:
    """Timing of a wav2vec 2.0-style encoder's frames: rate `sampling_rate / prod(conv_stride)` (50 Hz at 16 kHz for
    the 320-sample hop), offset half the receptive field (`data.audio.receptive_field_samples`: 400 samples →
    12.5 ms), as `HubertPseudoLabelerConfig.frame_center_seconds` aligns layer labels.

    Raises:
        ValueError: `config` has no `conv_kernel`/`conv_stride`.
    """
    if not hasattr(config, "conv_kernel") or not hasattr(config, "conv_stride"):
        raise ValueError(f"{type(config).__name__} has no conv_kernel/conv_stride: not a wav2vec 2.0-style encoder")
    hop = math.prod(config.conv_stride)
    field_samples = receptive_field_samples(config.conv_kernel, config.conv_stride)
    return FrameTiming(rate=sampling_rate / hop, offset=field_samples / 2 / sampling_rate)


def mfcc_frame_timing(sampling_rate: int) -> FrameTiming:
    """Timing of the Kaldi MFCC frames of `mfcc_features` (10 ms hop → 100 Hz; 25 ms window → offset 12.5 ms), from
    `HubertPseudoLabelerConfig`, the same numbers the MFCC pseudo-labels are aligned with."""
    config = HubertPseudoLabelerConfig(feature_type="mfcc", sampling_rate=sampling_rate)
    return FrameTiming(rate=config.label_rate, offset=config.frame_center_seconds)


# ---------------------------------------------------------------------------------------------------------------------
# Feature sources: MFCC, an encoder's hidden layers
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureSource:
    """Frozen features of one kind, for each of its layers.

    Attributes:
        name: short key (`checkpoint`, `mfcc`, `random`).
        description: what the features are, for reports.
        timing: frame rate and offset.
        layers: the layer names `extract` returns features for, in order (`[None]` for a single stream).
        extract: `waveform (samples,) float32 in [-1, 1]` → one `(frames, dim)` float32 array per layer.
    """

    name: str
    description: str
    timing: FrameTiming
    layers: list[int | None]
    extract: Callable[[np.ndarray], list[np.ndarray]]


def mfcc_feature_source(sampling_rate: int) -> FeatureSource:
    """39-d Kaldi MFCC + Δ + ΔΔ of the raw waveform (`pseudo_labels.features.mfcc_features`), 100 Hz."""

    def extract(waveform: np.ndarray) -> list[np.ndarray]:
        return [mfcc_features(waveform, sampling_rate).numpy()]

    return FeatureSource("mfcc", MFCC_DESCRIPTION, mfcc_frame_timing(sampling_rate), [None], extract)


def resolve_layers(layers: str | int | Sequence[int], num_hidden_layers: int) -> list[int]:
    """Indices into `hidden_states` (0..`num_hidden_layers`) for `layers`: `"all"`, `"last"`, `"middle"`
    (`num_hidden_layers // 2`, the HuBERT recipe's default layer), an int, a sequence of ints, or a comma-separated
    string of any of those (`"0,middle,last"`, the probe's default), sorted and without repeats.

    Raises:
        ValueError: an index outside 0..`num_hidden_layers` or an unknown name.
    """
    if isinstance(layers, str):
        named = {"all": range(num_hidden_layers + 1), "last": [num_hidden_layers], "middle": [num_hidden_layers // 2]}
        indices: list[int] = []
        for token in (t.strip().lower() for t in layers.split(",")):
            if not token:
                continue
            if token in named:
                indices.extend(named[token])
                continue
            try:
                indices.append(int(token))
            except ValueError:
                raise ValueError(
                    f"Layers must be all, last, middle or integers, comma-separated, got {layers!r}."
                ) from None
        layers = indices
    elif isinstance(layers, int):
        layers = [layers]
    chosen = sorted(set(int(v) for v in layers))
    if not chosen or chosen[0] < 0 or chosen[-1] > num_hidden_layers:
        raise ValueError(f"Layers {chosen} are outside 0..{num_hidden_layers} (hidden_states of this encoder).")
    return chosen


@torch.inference_mode()
def encoder_hidden_states(
    encoder: PreTrainedModel, input_values: torch.Tensor, layers: Sequence[int]
) -> list[np.ndarray]:
    """`encoder(input_values[None], output_hidden_states=True).hidden_states[l][0]` for each `l` of `layers`.

    Args:
        encoder: a base speech encoder (`Wav2Vec2Model`, `HubertModel`, ...) in eval mode.
        input_values: `(samples,)` float, normalised as the encoder's feature extractor does.

    Returns:
        One `(frames, hidden_size)` float32 array per layer; 0 frames when the input is shorter than the receptive
        field.

    Raises:
        ValueError: `input_values` is not 1-D.
    """
    if input_values.ndim != 1:
        raise ValueError(f"Expected input_values of shape (samples,). Found: {list(input_values.shape)}")
    if int(encoder._get_feat_extract_output_lengths(input_values.shape[0])) < 1:
        return [np.zeros((0, encoder.config.hidden_size), np.float32) for _ in layers]
    parameter = next(encoder.parameters())
    outputs = encoder(input_values[None].to(parameter.device, parameter.dtype), output_hidden_states=True)
    return [outputs.hidden_states[layer][0].float().cpu().numpy() for layer in layers]


def encoder_feature_source(
    encoder: PreTrainedModel,
    feature_extractor: Wav2Vec2FeatureExtractor,
    *,
    name: str,
    description: str,
    layers: str | Sequence[int] = DEFAULT_LAYERS,
) -> FeatureSource:
    """Hidden layers `layers` (see `resolve_layers`) of a frozen `encoder`, its input prepared by `feature_extractor`
    (zero-mean unit-variance per utterance when `do_normalize`, as in training). Puts `encoder` in eval mode."""
    encoder.eval()
    chosen = resolve_layers(layers, encoder.config.num_hidden_layers)
    sampling_rate = feature_extractor.sampling_rate

    def extract(waveform: np.ndarray) -> list[np.ndarray]:
        inputs = feature_extractor(waveform, sampling_rate=sampling_rate, return_tensors="pt").input_values[0]
        return encoder_hidden_states(encoder, inputs, chosen)

    return FeatureSource(name, description, encoder_frame_timing(encoder.config, sampling_rate), list(chosen), extract)


def load_probe_encoder(path: str | Path) -> tuple[PreTrainedModel, str]:
    """The frozen base encoder of checkpoint `path` and its original `model_type`.

    `path` may be any of our pretraining outputs (SimCLR: its `encoder/` export or the checkpoint itself;
    `Wav2Vec2ForPreTraining`; `HubertForPreTraining`), a stock `Wav2Vec2Model`/`HubertModel`/... folder or Hub id,
    or a fine-tuned checkpoint (its head is dropped): `finetuning.checkpoints.resolve_encoder_checkpoint`, then
    `AutoModel.from_pretrained` (the base model, float32, eval mode).

    Raises:
        ValueError: not a speech encoder checkpoint (from `resolve_encoder_checkpoint`).
    """
    with tempfile.TemporaryDirectory(prefix="phone-probe-") as workdir:
        resolved, model_type = resolve_encoder_checkpoint(str(path), workdir)
        config = AutoConfig.from_pretrained(resolved)
        encoder = AutoModel.from_pretrained(resolved, config=config)
    return encoder.eval(), model_type


def random_encoder_like(config: Any, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised base encoder of `config` (`AutoModel.from_config`), seeded by `seed` without touching
    the global random state; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModel.from_config(config).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Frames and the linear probe
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeFrames:
    """Frames of one feature source: `features[i]` `(frames, dim)` float32 for layer `i` of the source, `phones`
    `(frames,)` int64 ids of `phone_to_id` (every frame aligned)."""

    features: list[np.ndarray]
    phones: np.ndarray


def collect_probe_frames(
    source: FeatureSource,
    utterances: Sequence[ProbeUtterance],
    phone_to_id: dict[str, int],
    *,
    max_frames_per_utterance: int | None = None,
    seed: int = 0,
) -> ProbeFrames:
    """Extract `source`'s features of every utterance and pair each frame with its phone.

    Frame t of an utterance takes the phone at `source.timing.offset + t / source.timing.rate` seconds
    (`alignment_to_frames`); unaligned frames are dropped, then at most `max_frames_per_utterance` of the rest are
    kept (drawn from `(seed, utterance index)`, the same frames for every layer).
    """
    parts: list[list[np.ndarray]] = [[] for _ in source.layers]
    phone_parts: list[np.ndarray] = []
    for index, utterance in enumerate(utterances):
        layer_features = source.extract(utterance.waveform)
        num_frames = min(f.shape[0] for f in layer_features)
        phones = alignment_to_frames(
            utterance.alignment,
            source.timing.rate,
            phone_to_id,
            num_frames,
            frame_offset=source.timing.offset,
        )
        keep = np.flatnonzero(phones >= 0)
        if max_frames_per_utterance is not None and len(keep) > max_frames_per_utterance:
            rng = np.random.default_rng([seed, index])
            keep = np.sort(rng.choice(keep, size=max_frames_per_utterance, replace=False))
        for part, features in zip(parts, layer_features, strict=True):
            part.append(np.asarray(features[keep], dtype=np.float32))
        phone_parts.append(phones[keep])
    if not utterances:  # the features of an empty waveform give each layer's dimension
        return ProbeFrames(source.extract(np.zeros(0, np.float32)), np.zeros(0, np.int64))
    return ProbeFrames([np.concatenate(part) for part in parts], np.concatenate(phone_parts).astype(np.int64))


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_phones: np.ndarray,
    test_features: np.ndarray,
    test_phones: np.ndarray,
    *,
    max_iter: int = 200,
    regularization: float = 1.0,
) -> dict[str, Any]:
    """Train a linear phone classifier on `(train_features, train_phones)` and score it on the test frames.

    `StandardScaler` → multinomial `LogisticRegression(C=regularization, solver="lbfgs", max_iter=max_iter)`
    (scikit-learn) in float32, which L-BFGS keeps (1.6x faster than float64 at the same accuracy on 20000 x 256
    frames, 40 classes); a single training class gives the constant classifier.

    Args:
        train_features / test_features: `(frames, dim)` float.
        train_phones / test_phones: `(frames,)` int class ids.

    Returns:
        `accuracy` (fraction of test frames whose phone is predicted), `iterations` (L-BFGS iterations run),
        `converged` (bool).

    Raises:
        ValueError: shapes that do not match, or no training or test frame.
    """
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_phones, test_phones = np.asarray(train_phones).ravel(), np.asarray(test_phones).ravel()
    if train_features.ndim != 2 or train_features.shape[0] != train_phones.shape[0]:
        raise ValueError(
            f"Expected train_features (frames, dim) and train_phones (frames,). Found: {list(train_features.shape)} "
            f"and {list(train_phones.shape)}"
        )
    if test_features.ndim != 2 or test_features.shape[0] != test_phones.shape[0]:
        raise ValueError(
            f"Expected test_features (frames, dim) and test_phones (frames,). Found: {list(test_features.shape)} "
            f"and {list(test_phones.shape)}"
        )
    if not len(train_phones) or not len(test_phones):
        raise ValueError(f"The probe needs frames: {len(train_phones)} training, {len(test_phones)} test.")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"Feature dims differ: train {train_features.shape[1]}, test {test_features.shape[1]}.")
    classes = np.unique(train_phones)
    if len(classes) == 1:
        return {"accuracy": float((test_phones == classes[0]).mean()), "iterations": 0, "converged": True}
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(C=regularization, solver="lbfgs", max_iter=max_iter)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget: convergence is reported instead
        classifier.fit(train_features.astype(np.float32), train_phones)
    iterations = int(np.max(classifier[-1].n_iter_))
    accuracy = float((classifier.predict(test_features.astype(np.float32)) == test_phones).mean())
    return {"accuracy": accuracy, "iterations": iterations, "converged": iterations < max_iter}


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """The probe on one feature source.

    Attributes:
        name / description: the source (`checkpoint`, `mfcc`, `random`) and what it is.
        frame_rate: Hz of its frames.
        layer_accuracy: `{layer: test frame accuracy}` (`"features"` for a single stream such as MFCC).
        best_layer: the layer of the highest accuracy (the key of `layer_accuracy`).
        accuracy: that accuracy.
        num_train_frames / num_test_frames: frames the probe was trained and scored on.
        majority_accuracy: test accuracy of always predicting the most frequent training phone, on these frames.
        converged: whether L-BFGS converged within its budget for every layer.
    """

    name: str
    description: str
    frame_rate: float
    layer_accuracy: dict[str, float]
    best_layer: str
    accuracy: float
    num_train_frames: int
    num_test_frames: int
    majority_accuracy: float
    converged: bool


@dataclass
class PhoneProbeReport:
    """What `run_phone_probe` measured, or why it did not (`skipped`).

    Attributes:
        results: one `ProbeResult` per source: the checkpoint first (if any), then the references.
        majority_accuracy: test accuracy of always predicting the most frequent training phone (on the frames of
            the first result).
        num_phones: phones in the inventory (training and test alignments).
        train_split / test_split, num_train_utterances / num_test_utterances: what the probe read.
        settings: the probe's cost settings (`max_iter`, frame and utterance limits, seed).
        seconds: wall time of the probe.
        skipped: why the probe did not run (e.g. no phone alignments), else None.
    """

    results: list[ProbeResult] = field(default_factory=list)
    majority_accuracy: float | None = None
    num_phones: int = 0
    train_split: str | None = None
    test_split: str | None = None
    num_train_utterances: int = 0
    num_test_utterances: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    def result(self, name: str) -> ProbeResult | None:
        """The result of source `name` (`checkpoint`, `mfcc`, `random`), or None."""
        return next((r for r in self.results if r.name == name), None)

    @property
    def accuracy(self) -> float | None:
        """The checkpoint's best-layer test frame accuracy (None without a checkpoint or when skipped)."""
        checkpoint = self.result("checkpoint")
        return checkpoint.accuracy if checkpoint else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `phone_probe.json` holds)."""
        return asdict(self)

    def summary(self) -> str:
        """One log line: each source's best-layer accuracy and the majority baseline."""
        if self.skipped:
            return f"phone probe skipped: {self.skipped}"
        parts = [
            f"{r.name} {r.accuracy:.3f}" + (f" (layer {r.best_layer})" if r.best_layer != "features" else "")
            for r in self.results
        ]
        return (
            f"phone probe (linear, frame accuracy on {self.test_split}, {self.num_phones} phones): "
            + ", ".join(parts)
            + f", majority phone {self.majority_accuracy:.3f}; {self.seconds:.1f} s"
        )

    def markdown(self) -> str:
        """The model card's section body: method, a table of sources × best/per-layer accuracy, the baseline."""
        if self.skipped:
            return f"Not measured: {self.skipped}."
        s = self.settings
        lines = [
            "A linear classifier (standardised features → multinomial logistic regression, scikit-learn L-BFGS, "
            f"{s.get('max_iter')} iterations) predicts each frame's phone from frozen features of that frame; "
            f"trained on {self.results[0].num_train_frames if self.results else 0} frames of "
            f"{self.num_train_utterances} `{self.train_split}` utterances, scored on every aligned frame of "
            f"{self.num_test_utterances} `{self.test_split}` utterances ({self.num_phones} phones). Frames are "
            "aligned to the corpus's phone alignments at each representation's own frame rate (the centre of each "
            "frame's window). Every hidden layer is probed (`hidden_states[i]`, 0 = Transformer input); the best is "
            "shown (an oracle choice on the test split, made alike for every encoder). The linear phone probing of "
            "wav2vec 2.0 / HuBERT layer-wise analyses (Pasad et al. 2021); PNMI (Hsu et al. 2021) measures the same "
            "information in k-means units.",
            "",
            "| features | frame rate (Hz) | best layer | frame accuracy | per layer |",
            "|---|---|---|---|---|",
        ]
        for r in self.results:
            per_layer = (
                ", ".join(f"{k}: {v:.3f}" for k, v in r.layer_accuracy.items()) if len(r.layer_accuracy) > 1 else ""
            )
            best = r.best_layer if r.best_layer != "features" else "–"
            lines.append(
                f"| {r.description} | {r.frame_rate:g} | {best} | {r.accuracy:.3f}"
                + ("" if r.converged else " (not converged)")
                + f" | {per_layer} |"
            )
        lines.append(f"| majority phone (baseline) | | | {self.majority_accuracy:.3f} | |")
        return "\n".join(lines)


_VOLATILE_CONFIG_KEYS = ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype")


def _weights_key(encoder: PreTrainedModel) -> str:
    """Hash of the weights: the same encoder saved twice (HuBERT's final copy of its last iteration) is one key."""
    digest = hashlib.sha1(type(encoder).__name__.encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _config_key(config: Any) -> str:
    fields = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _data_key(train: Sequence[ProbeUtterance], test: Sequence[ProbeUtterance]) -> str:
    """Hash of the utterances (a strided sample of each waveform and the whole alignment)."""
    digest = hashlib.sha1()
    for split in (train, test):
        digest.update(str(len(split)).encode())
        for utterance in split:
            digest.update(utterance.waveform[:: max(1, len(utterance.waveform) // 256)].tobytes())
            digest.update(json.dumps(utterance.alignment, sort_keys=True, default=float).encode())
    return digest.hexdigest()


def _probe_source(
    source: FeatureSource,
    train: Sequence[ProbeUtterance],
    test: Sequence[ProbeUtterance],
    phone_to_id: dict[str, int],
    *,
    max_train_frames: int,
    max_iter: int,
    regularization: float,
    seed: int,
) -> ProbeResult:
    per_utterance = math.ceil(max_train_frames / max(len(train), 1))
    train_frames = collect_probe_frames(source, train, phone_to_id, max_frames_per_utterance=per_utterance, seed=seed)
    test_frames = collect_probe_frames(source, test, phone_to_id)
    if not len(train_frames.phones) or not len(test_frames.phones):
        raise ValueError(
            f"{source.description}: {len(train_frames.phones)} training and {len(test_frames.phones)} test frames "
            "are aligned to a phone; the probe needs both. Check the alignments and the audio."
        )
    layer_accuracy, converged = {}, True
    for layer, train_x, test_x in zip(source.layers, train_frames.features, test_frames.features, strict=True):
        scores = linear_probe_accuracy(
            train_x,
            train_frames.phones,
            test_x,
            test_frames.phones,
            max_iter=max_iter,
            regularization=regularization,
        )
        layer_accuracy["features" if layer is None else str(layer)] = scores["accuracy"]
        converged &= scores["converged"]
    best = max(layer_accuracy, key=lambda k: layer_accuracy[k])
    majority = np.bincount(train_frames.phones).argmax() if len(train_frames.phones) else -1
    return ProbeResult(
        name=source.name,
        description=source.description,
        frame_rate=source.timing.rate,
        layer_accuracy=layer_accuracy,
        best_layer=best,
        accuracy=layer_accuracy[best],
        num_train_frames=len(train_frames.phones),
        num_test_frames=len(test_frames.phones),
        majority_accuracy=float((test_frames.phones == majority).mean()) if len(test_frames.phones) else float("nan"),
        converged=bool(converged),
    )


def run_phone_probe(
    checkpoint: str | Path | PreTrainedModel | None,
    train_dataset: datasets.Dataset | datasets.IterableDataset | Sequence[ProbeUtterance],
    test_dataset: datasets.Dataset | datasets.IterableDataset | Sequence[ProbeUtterance],
    *,
    layers: str | Sequence[int] = DEFAULT_LAYERS,
    references: Sequence[str] = REFERENCES,
    model_size: str | None = None,
    feature_extractor: Wav2Vec2FeatureExtractor | None = None,
    sampling_rate: int | None = None,
    max_train_utterances: int = 200,
    max_train_frames: int = 20000,
    max_test_utterances: int | None = 300,
    max_iter: int = 200,
    regularization: float = 1.0,
    seed: int = 0,
    audio_column: str = "audio",
    alignment_column: str = "phone_alignment",
    device: str | torch.device | None = None,
    train_split: str | None = "train",
    test_split: str | None = "test",
    cache: dict[Any, ProbeResult] | None = None,
) -> PhoneProbeReport:
    """Linear frame-level phone probe of `checkpoint` and the `references`, trained on `train_dataset` frames and
    scored on `test_dataset` (see the module docstring for every choice).

    Args:
        checkpoint: a checkpoint folder or Hub id (`load_probe_encoder`), a loaded base encoder (`Wav2Vec2Model`,
            `HubertModel`, ...), or None / "none" to probe only the references (the random encoder then has the
            config of preset `model_size`; None: `default_model_size()`).
        train_dataset / test_dataset: datasets with `audio_column` and `alignment_column`, or decoded
            `ProbeUtterance`s (used as they are, no subsampling of utterances).
        layers: hidden layers probed (`resolve_layers`); the best is headlined.
        references: any of `"mfcc"` (39-d Kaldi MFCC) and `"random"` (a seeded random encoder of the same config).
        feature_extractor: prepares the encoders' input; default: the checkpoint's (`load_feature_extractor`).
        sampling_rate: Hz the audio is decoded at; default: the feature extractor's (16 kHz for a new one).
        max_train_utterances / max_train_frames / max_test_utterances: cost bounds (None or 0: no limit on test).
        max_iter / regularization: L-BFGS iterations and the inverse L2 strength `C` of the logistic regression.
        seed: draws utterances, frames and the random encoder.
        device: where encoders run (default: CPU, or where a given encoder is).
        train_split / test_split: names for the report.
        cache: a dict reused across calls (`PhoneProbe` does): results of MFCC, of random encoders of the same
            config and of identical weights on the same data and settings are not recomputed.

    Returns:
        A `PhoneProbeReport` (`report.accuracy`: the checkpoint's best-layer test frame accuracy).

    Raises:
        NoPhoneAlignmentsError: a dataset has no `alignment_column`.
        ValueError: unknown reference, no checkpoint and no reference, bad layers, or no aligned frame.
    """
    start = time.perf_counter()
    unknown = set(references) - set(REFERENCES)
    if unknown:
        raise ValueError(f"Unknown references {sorted(unknown)}; choose from {REFERENCES}.")
    has_checkpoint = not (isinstance(checkpoint, (str, type(None))) and checkpoint in NO_PRETRAINING)
    if not has_checkpoint and not references:
        raise ValueError("Nothing to probe: no checkpoint and no reference.")
    encoder, model_type = None, None
    if has_checkpoint:
        if isinstance(checkpoint, PreTrainedModel):
            encoder, model_type = checkpoint.eval(), checkpoint.config.model_type
        else:
            encoder, model_type = load_probe_encoder(checkpoint)
    path = None if not has_checkpoint or isinstance(checkpoint, PreTrainedModel) else str(checkpoint)
    if feature_extractor is None:
        feature_extractor = load_feature_extractor(path, sampling_rate or DEFAULT_SAMPLING_RATE)
    sampling_rate = sampling_rate or feature_extractor.sampling_rate
    if feature_extractor.sampling_rate != sampling_rate:
        raise ValueError(
            f"The feature extractor expects {feature_extractor.sampling_rate} Hz but sampling_rate is {sampling_rate}."
        )
    config = (
        encoder.config if encoder is not None else Wav2Vec2Config(**encoder_preset(model_size or default_model_size()))
    )

    def utterances(dataset, limit, subset_seed):
        if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
            return load_probe_utterances(
                dataset,
                sampling_rate=sampling_rate,
                max_utterances=limit or None,
                seed=subset_seed,
                audio_column=audio_column,
                alignment_column=alignment_column,
            )
        return list(dataset)

    train = utterances(train_dataset, max_train_utterances, seed)
    test = utterances(test_dataset, max_test_utterances, seed + 1)
    phone_to_id = phone_inventory([u.alignment for u in (*train, *test)])
    settings = {
        "max_iter": max_iter,
        "regularization": regularization,
        "max_train_utterances": max_train_utterances,
        "max_train_frames": max_train_frames,
        "max_test_utterances": max_test_utterances,
        "seed": seed,
        "layers": layers if isinstance(layers, str) else list(layers),
    }
    data_key = (json.dumps(settings, sort_keys=True, default=str), _data_key(train, test))
    cache = {} if cache is None else cache
    device = torch.device(device) if device is not None else (next(encoder.parameters()).device if encoder else "cpu")

    def probe(key: Any, make_source: Callable[[], FeatureSource]) -> ProbeResult:
        key = (key, data_key)
        if key not in cache:
            cache[key] = _probe_source(
                make_source(),
                train,
                test,
                phone_to_id,
                max_train_frames=max_train_frames,
                max_iter=max_iter,
                regularization=regularization,
                seed=seed,
            )
        return cache[key]

    def encoder_source(make_encoder: Callable[[], PreTrainedModel], name: str, description: str):
        return lambda: encoder_feature_source(
            make_encoder().to(device), feature_extractor, name=name, description=description, layers=layers
        )

    shape = f"{config.model_type}, {config.num_hidden_layers} layers of {config.hidden_size}"
    results = []
    if encoder is not None:
        results.append(
            probe(
                ("checkpoint", _weights_key(encoder)),
                encoder_source(lambda: encoder, "checkpoint", f"this model ({model_type}: {shape})"),
            )
        )
    if "mfcc" in references:
        results.append(probe(("mfcc",), lambda: mfcc_feature_source(sampling_rate)))
    if "random" in references:
        results.append(
            probe(
                ("random", _config_key(config), seed),
                encoder_source(
                    lambda: random_encoder_like(config, seed), "random", f"random init, same config ({shape})"
                ),
            )
        )
    return PhoneProbeReport(
        results=list(results),
        majority_accuracy=results[0].majority_accuracy,
        num_phones=len(phone_to_id),
        train_split=train_split,
        test_split=test_split,
        num_train_utterances=len(train),
        num_test_utterances=len(test),
        settings=settings,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The recipes' entry point
# ---------------------------------------------------------------------------------------------------------------------


class PhoneProbe:
    """`probe(checkpoint_dir) -> PhoneProbeReport | None`: the phone probe of a recipe's final model.

    Pass it to `finalize_pretraining(phone_probe=probe)`, which calls it on the main process after the model is saved
    and writes the report to `phone_probe.json` and the model card. Returns None when `--phone_probe false`; a report
    with `skipped` set (and a log line saying why) when the splits cannot be loaded or have no phone alignments.
    The splits are loaded once and the references computed once per `PhoneProbe` (HuBERT probes every iteration).

    Args:
        args: the `--phone_probe*` flags.
        data_args: the recipe's `DataArguments` (dataset, config, kwargs, cache, sampling rate, audio column, train
            split, streaming).
        seed: the run's seed (utterances, frames, random encoder).
        device: where the encoders run (the recipe's device).
    """

    def __init__(self, args: PhoneProbeArguments, data_args: Any, *, seed: int = 0, device: Any = None):
        self.args = args
        self.data_args = data_args
        self.seed = seed
        self.device = device
        self.cache: dict[Any, ProbeResult] = {}
        self._splits: tuple[Any, Any] | None = None
        self._skip_reason: str | None = None

    @property
    def train_split(self) -> str:
        return self.args.phone_probe_train_split or self.data_args.train_split

    def _load_splits(self) -> tuple[Any, Any] | None:
        if self._splits is not None or self._skip_reason is not None:
            return self._splits
        from ..data import load_split

        data_args = self.data_args
        loaded = []
        for split in (self.train_split, self.args.phone_probe_test_split):
            try:
                dataset = load_split(data_args, split)
            except Exception as error:  # a missing split (the message lists the splits), an unreachable Hub, ...
                self._skip_reason = f"cannot load split `{split}` of `{data_args.dataset_name}` ({error})"
                return None
            columns = list(dataset.column_names or (dataset.features or {}))
            if self.args.phone_probe_alignment_column not in columns:
                self._skip_reason = (
                    f"`{data_args.dataset_name}` split `{split}` has no `{self.args.phone_probe_alignment_column}` "
                    "column of phone alignments"
                )
                return None
            loaded.append(dataset)
        self._splits = (loaded[0], loaded[1])
        return self._splits

    def __call__(self, checkpoint: str | Path | PreTrainedModel | None) -> PhoneProbeReport | None:
        if not self.args.phone_probe:
            logger.info("Phone probe off (--phone_probe false)")
            return None
        splits = self._load_splits()
        if splits is None:
            report = PhoneProbeReport(skipped=self._skip_reason)
            logger.warning("Phone probe skipped: %s.", self._skip_reason)
            return report
        with contextlib.ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits

                # every core this process may use: it runs on the main process while the others wait, after
                # training (under `accelerate launch` on a CPU torch itself is limited to one thread)
                stack.enter_context(threadpool_limits(limits=max(1, len(os.sched_getaffinity(0)))))
            except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
                pass
            try:
                report = self._run(checkpoint, splits)
            except Exception as error:  # a measurement after training: it must never cost the run its model card
                logger.warning("Phone probe failed, skipped: %s: %s", type(error).__name__, error)
                return PhoneProbeReport(skipped=f"the probe failed ({type(error).__name__}: {error})")
        logger.info("%s", report.summary())
        return report

    def _run(self, checkpoint: str | Path | PreTrainedModel | None, splits: tuple[Any, Any]) -> PhoneProbeReport:
        return run_phone_probe(
            checkpoint,
            splits[0],
            splits[1],
            layers=self.args.phone_probe_layers,
            references=self.args.references,
            sampling_rate=self.data_args.sampling_rate,
            max_train_utterances=self.args.phone_probe_max_train_utterances,
            max_train_frames=self.args.phone_probe_max_train_frames,
            max_test_utterances=self.args.phone_probe_max_test_utterances or None,
            max_iter=self.args.phone_probe_max_iter,
            seed=self.seed,
            audio_column=self.data_args.audio_column,
            alignment_column=self.args.phone_probe_alignment_column,
            device=self.device,
            train_split=self.train_split,
            test_split=self.args.phone_probe_test_split,
            cache=self.cache,
        )
