"""Configurations of HuBERT masked-prediction pretraining and of the pseudo-labeler that makes its targets.

Imports only `transformers` (the `models/` wall): a saved checkpoint carries a copy of this file and loads with
`trust_remote_code=True` where `hf_speech_cl` is not installed.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import HubertConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["HubertPretrainingConfig", "HubertPseudoLabelerConfig", "stock_hubert_config"]


@strict
class HubertPretrainingConfig(HubertConfig):
    r"""
    Configuration of [`HubertForPreTraining`]: a stock HuBERT encoder ([`~transformers.HubertConfig`], every argument
    of which is accepted and documented there) plus the masked-prediction head of Hsu et al. 2021, "HuBERT:
    Self-Supervised Speech Representation Learning by Masked Prediction of Hidden Units" (§II), as implemented in
    fairseq's `fairseq/models/hubert/hubert.py` and `fairseq/criterions/hubert_criterion.py`.

    `model_type` is `"hubert_pretraining"` (`"hubert"` is taken by transformers), `base_model_prefix` stays `"hubert"`:
    stock HuBERT weights initialise the encoder (`HubertForPreTraining.from_pretrained(stock_dir)`) and stock
    `HubertForCTC` / `HubertForSequenceClassification` load the encoder of a checkpoint saved from this config.

    Defaults that differ from `HubertConfig` follow fairseq's HuBERT BASE recipe
    (`examples/hubert/config/pretrain/hubert_base_librispeech.yaml`): `mask_time_prob=0.8` (`mask_prob`; the paper's
    "p = 8 %" (§II-B, §IV) of frames start a span of `mask_time_length=10`, so up to 80 % of frames are masked before
    overlaps), `feat_proj_dropout=0.1` (`dropout_input`), `layerdrop=0.05` (`encoder_layerdrop`),
    `activation_dropout=0.0`.

    Args:
        num_clusters (`int`, *optional*, defaults to 100):
            Number of pseudo-label classes K (k-means clusters): one learned embedding each. HuBERT uses 100 MFCC
            clusters in iteration 1 and 500 clusters of a layer of the iteration-1 model afterwards (§IV).
        label_rate (`float`, *optional*, defaults to 50.0):
            Frame rate of the `labels` in Hz: 100 for MFCC labels (10 ms hop), 50 for labels made from a HuBERT BASE
            layer. Labels are resampled to the encoder's frame rate (`frame_rate`) by index, as fairseq's
            `HubertModel.forward_targets` does.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate in Hz of the `input_values` the model is trained on. Together with `conv_stride` it fixes
            the encoder frame rate: `frame_rate = sampling_rate / prod(conv_stride)` (50 Hz for BASE at 16 kHz).
        final_dim (`int`, *optional*, defaults to 256):
            Dimension of the space the encoder output is projected to (`final_proj`) and compared with the cluster
            embeddings (`label_embs_concat`) in; fairseq `final_dim`.
        logit_temperature (`float`, *optional*, defaults to 0.1):
            The cosine similarities between projected frames and cluster embeddings are divided by this temperature
            before the softmax (fairseq `logit_temp`; τ in §II). Deliberately not called `temperature`, which
            collides with generation parameters at `save_pretrained`.
        pred_masked_weight (`float`, *optional*, defaults to 1.0):
            Weight of the cross-entropy on masked frames (fairseq criterion `pred_masked_weight`; α in §II-B).
        pred_nomask_weight (`float`, *optional*, defaults to 0.0):
            Weight of the cross-entropy on unmasked frames (fairseq `pred_nomask_weight`; 1 − α). The paper found
            predicting masked frames only (α = 1) best.
        feature_penalty_weight (`float`, *optional*, defaults to 10.0):
            Weight of the L2 penalty `mean(conv_features ** 2)` on the feature encoder output (fairseq
            `features_pen`, criterion `loss_weights: [10,]` in `hubert_base_librispeech.yaml`). 0 disables it.
        feature_grad_mult (`float`, *optional*, defaults to 0.1):
            Scale of the gradient flowing back into the convolutional feature encoder (fairseq `feature_grad_mult`);
            0 freezes it (no gradient computed), 1 leaves the gradient unchanged.
        label_length_tolerance (`float`, *optional*, defaults to 1.0):
            Largest disagreement, in encoder frames, between an utterance's encoder length and its label length
            (converted to encoder frames) that is accepted; beyond it `forward` raises a `ValueError` (fairseq only
            warns, in `hubert_dataset.verify_label_lengths`, and then trains on misaligned targets). Within it, encoder
            frames without a label are ignored, as fairseq's `forward_targets` trims them.

    Example:

    ```python
    >>> from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig

    >>> config = HubertPretrainingConfig(num_clusters=100, label_rate=100.0)  # iteration 1: MFCC labels at 100 Hz
    >>> model = HubertForPreTraining(config)
    >>> config.frame_rate
    50.0
    ```"""

    model_type = "hubert_pretraining"

    # HuBERT BASE pretraining defaults (fairseq hubert_base_librispeech.yaml) where they differ from HubertConfig
    mask_time_prob: float | int = 0.8
    feat_proj_dropout: float | int = 0.1
    layerdrop: float | int = 0.05
    activation_dropout: float | int = 0.0

    num_clusters: int = 100
    label_rate: float | int = 50.0
    sampling_rate: int = 16000
    final_dim: int = 256
    logit_temperature: float | int = 0.1
    pred_masked_weight: float | int = 1.0
    pred_nomask_weight: float | int = 0.0
    feature_penalty_weight: float | int = 10.0
    feature_grad_mult: float | int = 0.1
    label_length_tolerance: float | int = 1.0

    def validate_pretraining_head(self):
        """Part of `@strict` validation: the masked-prediction head's arguments."""
        if self.num_clusters < 2:
            raise ValueError(f"`num_clusters` must be at least 2, got {self.num_clusters}.")
        if self.label_rate <= 0:
            raise ValueError(f"`label_rate` must be a positive rate in Hz, got {self.label_rate}.")
        if self.sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive rate in Hz, got {self.sampling_rate}.")
        if self.final_dim < 1:
            raise ValueError(f"`final_dim` must be positive, got {self.final_dim}.")
        if self.logit_temperature <= 0:
            raise ValueError(f"`logit_temperature` must be positive, got {self.logit_temperature}.")
        if self.pred_masked_weight < 0 or self.pred_nomask_weight < 0:
            raise ValueError(
                "`pred_masked_weight` and `pred_nomask_weight` must be non-negative, got "
                f"{self.pred_masked_weight} and {self.pred_nomask_weight}."
            )
        if self.pred_masked_weight == 0 and self.pred_nomask_weight == 0:
            raise ValueError(
                "At least one of `pred_masked_weight` and `pred_nomask_weight` must be positive, got 0 and 0."
            )
        if not 0 <= self.feature_grad_mult <= 1:
            raise ValueError(f"`feature_grad_mult` must lie in [0, 1], got {self.feature_grad_mult}.")
        if self.feature_penalty_weight < 0:
            raise ValueError(f"`feature_penalty_weight` must be non-negative, got {self.feature_penalty_weight}.")
        if self.label_length_tolerance < 0:
            raise ValueError(f"`label_length_tolerance` must be non-negative, got {self.label_length_tolerance}.")
        if self.mask_time_prob <= 0:
            raise ValueError(
                f"HuBERT predicts masked frames: `mask_time_prob` must be positive, got {self.mask_time_prob}."
            )

    @property
    def frame_rate(self) -> float:
        """Encoder frame rate in Hz: `sampling_rate / prod(conv_stride)`."""
        return self.sampling_rate / self.inputs_to_logits_ratio

    @property
    def labels_per_frame(self) -> float:
        """Label frames per encoder frame, `label_rate / frame_rate` (fairseq `feat2tar_ratio`)."""
        return self.label_rate / self.frame_rate


