"""Collators: a padded, normalised audio batch, and the masks and negatives of wav2vec 2.0 pretraining.

`AudioCollator` pads and normalises with the model's `Wav2Vec2FeatureExtractor` itself (zero mean, unit variance per
utterance over its valid samples) and stacks the kept columns. `DataCollatorForWav2Vec2Pretraining` adds the time
masks and the sampled distractors of Baevski et al. 2020 (§3.2, §4.2) with transformers' own helpers.
"""

from __future__ import annotations

import inspect
import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel, Wav2Vec2FeatureExtractor
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2PreTrainedModel,
    _compute_mask_indices,
    _sample_negative_indices,
)

__all__ = ["AudioCollator", "DataCollatorForWav2Vec2Pretraining", "num_masked_frames"]

logger = logging.getLogger(__name__)


def _stack(values: list[Any], pad_value: int) -> torch.Tensor | list[Any]:
    """Numbers → tensor; equal-shape arrays → stacked tensor; ragged 1-D sequences → padded tensor; else a list."""
    if all(isinstance(v, (numbers.Number, np.number, np.bool_)) for v in values):
        return torch.tensor(values)
    if all(isinstance(v, (np.ndarray, torch.Tensor, list, tuple)) for v in values):
        try:
            tensors = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in values]
        except (TypeError, ValueError, RuntimeError):  # strings, dicts, nested ragged lists
            return list(values)
        if all(t.shape == tensors[0].shape for t in tensors):
            return torch.stack(tensors)
        if all(t.dim() == 1 for t in tensors):
            return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_value)
    return list(values)


@dataclass
class AudioCollator:
    """Pad and normalise a list of clips; stack the columns kept beside the audio.

    Items are `SpeechDataset` items (`{"input_values": np.float32 (samples,), **columns}`); `None` items (clips that
    could not be decoded) are dropped, and a batch with fewer than `min_clips` items left becomes `None` (the
    training loop skips it on every process together and counts it in `skipped_batches`).

    Returns a dict with:
        input_values: `(B, T)` float32, `T` the longest clip (rounded up to `pad_to_multiple_of`); each row
            normalised to zero mean and unit variance over its valid samples by `feature_extractor` when its
            `do_normalize` is set (Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm), padding =
            `feature_extractor.padding_value`.
        attention_mask: `(B, T)` int64, 1 on valid samples.
        every other key of the items: numbers → `(B,)` tensor; equal-shape arrays → stacked tensor; 1-D numeric
            sequences of different lengths (token ids) → `(B, L)` padded with `label_pad_value`; anything else
            (strings, dicts) → a list.

    Args:
        feature_extractor: the model's `Wav2Vec2FeatureExtractor` (its `sampling_rate` must be the dataset's).
        pad_to_multiple_of: round `T` up to a multiple of this (tensor-core friendly shapes).
        label_pad_value: padding of ragged integer columns (-100: ignored by `CrossEntropyLoss`, CTC targets).
        min_clips: fewest clips a batch must hold (SimCLR's NT-Xent: 2, so that every anchor has a negative).
    """

    feature_extractor: Wav2Vec2FeatureExtractor
    pad_to_multiple_of: int | None = None
    label_pad_value: int = -100
    min_clips: int = 1

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        features = [f for f in features if f is not None]
        if len(features) < max(self.min_clips, 1):
            return None
        encoded = self.feature_extractor(
            [np.asarray(f["input_values"], dtype=np.float32) for f in features],
            sampling_rate=self.feature_extractor.sampling_rate,
            padding="longest",
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=True,
            return_tensors="pt",
        )
        batch: dict[str, Any] = {
            "input_values": encoded["input_values"].to(torch.float32),
            "attention_mask": encoded["attention_mask"].to(torch.int64),
        }
        for key in features[0]:
            if key != "input_values":
                batch[key] = _stack([f[key] for f in features], self.label_pad_value)
        return batch


class _FrameGeometry:
    """The frame-length helpers of a wav2vec 2.0-style model class, bound to a config instead of a model.

    Calls `model_class._get_feat_extract_output_lengths` / `_get_feature_vector_attention_mask` with this object as
    `self`: the collator computes lengths exactly as the model does without holding the model's weights (which would
    be copied into every DataLoader worker).
    """

    def __init__(self, model_class: type, config: PretrainedConfig):
        self.model_class = model_class
        self.config = config

    def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self.model_class, name)
        # Wav2Vec2ForPreTraining computes its frame mask with add_adapter=False: the adapter is for fine-tuning.
        kwargs = {"add_adapter": False} if "add_adapter" in inspect.signature(method).parameters else {}
        return method(self, *args, **kwargs)

    def _get_feat_extract_output_lengths(self, input_lengths: Any, add_adapter: bool | None = None) -> Any:
        return self._call("_get_feat_extract_output_lengths", input_lengths)

    def _get_feature_vector_attention_mask(
        self, feature_vector_length: int, attention_mask: torch.Tensor, add_adapter: bool | None = None
    ) -> torch.Tensor:
        return self._call("_get_feature_vector_attention_mask", feature_vector_length, attention_mask)


