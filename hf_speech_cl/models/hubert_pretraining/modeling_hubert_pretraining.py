"""HuBERT masked-prediction pretraining and the k-means pseudo-labeler that makes its targets.

- `HubertForPreTraining`: a stock `HubertModel` encoder plus fairseq's prediction head (`final_proj`,
  `label_embs_concat`); the loss is the cross-entropy of Hsu et al. 2021 ("HuBERT", §II) as computed by
  fairseq's `HubertModel.compute_nce` and `HubertCriterion` (`fairseq/models/hubert/hubert.py`,
  `fairseq/criterions/hubert_criterion.py`).
- `HubertPseudoLabeler`: a feature source (Kaldi MFCC, or hidden layer L of a HuBERT encoder held inside it) plus
  k-means centroids held as a buffer; `forward` gives the cluster id of every frame. Saved and loaded like any
  checkpoint, so the labels of a published model can be reproduced.

Imports only `torch`, `transformers` and the sibling configuration file (the `models/` wall), so saved checkpoints
load with `trust_remote_code=True` without `hf_speech_cl`. The MFCC source additionally needs `torchaudio` (imported
when MFCCs are computed) because it is defined as torchaudio's Kaldi-compatible MFCC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertModel, PreTrainedModel
from transformers import initialization as init
from transformers.models.hubert.modeling_hubert import HubertPreTrainedModel, _compute_mask_indices
from transformers.utils import ModelOutput
from transformers.utils.output_capturing import capture_outputs

from .configuration_hubert_pretraining import HubertPretrainingConfig, HubertPseudoLabelerConfig, stock_hubert_config

__all__ = [
    "HubertForPreTraining",
    "HubertForPreTrainingOutput",
    "HubertPseudoLabeler",
    "HubertPseudoLabelerOutput",
    "hubert_layer_features",
    "kaldi_mfcc",
    "nearest_centroid",
    "normalize_waveform",
]

IGNORE_INDEX = -100
# Variance floors of the two per-utterance normalisations (see `normalize_waveform`)
_HF_NORM_EPS = 1e-7  # transformers Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
_FAIRSEQ_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm default, used by fairseq dump_hubert_feature.py


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions shared by the labeler and hf_speech_cl.pseudo_labels
# ---------------------------------------------------------------------------------------------------------------------


def kaldi_mfcc(
    waveform: torch.Tensor,
    sampling_rate: int,
    *,
    num_ceps: int = 13,
    num_mel_bins: int = 23,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    num_deltas: int = 2,
) -> torch.Tensor:
    """Kaldi MFCC plus time derivatives of one waveform, as fairseq's `dump_mfcc_feature.py` computes them.

    `torchaudio.compliance.kaldi.mfcc(use_energy=False)` (Kaldi defaults otherwise: Povey window, pre-emphasis
    0.97, DC removal, no dither, `snip_edges=True`, cepstral lifter 22), then `torchaudio.functional.compute_deltas`
    `num_deltas` times (window 5), concatenated as `[c, Δc, ΔΔc]`.

    Args:
        waveform: `(samples,)` float, on the scale soundfile/`datasets` decode to: [-1, 1]. The scale matters (it
            shifts the log-mel energies, hence c0), which is why MFCC labels must not be computed on
            zero-mean/unit-variance normalised `input_values`.
        sampling_rate: Hz.

    Returns:
        `(frames, num_ceps * (1 + num_deltas))` float32, `frames = 1 + (samples - window) // hop` (0 when the
        waveform is shorter than one window).

    Raises:
        ValueError: `waveform` is not 1-D.
        ImportError: torchaudio is missing.
    """
    try:
        import torchaudio
    except ImportError as err:  # pragma: no cover - torchaudio is a dependency of hf_speech_cl
        raise ImportError("MFCC features need torchaudio: `pip install torchaudio`.") from err
    if waveform.ndim != 1:
        raise ValueError(f"Expected a waveform of shape (samples,). Found: {list(waveform.shape)}")
    dim = num_ceps * (1 + num_deltas)
    window = int(sampling_rate * frame_length_ms / 1000)
    if waveform.shape[0] < window:
        return waveform.new_zeros((0, dim), dtype=torch.float32)
    mfcc = torchaudio.compliance.kaldi.mfcc(
        waveform.float()[None],
        sample_frequency=sampling_rate,
        num_ceps=num_ceps,
        num_mel_bins=num_mel_bins,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        use_energy=False,
    ).T  # (ceps, frames)
    streams = [mfcc]
    for _ in range(num_deltas):
        streams.append(torchaudio.functional.compute_deltas(streams[-1]))
    return torch.cat(streams, dim=0).T.contiguous()  # (frames, dim)


def normalize_waveform(waveform: torch.Tensor, convention: str = "hf") -> torch.Tensor:
    """Zero-mean, unit-variance normalisation of one waveform `(samples,)`, as the encoder saw it in training.

    `"hf"`: `(x - mean) / sqrt(var + 1e-7)` (transformers `Wav2Vec2FeatureExtractor(do_normalize=True)`).
    `"fairseq"`: `F.layer_norm(x, x.shape)` = `(x - mean) / sqrt(var + 1e-5)` (fairseq `dump_hubert_feature.py`
    and `HubertDataset` with `normalize=True`). Both use the biased variance; they differ for quiet audio only.

    Raises:
        ValueError: unknown `convention` or `waveform` not 1-D.
    """
    if waveform.ndim != 1:
        raise ValueError(f"Expected a waveform of shape (samples,). Found: {list(waveform.shape)}")
    if convention == "hf":
        return (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + _HF_NORM_EPS)
    if convention == "fairseq":
        return F.layer_norm(waveform, waveform.shape, eps=_FAIRSEQ_NORM_EPS)
    raise ValueError(f"`convention` must be 'hf' or 'fairseq', got {convention!r}.")


def hubert_layer_features(
    encoder: HubertModel,
    waveform: torch.Tensor,
    layer: int,
    *,
    feature_convention: str = "hf",
    normalize_input: bool = False,
) -> torch.Tensor:
    """Hidden layer `layer` of a HuBERT encoder for one waveform, "where taken" made explicit.

    `"hf"`: `encoder(x, output_hidden_states=True).hidden_states[layer]`, `layer` in 0..N: 0 is the transformer's
    input (conv features → projection → + positional convolution → layer norm for post-LN encoders), L ≥ 1 the
    output of block L. `"fairseq"`: fairseq `HubertModel.extract_features(output_layer=layer)`, `layer` in 1..N:
    `TransformerEncoder(layer=layer - 1)` returns block L's output and skips the final layer norm of pre-LN
    encoders because `layer` is not None. transformers ≥ 5 records `hidden_states[-1]` before that final layer norm
    too (`capture_outputs(tie_last_hidden_states=False)`), so for L in 1..N both conventions give the same tensor,
    for post-LN (BASE) and pre-LN (LARGE) encoders alike; they differ in the allowed range (fairseq has no layer 0;
    its `output_layer=0` silently returns the last layer) and in the input normalisation (see `normalize_waveform`).

    Args:
        encoder: the `HubertModel` (eval mode for deterministic features).
        waveform: `(samples,)` in [-1, 1]; normalised here if `normalize_input`.
        layer: hidden layer, counted as above.

    Returns:
        `(frames, hidden_size)` float32 (0 frames when the waveform is shorter than the conv receptive field).

    Raises:
        ValueError: `layer` outside the convention's range, unknown convention, or `waveform` not 1-D.
    """
    lowest = {"hf": 0, "fairseq": 1}.get(feature_convention)
    if lowest is None:
        raise ValueError(f"`feature_convention` must be 'hf' or 'fairseq', got {feature_convention!r}.")
    num_layers = encoder.config.num_hidden_layers
    if not lowest <= layer <= num_layers:
        raise ValueError(
            f"`layer={layer}` is outside {lowest}..{num_layers} for feature_convention={feature_convention!r} and an "
            f"encoder of {num_layers} layers."
        )
    if waveform.ndim != 1:
        raise ValueError(f"Expected a waveform of shape (samples,). Found: {list(waveform.shape)}")
    if int(encoder._get_feat_extract_output_lengths(waveform.shape[0])) < 1:
        return waveform.new_zeros((0, encoder.config.hidden_size), dtype=torch.float32)
    if normalize_input:
        waveform = normalize_waveform(waveform.float(), feature_convention)
    dtype = next(encoder.parameters()).dtype
    outputs = encoder(waveform[None].to(dtype), output_hidden_states=[layer])  # keeps only the selected layer
    return outputs.hidden_states[layer][0].float()


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the closest centroid (squared Euclidean distance) of every row of `features`.

    Same arithmetic as fairseq's `ApplyKmeans` (`examples/hubert/simple_kmeans/dump_km_label.py`):
    `|x|² - 2 x·c + |c|²`, argmin over clusters, in float32.

    Args:
        features: `(N, D)`.
        centroids: `(K, D)`.

    Returns:
        `(N,)` int64 cluster ids.

    Raises:
        ValueError: the feature dimensions differ.
    """
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"Expected features (N, D) and centroids (K, D) with the same D. Found: {list(features.shape)} and "
            f"{list(centroids.shape)}"
        )
    x = features.float()
    c = centroids.to(device=x.device, dtype=torch.float32)
    distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None]
    return distances.argmin(dim=1)