# Fields of the stock config: `stock_hubert_config` keeps these and drops ours.
_HUBERT_FIELDS = frozenset(f.name for f in fields(HubertConfig))
_NOT_COPIED = frozenset({"architectures", "transformers_version", "auto_map", "_name_or_path"})


def stock_hubert_config(config: PreTrainedConfig | dict, **overrides) -> HubertConfig:
    """A plain `HubertConfig` (model_type `"hubert"`) with the encoder arguments of `config`.

    Drops every field stock `HubertConfig` does not know (`num_clusters`, `label_rate`, `auto_map`, ...), so the
    result loads with stock classes and Auto classes everywhere. `overrides` replace single fields
    (e.g. `mask_time_prob=0.05` for fine-tuning).
    """
    values = config.to_dict() if isinstance(config, PreTrainedConfig) else dict(config)
    kept = {k: v for k, v in values.items() if k in _HUBERT_FIELDS and k not in _NOT_COPIED}
    unknown = set(overrides) - _HUBERT_FIELDS
    if unknown:
        raise ValueError(f"`HubertConfig` has no fields {sorted(unknown)}.")
    kept.update(overrides)
    return HubertConfig(**kept)


@strict
class HubertPseudoLabelerConfig(PreTrainedConfig):
    r"""
    Configuration of [`HubertPseudoLabeler`]: where the frame features come from and how many k-means clusters
    turn them into HuBERT targets. The centroids themselves are a buffer of the model (saved with its weights).

    Two feature sources (Hsu et al. 2021 §IV; fairseq `examples/hubert/simple_kmeans/`):

    - `"mfcc"`: 39-d Kaldi MFCC (13 cepstra + Δ + ΔΔ) at a `mfcc_frame_shift_ms` hop, exactly as
      `dump_mfcc_feature.py` (`torchaudio.compliance.kaldi.mfcc(use_energy=False)` then
      `torchaudio.functional.compute_deltas` twice). Computed on the waveform in [-1, 1] as soundfile/`datasets`
      decode it (the log-mel energies, hence c0, depend on the scale).
    - `"hubert"`: hidden layer `layer` of a HuBERT encoder (`encoder_config` + weights inside the labeler), as
      `dump_hubert_feature.py` takes it; the input is normalised per utterance first if `normalize_input`.

    Args:
        feature_type (`str`, *optional*, defaults to `"mfcc"`):
            `"mfcc"` or `"hubert"`.
        num_clusters (`int`, *optional*, defaults to 100):
            Number of k-means clusters K = number of label classes.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate in Hz of the waveforms the labeler takes.
        mfcc_num_ceps (`int`, *optional*, defaults to 13):
            Cepstral coefficients per frame (Kaldi `--num-ceps`). Only relevant if `feature_type == "mfcc"`.
        mfcc_num_mel_bins (`int`, *optional*, defaults to 23):
            Mel filterbank channels (Kaldi `--num-mel-bins`, its default). Only relevant if `feature_type == "mfcc"`.
        mfcc_frame_length_ms (`float`, *optional*, defaults to 25.0):
            Analysis window in milliseconds (Kaldi `--frame-length`). Only relevant if `feature_type == "mfcc"`.
        mfcc_frame_shift_ms (`float`, *optional*, defaults to 10.0):
            Hop in milliseconds (Kaldi `--frame-shift`): the label rate is `1000 / mfcc_frame_shift_ms` Hz.
            Only relevant if `feature_type == "mfcc"`.
        mfcc_num_deltas (`int`, *optional*, defaults to 2):
            Orders of time derivatives appended (2: Δ and ΔΔ, as fairseq), each from
            `torchaudio.functional.compute_deltas` (window 5, replicate padding). Feature dimension is
            `mfcc_num_ceps * (1 + mfcc_num_deltas)`. Only relevant if `feature_type == "mfcc"`.
        encoder_config (`dict` or [`~transformers.HubertConfig`], *optional*):
            The HuBERT encoder whose layer gives the features (stored as a stock `HubertConfig`, truncated to the
            layers needed). Required if `feature_type == "hubert"`.
        layer (`int`, *optional*):
            Which hidden layer, counted as below. Required if `feature_type == "hubert"`.
        feature_convention (`str`, *optional*, defaults to `"hf"`):
            How `layer` is counted and how the input is normalised. `"hf"`: `HubertModel(...,
            output_hidden_states=True).hidden_states[layer]`, `layer` in 0..N, 0 being the transformer's input
            (after the positional convolution, and the layer norm of post-LN encoders), with zero-mean unit-variance
            normalisation as `Wav2Vec2FeatureExtractor(do_normalize=True)` (variance ε = 1e-7). `"fairseq"`:
            fairseq `HubertModel.extract_features(output_layer=layer)`, `layer` in 1..N (the output of the
            `layer`-th transformer block, never the final layer norm of pre-LN encoders), with normalisation as
            `F.layer_norm(wav, wav.shape)` in `dump_hubert_feature.py` (ε = 1e-5). For layers 1..N both give the
            same tensor in transformers ≥ 5 (see `tests/test_hubert_pretraining.py`), so fairseq's published k-means
            models (e.g. HuBERT BASE layer 9, K = 500) apply to HF weights with either convention.
        normalize_input (`bool`, *optional*, defaults to `False`):
            Normalise each waveform to zero mean and unit variance before the encoder, as the encoder saw its input
            in training (`hf_speech_cl`'s collator: True; fairseq HuBERT BASE `task.normalize: false`; LARGE/X-LARGE:
            true). Only relevant if `feature_type == "hubert"`.
        source_model (`str`, *optional*):
            Name or path of the checkpoint the encoder was taken from (provenance only).
        iteration (`int`, *optional*):
            HuBERT iteration these labels are for (provenance only).
    """

    model_type = "hubert_pseudo_labeler"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=HubertConfig, optional=True)}

    feature_type: Literal["mfcc", "hubert"] = "mfcc"
    num_clusters: int = 100
    sampling_rate: int = 16000
    mfcc_num_ceps: int = 13
    mfcc_num_mel_bins: int = 23
    mfcc_frame_length_ms: float | int = 25.0
    mfcc_frame_shift_ms: float | int = 10.0
    mfcc_num_deltas: int = 2
    encoder_config: dict | PreTrainedConfig | None = None
    layer: int | None = None
    feature_convention: Literal["hf", "fairseq"] = "hf"
    normalize_input: bool = False
    source_model: str | None = None
    iteration: int | None = None

    def __post_init__(self, **kwargs):
        if self.encoder_config is not None:  # always a plain HubertConfig: no pretraining fields, no auto_map
            self.encoder_config = stock_hubert_config(self.encoder_config)
        super().__post_init__(**kwargs)

    def validate_feature_source(self):
        """Part of `@strict` validation: the feature source is complete and its layer exists."""
        if self.num_clusters < 1:
            raise ValueError(f"`num_clusters` must be positive, got {self.num_clusters}.")
        if self.sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive rate in Hz, got {self.sampling_rate}.")
        if self.feature_type == "mfcc":
            if self.frame_shift_samples < 1:
                raise ValueError(
                    f"`mfcc_frame_shift_ms={self.mfcc_frame_shift_ms}` at `sampling_rate={self.sampling_rate}` is "
                    "shorter than one sample."
                )
            if self.mfcc_num_deltas < 0:
                raise ValueError(f"`mfcc_num_deltas` must be non-negative, got {self.mfcc_num_deltas}.")
            return
        if self.encoder_config is None or self.layer is None:
            raise ValueError(
                f"`feature_type='hubert'` needs `encoder_config` and `layer`, got encoder_config="
                f"{type(self.encoder_config).__name__} and layer={self.layer}."
            )
        num_layers = self.encoder_config.num_hidden_layers
        lowest = 0 if self.feature_convention == "hf" else 1
        if not lowest <= self.layer <= num_layers:
            raise ValueError(
                f"`layer={self.layer}` is outside {lowest}..{num_layers} for `feature_convention="
                f"'{self.feature_convention}'` and an encoder of {num_layers} layers"
                + (
                    " (fairseq's `output_layer` is 1-based; layer 0 exists only in the 'hf' convention)."
                    if lowest
                    else "."
                )
            )

    @property
    def frame_shift_samples(self) -> int:
        """Hop between label frames in samples (Kaldi's `int(sampling_rate * frame_shift_ms / 1000)` for MFCC,
        `prod(conv_stride)` for HuBERT layers)."""
        if self.feature_type == "mfcc":
            return int(self.sampling_rate * self.mfcc_frame_shift_ms / 1000)
        return self.encoder_config.inputs_to_logits_ratio

    @property
    def label_rate(self) -> float:
        """Frame rate of the labels in Hz (100 for MFCC at a 10 ms hop, 50 for HuBERT BASE at 16 kHz)."""
        return self.sampling_rate / self.frame_shift_samples

    @property
    def frame_center_seconds(self) -> float:
        """Centre of frame 0's analysis window in seconds: frame t is centred at
        `frame_center_seconds + t / label_rate` (12.5 ms for 25 ms MFCC windows and for HuBERT BASE's 400-sample
        receptive field at 16 kHz)."""
        if self.feature_type == "mfcc":
            return int(self.sampling_rate * self.mfcc_frame_length_ms / 1000) / 2 / self.sampling_rate
        receptive_field, jump = 1, 1
        for kernel, stride in zip(self.encoder_config.conv_kernel, self.encoder_config.conv_stride, strict=True):
            receptive_field += (kernel - 1) * jump
            jump *= stride
        return receptive_field / 2 / self.sampling_rate

    @property
    def feature_dim(self) -> int:
        """Dimension of one feature frame (= of one centroid)."""
        if self.feature_type == "mfcc":
            return self.mfcc_num_ceps * (1 + self.mfcc_num_deltas)
        return self.encoder_config.hidden_size