@dataclass
class DataCollatorForWav2Vec2Pretraining:
    """`AudioCollator` + the masked time steps and sampled distractors of wav2vec 2.0 pretraining.

    For a batch of `B` clips padded to `T` samples the encoder emits `F = model._get_feat_extract_output_lengths(T)`
    frames; `model._get_feature_vector_attention_mask` marks the valid frames of each clip. Then (Baevski et al. 2020
    §3.2 and §4.2, as in fairseq `Wav2Vec2Model.apply_mask`/`sample_negatives` and transformers'
    `run_wav2vec2_pretraining_no_trainer.py`):

    - `mask_time_indices` `(B, F)` bool: a clip of `L` valid frames gets `mask_time_prob * L / mask_time_length`
      spans of `mask_time_length` frames (rounded at random; at least `mask_time_min_masks`), at distinct random
      starts, so spans may overlap; drawn by transformers' `_compute_mask_indices` with the frame mask and never on
      padding frames. The paper's start probability p = 0.065 with M = 10 is `mask_time_prob = p * M = 0.65`,
      which masks about 49 % of the frames;
    - `sampled_negative_indices` `(B, F, K)` int64: for each masked frame, `K = num_negatives` distractors drawn
      uniformly (with replacement) from the *other* masked frames of the same clip by `_sample_negative_indices`,
      as indices into the flattened `(B * F)` frames, which is what `Wav2Vec2ForPreTraining.forward` takes.
      Positions that are not masked hold an index of their own clip and are ignored by the loss.

    A clip with fewer masked frames than 2 (only possible for clips shorter than one span) has nothing to contrast
    with, and is left unmasked (warned once). The stock model returns the contrastive and diversity losses *summed*
    over masked frames: normalise with `num_masked_frames(batch)` as the training loop's `loss_normalizer`.
    Randomness comes from NumPy's global generator, as in transformers' helpers: PyTorch seeds it in each DataLoader
    worker, and `accelerator.save_state` saves it.

    Args:
        model: the `Wav2Vec2ForPreTraining` (or any wav2vec 2.0-style `PreTrainedModel`) being trained, or its config
            (then transformers' `Wav2Vec2PreTrainedModel` length helpers are used). Only its class and config are
            kept.
        feature_extractor: the `Wav2Vec2FeatureExtractor` for padding and normalisation.
        mask_time_prob: overrides `config.mask_time_prob` (pretraining in the paper: 0.65; `Wav2Vec2Config`
            defaults to 0.05, the fine-tuning SpecAugment value, so set it in the config or here).
        mask_time_length: overrides `config.mask_time_length` (paper: 10 frames).
        mask_time_min_masks: overrides `config.mask_time_min_masks` (transformers' default: 2 spans).
        num_negatives: overrides `config.num_negatives` (paper: K = 100 for BASE).
        pad_to_multiple_of: see `AudioCollator`.
        return_sub_attention_mask: also return `sub_attention_mask` `(B, F)` int64, the valid frames (for custom loops;
            the stock `Wav2Vec2ForPreTraining.forward` does not accept it).

    Raises:
        ValueError: a probability outside (0, 1], a span or count < 1 or a min-mask count < 0 (quoting the value),
            or a config without the wav2vec 2.0 fields.
    """

    model: PreTrainedModel | PretrainedConfig
    feature_extractor: Wav2Vec2FeatureExtractor
    mask_time_prob: float | None = None
    mask_time_length: int | None = None
    mask_time_min_masks: int | None = None
    num_negatives: int | None = None
    pad_to_multiple_of: int | None = None
    return_sub_attention_mask: bool = False
    _geometry: _FrameGeometry = field(init=False, repr=False)
    _audio: AudioCollator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, PretrainedConfig):
            config, model_class = self.model, Wav2Vec2PreTrainedModel
        elif isinstance(self.model, PreTrainedModel):
            config, model_class = self.model.config, type(self.model)
        else:
            raise ValueError(f"model must be a PreTrainedModel or a PretrainedConfig, got {type(self.model).__name__}")
        for name in ("mask_time_prob", "mask_time_length", "mask_time_min_masks", "num_negatives"):
            if getattr(self, name) is None:
                if not hasattr(config, name):
                    raise ValueError(f"{type(config).__name__} has no {name}; pass {name}= explicitly")
                setattr(self, name, getattr(config, name))
        if not 0.0 < self.mask_time_prob <= 1.0:
            raise ValueError(f"mask_time_prob must be in (0, 1], got {self.mask_time_prob}")
        if self.mask_time_length < 1 or self.num_negatives < 1 or self.mask_time_min_masks < 0:
            raise ValueError(
                f"Need mask_time_length >= 1, num_negatives >= 1, mask_time_min_masks >= 0; got "
                f"mask_time_length={self.mask_time_length}, num_negatives={self.num_negatives}, "
                f"mask_time_min_masks={self.mask_time_min_masks}"
            )
        # Keep only what the collator needs, not the weights.
        self.model = config
        self._geometry = _FrameGeometry(model_class, config)
        self._audio = AudioCollator(self.feature_extractor, pad_to_multiple_of=self.pad_to_multiple_of)
        self._warned_unmasked = False

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        batch = self._audio(features)
        if batch is None:
            return None
        return self.add_masks(batch)

    def add_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Draw `mask_time_indices` and `sampled_negative_indices` (see the class docstring) for a padded batch.

        Uses NumPy's global generator. The training loop calls this again as a `batch_transform`
        (`hf_speech_cl.wav2vec2_pretraining.Wav2Vec2MaskSampler`) after seeding that generator from `(seed, update,
        process, micro-batch)`, so a resumed run draws the masks of the uninterrupted one. Works on any device
        (masks are drawn on the CPU and moved to `attention_mask`'s device).
        """
        device = batch["attention_mask"].device
        attention_mask = batch["attention_mask"].cpu()
        batch_size, num_samples = attention_mask.shape
        num_frames = int(self._geometry._get_feat_extract_output_lengths(torch.tensor(num_samples)))
        if num_frames < 1:
            raise ValueError(
                f"The longest clip of the batch has {num_samples} samples, too few for one encoder frame: filter clips "
                "shorter than the receptive field (SpeechDataset(min_input_samples=min_input_samples(config)))"
            )
        frame_mask = self._geometry._get_feature_vector_attention_mask(num_frames, attention_mask).bool()
        valid = frame_mask.numpy()
        if num_frames >= self.mask_time_length:
            mask = _compute_mask_indices(
                (batch_size, num_frames),
                self.mask_time_prob,
                self.mask_time_length,
                attention_mask=frame_mask.long(),
                min_masks=self.mask_time_min_masks,
            )
            # A clip with no room for a span gets a dummy span on the last frame, which may be padding.
            mask &= valid
        else:
            mask = np.zeros((batch_size, num_frames), dtype=bool)
        negatives = np.zeros((batch_size, num_frames, self.num_negatives), dtype=np.int64)
        for row in range(batch_size):
            negatives[row] = row * num_frames
            masked = int(mask[row].sum())
            if masked < 2:
                if (masked == 1 or valid[row].sum() < self.mask_time_length) and not self._warned_unmasked:
                    self._warned_unmasked = True
                    logger.warning(
                        "A clip of %d frames gets fewer than 2 masked frames and is left unmasked (no distractor to "
                        "contrast with; warned once). Keep clips longer than mask_time_length=%d frames "
                        "(min_input_samples(config, mask_time_length) samples).",
                        int(valid[row].sum()),
                        self.mask_time_length,
                    )
                mask[row] = False
                continue
            negatives[row] = _sample_negative_indices((1, num_frames), self.num_negatives, mask[row : row + 1])[0]
            negatives[row] += row * num_frames
        batch["mask_time_indices"] = torch.from_numpy(mask).to(device)
        batch["sampled_negative_indices"] = torch.from_numpy(negatives).to(device)
        if self.return_sub_attention_mask:
            batch["sub_attention_mask"] = frame_mask.long().to(device)
        return batch


def num_masked_frames(batch: dict[str, Any], outputs: Any = None) -> torch.Tensor:
    """Masked frames in a `DataCollatorForWav2Vec2Pretraining` batch (0-d int64): the `loss_normalizer` of the loop.

    fairseq's wav2vec 2.0 criterion and transformers' pretraining example divide the summed contrastive loss by the
    number of masked frames of all processes; the shared loop all-reduces this count.
    """
    return batch["mask_time_indices"].sum()