def _scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by `scale` (fairseq `GradMultiply`)."""
    return tensor * scale + tensor.detach() * (1.0 - scale)


def _valid_label_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Per row, one past the last label that is not `IGNORE_INDEX` (0 for a row of padding only)."""
    positions = torch.arange(1, labels.shape[1] + 1, device=labels.device)
    return ((labels != IGNORE_INDEX).long() * positions).amax(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# HubertForPreTraining
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class HubertForPreTrainingOutput(ModelOutput):
    """Output of [`HubertForPreTraining`]. Scalars are 0-d tensors; they are `None` without `labels`.

    Args:
        loss: `(w_m Σ_masked CE + w_u Σ_unmasked CE) / n + feature_penalty_weight · feature_penalty`, with `n` the
            number of frames the weighted terms cover (fairseq `HubertCriterion`'s `sample_size`). Natural log
            (fairseq logs it in bits).
        loss_masked: mean cross-entropy over masked labelled frames (detached: for logging; `loss` carries the
            gradient).
        sample_size: 0-d int64, the `n` that `loss` is divided by (fairseq `HubertCriterion`'s `sample_size`).
            Under gradient accumulation or several processes fairseq normalises by the total over all micro-batches
            and processes: pass `loss_normalizer=lambda batch, out: (out.loss * out.sample_size, out.sample_size)`
            to the shared loop (`loss * sample_size` is fairseq's summed loss, the feature penalty scaled by
            `sample_size` as its criterion does).
        loss_unmasked: mean cross-entropy over unmasked labelled frames (computed even when its weight is 0).
        feature_penalty: mean squared activation of the convolutional features of real (non-padding) frames.
        accuracy_masked: top-1 accuracy of the cluster prediction on masked labelled frames.
        accuracy_unmasked: the same on unmasked labelled frames.
        logits: `(batch, frames, num_clusters)`: cosine similarity / `logit_temperature`.
        frame_labels: `(batch, frames)` int64: the labels resampled to the encoder frame rate, -100 where ignored
            (padding, frames past the last label, labels given as -100).
        mask_time_indices: `(batch, frames)` bool: frames replaced by the mask embedding.
        last_hidden_state: `(batch, frames, hidden_size)`: encoder output.
        hidden_states: with `output_hidden_states=True`, `num_hidden_layers + 1` tensors `(batch, frames, hidden)`.
        attentions: with `output_attentions=True` (eager attention), per layer `(batch, heads, frames, frames)`.
    """

    loss: torch.FloatTensor | None = None
    loss_masked: torch.FloatTensor | None = None
    loss_unmasked: torch.FloatTensor | None = None
    feature_penalty: torch.FloatTensor | None = None
    accuracy_masked: torch.FloatTensor | None = None
    accuracy_unmasked: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    frame_labels: torch.LongTensor | None = None
    mask_time_indices: torch.BoolTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    sample_size: torch.LongTensor | None = None  # last: the positions of the fields above stay those of before


class HubertForPreTraining(HubertPreTrainedModel):
    """HuBERT with its masked-prediction head (Hsu et al. 2021, §II; fairseq `HubertModel`).

    The encoder is a stock `HubertModel` under `self.hubert`, so `HubertForPreTraining.from_pretrained(stock_dir)`
    initialises it from stock HuBERT weights, and `HubertForCTC.from_pretrained(dir)` /
    `HubertForSequenceClassification.from_pretrained(dir)` load the encoder of a saved `HubertForPreTraining`
    (the head's weights are reported as unused). `export_encoder(dir)` writes a stock `HubertModel` checkpoint
    (model_type `"hubert"`) for code that goes through Auto classes.

    Pipeline (fairseq `HubertModel.forward`): conv features (gradient scaled by `feature_grad_mult`) → layer norm +
    projection (`feature_projection`) → frames of `mask_time_indices` replaced by `hubert.masked_spec_embed` → the
    transformer → `final_proj` → cosine similarity with one embedding per cluster (`label_embs_concat`) /
    `logit_temperature` → cross-entropy against the labels of masked (and optionally unmasked) frames.

    Padding: fairseq's HuBERT BASE recipe crops every utterance of a batch to the shortest (`pad_audio: false`), so
    its group-norm conv layer (`feat_extract_norm="group"`) never sees padding; with right-padded batches and an
    `attention_mask` it does (as in transformers' own `HubertModel`). Padding frames are never masked nor scored.
    """

    config: HubertPretrainingConfig
    config_class = HubertPretrainingConfig

    def __init__(self, config: HubertPretrainingConfig):
        super().__init__(config)
        self.hubert = HubertModel(config)
        self.final_proj = nn.Linear(config.hidden_size, config.final_dim)
        self.label_embs_concat = nn.Parameter(torch.empty(config.num_clusters, config.final_dim))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HubertForPreTraining):
            init.uniform_(module.label_embs_concat)  # U[0, 1), as fairseq's nn.init.uniform_

    def freeze_feature_encoder(self):
        """Stop gradients into the convolutional feature encoder (same as `feature_grad_mult=0`)."""
        self.hubert.feature_extractor._freeze_parameters()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Cluster logits of encoder frames: `cos(final_proj(h), label_embs_concat[k]) / logit_temperature`.

        Equivalent to fairseq's `compute_nce` with every other cluster as negative (its positive-first layout and
        -inf on the duplicate give the same cross-entropy as a softmax over the K clusters with the true id).

        Args:
            hidden_states: `(batch, frames, hidden_size)`.

        Returns:
            `(batch, frames, num_clusters)` float32.
        """
        projected = F.normalize(self.final_proj(hidden_states).float(), dim=-1)
        embeddings = F.normalize(self.label_embs_concat.float(), dim=-1)
        return projected @ embeddings.T / self.config.logit_temperature

    def frame_labels(self, labels: torch.Tensor, frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Resample `labels` from `config.label_rate` to the encoder frame rate by index (fairseq `forward_targets`).

        Encoder frame t takes label `floor(t * label_rate / frame_rate)`; frames whose label index lies past the
        utterance's last label, and padding frames, get -100. (fairseq trims the batch to
        `int(label_frames / ratio)` frames, which also drops a last frame whose label exists, e.g. 2F-1 MFCC labels
        for F frames; here that frame keeps its label.)

        Args:
            labels: `(batch, label_frames)` int, -100 for padding/ignored.
            frame_lengths: `(batch,)` real encoder frames per utterance.
            num_frames: encoder frames of the batch (padded length).

        Returns:
            `(batch, num_frames)` int64.

        Raises:
            ValueError: an utterance's label length and encoder length disagree by more than
                `config.label_length_tolerance` encoder frames, or a label is outside [0, num_clusters).
        """
        if labels.ndim != 2 or labels.shape[0] != frame_lengths.shape[0]:
            raise ValueError(
                f"Expected `labels` of shape (batch={frame_lengths.shape[0]}, label_frames). "
                f"Found: {list(labels.shape)}"
            )
        labels = labels.long()
        real = labels[labels != IGNORE_INDEX]
        if real.numel() and (real.min() < 0 or real.max() >= self.config.num_clusters):
            raise ValueError(
                f"Labels must lie in [0, {self.config.num_clusters}) or be {IGNORE_INDEX}; found values in "
                f"[{int(real.min())}, {int(real.max())}]. Is `num_clusters` the K of the labeler?"
            )
        ratio = self.config.labels_per_frame
        label_lengths = _valid_label_lengths(labels)
        mismatch = (label_lengths.double() / ratio - frame_lengths.double()).abs()
        worst = int(mismatch.argmax())
        if float(mismatch[worst]) > self.config.label_length_tolerance:
            frames, label_frames = int(frame_lengths[worst]), int(label_lengths[worst])
            raise ValueError(
                f"Audio and label duration differ in utterance {worst} of the batch: {frames} encoder frames at "
                f"{self.config.frame_rate:g} Hz ({frames / self.config.frame_rate:.3f} s) but {label_frames} labels "
                f"at label_rate={self.config.label_rate:g} Hz ({label_frames / self.config.label_rate:.3f} s); "
                f"tolerance {self.config.label_length_tolerance:g} encoder frame(s). Check `label_rate` against "
                "the labeler's rate, and that audio and labels were cropped together."
            )
        index = (torch.arange(num_frames, device=labels.device, dtype=torch.float64) * ratio).long()  # (T,)
        gathered = labels.gather(1, index.clamp(max=labels.shape[1] - 1)[None].expand(labels.shape[0], -1))
        frames = torch.arange(num_frames, device=labels.device)
        valid = (index[None] < label_lengths[:, None]) & (frames[None] < frame_lengths[:, None])
        return torch.where(valid, gathered, torch.full_like(gathered, IGNORE_INDEX))

    def _sample_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Span mask over real frames with transformers' `_compute_mask_indices` (wav2vec 2.0 / HuBERT scheme)."""
        batch_size, num_frames = frame_mask.shape
        mask = _compute_mask_indices(
            (batch_size, num_frames),
            mask_prob=self.config.mask_time_prob,
            mask_length=self.config.mask_time_length,
            attention_mask=frame_mask.long(),
            min_masks=self.config.mask_time_min_masks,
        )
        return torch.from_numpy(mask).to(frame_mask.device) & frame_mask

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        **kwargs,
    ) -> HubertForPreTrainingOutput:
        r"""
        Args:
            input_values: `(batch, samples)` float waveform as the encoder is trained on (`hf_speech_cl`'s collator:
                zero-mean, unit-variance per utterance) at `config.sampling_rate`.
            attention_mask: `(batch, samples)` 1 for real samples, 0 for padding.
            labels: `(batch, label_frames)` cluster ids at `config.label_rate`, -100 where ignored.
            mask_time_indices: `(batch, frames)` bool: frames to mask. When `None` and `labels` are given, a mask is
                sampled (`mask_time_prob`, `mask_time_length`, `mask_time_min_masks`) over real frames, in training
                and in evaluation alike, as fairseq's `apply_mask` does (the loss needs masked frames).
            output_hidden_states: return the transformer's hidden states.
            return_dict: `False` returns a tuple.

        Returns:
            [`HubertForPreTrainingOutput`].

        Raises:
            ValueError: wrong `input_values`/`mask_time_indices` shapes, labels out of range, or label and audio
                lengths that disagree (see `frame_labels`).
        """
        if input_values.ndim != 2:
            raise ValueError(f"Expected `input_values` of shape (batch, samples). Found: {list(input_values.shape)}")

        # conv features: (B, C, T) -> (B, T, C); gradient scaled as fairseq `forward_features`
        scale = self.config.feature_grad_mult
        if scale > 0:
            extract_features = self.hubert.feature_extractor(input_values)
            if scale != 1:
                extract_features = _scale_gradient(extract_features, scale)
        else:
            with torch.no_grad():
                extract_features = self.hubert.feature_extractor(input_values)
        extract_features = extract_features.transpose(1, 2)
        batch_size, num_frames, _ = extract_features.shape

        if attention_mask is not None:
            frame_mask = self.hubert._get_feature_vector_attention_mask(num_frames, attention_mask)  # (B, T) bool
        else:
            frame_mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=extract_features.device)
        frame_lengths = frame_mask.sum(-1)
        frame_labels = self.frame_labels(labels, frame_lengths, num_frames) if labels is not None else None

        feature_penalty = extract_features.float().pow(2)[frame_mask].mean()

        hidden_states = self.hubert.feature_projection(extract_features)  # layer norm, projection, dropout
        if mask_time_indices is None and labels is not None:
            mask_time_indices = self._sample_mask(frame_mask)
        if mask_time_indices is not None:
            if mask_time_indices.shape != (batch_size, num_frames):
                raise ValueError(
                    f"Expected `mask_time_indices` of shape (batch, frames) = {[batch_size, num_frames]}. "
                    f"Found: {list(mask_time_indices.shape)}"
                )
            mask_time_indices = mask_time_indices.bool() & frame_mask
            mask_embedding = self.hubert.masked_spec_embed.to(hidden_states.dtype)
            hidden_states = torch.where(mask_time_indices[..., None], mask_embedding, hidden_states)
        if self.training and self.config.mask_feature_prob > 0:  # channel masking (fairseq mask_channel_prob)
            channel_mask = _compute_mask_indices(
                (batch_size, hidden_states.shape[-1]),
                mask_prob=self.config.mask_feature_prob,
                mask_length=self.config.mask_feature_length,
                min_masks=self.config.mask_feature_min_masks,
            )
            channel_mask = torch.from_numpy(channel_mask).to(hidden_states.device)
            hidden_states = hidden_states.masked_fill(channel_mask[:, None, :], 0.0)

        encoder_outputs = self.hubert.encoder(
            hidden_states, attention_mask=frame_mask if attention_mask is not None else None
        )
        last_hidden_state = encoder_outputs.last_hidden_state  # (B, T, H)
        logits = self.compute_logits(last_hidden_state)  # (B, T, K)

        if frame_labels is None:
            return HubertForPreTrainingOutput(
                logits=logits, mask_time_indices=mask_time_indices, last_hidden_state=last_hidden_state
            )

        labelled = frame_labels != IGNORE_INDEX
        masked = labelled & mask_time_indices
        unmasked = labelled & ~mask_time_indices
        cross_entropy = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), frame_labels.clamp(min=0).reshape(-1), reduction="none"
        ).view(batch_size, num_frames)
        correct = (logits.detach().argmax(-1) == frame_labels).float()
        num_masked, num_unmasked = masked.sum(), unmasked.sum()
        sum_masked = (cross_entropy * masked).sum()
        sum_unmasked = (cross_entropy * unmasked).sum()

        # fairseq HubertCriterion: weighted sums over the frames the weighted terms cover, plus the feature penalty
        weight_m, weight_u = self.config.pred_masked_weight, self.config.pred_nomask_weight
        sample_size = num_masked * (weight_m > 0) + num_unmasked * (weight_u > 0)
        loss = (weight_m * sum_masked + weight_u * sum_unmasked) / sample_size.clamp(min=1)
        if self.config.feature_penalty_weight > 0:
            loss = loss + self.config.feature_penalty_weight * feature_penalty

        return HubertForPreTrainingOutput(
            loss=loss,
            loss_masked=sum_masked.detach() / num_masked.clamp(min=1),
            sample_size=sample_size.clamp(min=1).long(),
            loss_unmasked=sum_unmasked.detach() / num_unmasked.clamp(min=1),
            feature_penalty=feature_penalty.detach(),
            accuracy_masked=(correct * masked).sum() / num_masked.clamp(min=1),
            accuracy_unmasked=(correct * unmasked).sum() / num_unmasked.clamp(min=1),
            logits=logits,
            frame_labels=frame_labels,
            mask_time_indices=mask_time_indices,
            last_hidden_state=last_hidden_state,
        )

    def export_encoder(self, save_directory: str | Path, **config_overrides) -> Path:
        """Write the encoder as a stock `HubertModel` checkpoint (config model_type `"hubert"`, no custom code).

        Every stock class and Auto class loads the result (`AutoModelForCTC.from_pretrained(dir)`, ...).
        `config_overrides` replace `HubertConfig` fields, e.g. `mask_time_prob=0.05` for fine-tuning (this config
        carries the pretraining value, 0.8).

        Returns:
            `save_directory` as a `Path`.

        Raises:
            ValueError: an override is not a `HubertConfig` field.
        """
        config = stock_hubert_config(self.config, **config_overrides)
        encoder = HubertModel(config)
        state = self.hubert.state_dict()
        if not hasattr(encoder, "masked_spec_embed"):  # masking switched off by the overrides
            state.pop("masked_spec_embed")
        encoder.load_state_dict(state, strict=True)
        encoder.to(self.hubert.device)
        encoder.save_pretrained(save_directory)
        return Path(save_directory)


# ---------------------------------------------------------------------------------------------------------------------
# HubertPseudoLabeler
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class HubertPseudoLabelerOutput(ModelOutput):
    """Output of [`HubertPseudoLabeler`].

    Args:
        cluster_ids: `(batch, frames)` int64 at `config.label_rate`; -100 past each utterance's last frame.
        lengths: `(batch,)` int64 label frames per utterance.
        features: `(batch, frames, feature_dim)` float32 (zeros past `lengths`) with `output_features=True`.
    """

    cluster_ids: torch.LongTensor | None = None
    lengths: torch.LongTensor | None = None
    features: torch.FloatTensor | None = None


_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


class HubertPseudoLabeler(PreTrainedModel):
    """Frame features → nearest k-means centroid: the pseudo-labels HuBERT is trained to predict.

    Input contract: `input_values` is the waveform in [-1, 1] as `datasets`/soundfile decode it, at
    `config.sampling_rate`, NOT normalised: MFCCs are computed on that scale (as fairseq's `dump_mfcc_feature.py`
    reads audio with soundfile), and for the HuBERT source the labeler applies the per-utterance normalisation
    itself when `config.normalize_input` (as the encoder saw its input in training).

    Every utterance is processed on its own, without padding (as fairseq's dump scripts do), so a label never
    depends on which other utterances share the batch (group-norm feature encoders of HuBERT BASE would otherwise
    see the padding). The labeler is a frozen teacher: it always stays in eval mode.

    Build one with `for_mfcc(...)` or `for_hubert_layer(...)`, fit k-means on `extract_features`, then
    `set_centroids(...)` and `save_pretrained(...)`.
    """

    config: HubertPseudoLabelerConfig
    config_class = HubertPseudoLabelerConfig
    main_input_name = "input_values"

    def __init__(self, config: HubertPseudoLabelerConfig):
        super().__init__(config)
        self.encoder = HubertModel(config.encoder_config) if config.feature_type == "hubert" else None
        self.register_buffer("centroids", torch.zeros(config.num_clusters, config.feature_dim))
        self.post_init()
        self.eval()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HubertPseudoLabeler):
            init.zeros_(module.centroids)

    def train(self, mode: bool = True):
        """Always eval mode: dropout, LayerDrop or masking would change the labels."""
        return super().train(False)

    # An MFCC labeler has no parameters: its dtype and device are those of the centroids.
    @property
    def dtype(self) -> torch.dtype:
        return self.centroids.dtype

    @property
    def device(self) -> torch.device:
        return self.centroids.device

    # -- construction -----------------------------------------------------------------------------------------------

    @classmethod
    def for_mfcc(
        cls,
        num_clusters: int,
        *,
        sampling_rate: int = 16000,
        centroids: torch.Tensor | None = None,
        iteration: int | None = None,
        **mfcc_kwargs,
    ) -> HubertPseudoLabeler:
        """A labeler on 39-d Kaldi MFCCs (iteration 1). `mfcc_kwargs`: the `mfcc_*` fields of the config."""
        labeler = cls(
            HubertPseudoLabelerConfig(
                feature_type="mfcc",
                num_clusters=num_clusters,
                sampling_rate=sampling_rate,
                iteration=iteration,
                **mfcc_kwargs,
            )
        )
        if centroids is not None:
            labeler.set_centroids(centroids)
        return labeler

    @classmethod
    def for_hubert_layer(
        cls,
        encoder: PreTrainedModel,
        layer: int,
        num_clusters: int,
        *,
        normalize_input: bool,
        feature_convention: str = "hf",
        sampling_rate: int | None = None,
        centroids: torch.Tensor | None = None,
        source_model: str | None = None,
        iteration: int | None = None,
    ) -> HubertPseudoLabeler:
        """A labeler on hidden layer `layer` of `encoder` (iteration ≥ 2).

        Only the layers up to `layer` are kept (copied): `hidden_states[L]` does not depend on the layers above.

        Args:
            encoder: a `HubertModel`, or a model holding one as `.hubert` (`HubertForPreTraining`, `HubertForCTC`).
            layer: counted as `feature_convention` says (see `HubertPseudoLabelerConfig`).
            num_clusters: K.
            normalize_input: whether the encoder was trained on per-utterance normalised waveforms.
            sampling_rate: Hz; defaults to `encoder.config.sampling_rate` if it has one, else 16000.

        Raises:
            TypeError: `encoder` holds no `HubertModel`.
            ValueError: `layer` is outside the encoder (see the config).
        """
        hubert = getattr(encoder, "hubert", encoder)
        if not isinstance(hubert, HubertModel):
            raise TypeError(f"Expected a HubertModel or a model with a `.hubert` HubertModel, got {type(encoder)}.")
        source_layers = hubert.config.num_hidden_layers
        lowest = 0 if feature_convention == "hf" else 1
        if not lowest <= layer <= source_layers:
            raise ValueError(
                f"`layer={layer}` is outside {lowest}..{source_layers} for an encoder of {source_layers} layers "
                f"(feature_convention={feature_convention!r})."
            )
        kept_layers = max(layer, 1)
        if sampling_rate is None:
            sampling_rate = getattr(hubert.config, "sampling_rate", None) or 16000
        config = HubertPseudoLabelerConfig(
            feature_type="hubert",
            num_clusters=num_clusters,
            sampling_rate=sampling_rate,
            encoder_config=stock_hubert_config(hubert.config, num_hidden_layers=kept_layers),
            layer=layer,
            feature_convention=feature_convention,
            normalize_input=normalize_input,
            source_model=source_model or (hubert.config.name_or_path or None),
            iteration=iteration,
        )
        labeler = cls(config)
        state = {
            key: value
            for key, value in hubert.state_dict().items()
            if not ((match := _LAYER_KEY.match(key)) and int(match.group(1)) >= kept_layers)
        }
        if not hasattr(labeler.encoder, "masked_spec_embed"):
            state.pop("masked_spec_embed", None)
        labeler.encoder.load_state_dict(state, strict=True)
        labeler.to(hubert.device)
        if centroids is not None:
            labeler.set_centroids(centroids)
        return labeler

    def set_centroids(self, centroids) -> None:
        """Store k-means centroids `(num_clusters, feature_dim)` (array-like) in the `centroids` buffer.

        Raises:
            ValueError: wrong shape.
        """
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        expected = (self.config.num_clusters, self.config.feature_dim)
        if tuple(centroids.shape) != expected:
            raise ValueError(f"Expected centroids of shape {list(expected)}. Found: {list(centroids.shape)}")
        self.centroids.copy_(centroids.to(self.centroids.device))

    # -- features and labels ----------------------------------------------------------------------------------------

    def _utterance_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(samples,)` → `(frames, feature_dim)` float32."""
        config = self.config
        if config.feature_type == "mfcc":
            return kaldi_mfcc(
                waveform,
                config.sampling_rate,
                num_ceps=config.mfcc_num_ceps,
                num_mel_bins=config.mfcc_num_mel_bins,
                frame_length_ms=config.mfcc_frame_length_ms,
                frame_shift_ms=config.mfcc_frame_shift_ms,
                num_deltas=config.mfcc_num_deltas,
            )
        return hubert_layer_features(
            self.encoder,
            waveform,
            config.layer,
            feature_convention=config.feature_convention,
            normalize_input=config.normalize_input,
        )

    @torch.no_grad()
    def extract_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features of a batch of waveforms (one utterance at a time, see the class docstring).

        Args:
            input_values: `(batch, samples)` or `(samples,)` waveform in [-1, 1].
            attention_mask: `(batch, samples)` 1 for real samples (right padding).

        Returns:
            `features (batch, frames, feature_dim)` float32 zero-padded, and `lengths (batch,)` int64.

        Raises:
            ValueError: `input_values` is not 1-D or 2-D.
        """
        if input_values.ndim == 1:
            input_values = input_values[None]
        if input_values.ndim != 2:
            raise ValueError(f"Expected `input_values` of shape (batch, samples). Found: {list(input_values.shape)}")
        if attention_mask is not None:
            sample_lengths = attention_mask.sum(-1).tolist()
        else:
            sample_lengths = [input_values.shape[1]] * input_values.shape[0]
        per_utterance = [self._utterance_features(row[:n]) for row, n in zip(input_values, sample_lengths)]
        lengths = torch.tensor([f.shape[0] for f in per_utterance], dtype=torch.long, device=input_values.device)
        features = input_values.new_zeros(
            (len(per_utterance), int(lengths.max()) if len(per_utterance) else 0, self.config.feature_dim),
            dtype=torch.float32,
        )
        for row, utterance in enumerate(per_utterance):
            features[row, : utterance.shape[0]] = utterance
        return features, lengths

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid ids of `features (..., feature_dim)` → `(...)` int64."""
        flat = features.reshape(-1, features.shape[-1])
        return nearest_centroid(flat, self.centroids).view(features.shape[:-1])

    @torch.no_grad()
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_features: bool = False,
        return_dict: bool | None = None,
    ) -> HubertPseudoLabelerOutput | tuple:
        """Cluster ids of every frame at `config.label_rate`.

        Args:
            input_values: `(batch, samples)` waveform in [-1, 1] at `config.sampling_rate` (not normalised).
            attention_mask: `(batch, samples)` 1 for real samples.
            output_features: also return the features.

        Returns:
            [`HubertPseudoLabelerOutput`]: `cluster_ids (batch, frames)` with -100 past each utterance's end.
        """
        features, lengths = self.extract_features(input_values, attention_mask)
        ids = self.assign(features)
        padding = torch.arange(ids.shape[1], device=ids.device)[None] >= lengths[:, None]
        ids = ids.masked_fill(padding, IGNORE_INDEX)
        output = HubertPseudoLabelerOutput(
            cluster_ids=ids, lengths=lengths, features=features if output_features else None
        )
        return output if return_dict is not False else output.to_tuple()
