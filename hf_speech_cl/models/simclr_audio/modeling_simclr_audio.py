"""SimCLR for raw speech with a wav2vec 2.0 encoder.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), applied to
waveforms: two augmented views of each clip → a stock `transformers.Wav2Vec2Model` → mean over valid frames (or
sampled frames) → projection head g(·) → NT-Xent loss (eq. 1) over all 2N views of the (global) batch.

Batch convention (docs/ARCHITECTURE.md): `input_values` of shape (2N, T) holds view 1 of every clip in rows 0..N-1
and view 2 in rows N..2N-1, with `attention_mask` (2N, T) marking valid samples.

This file imports only `torch`, `transformers` and its sibling configuration file: it is copied next to saved
checkpoints and must run with `trust_remote_code=True` where `hf_speech_cl` is not installed.
"""

import copy
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_simclr_audio import SimCLRAudioConfig

__all__ = [
    "NTXentOutput",
    "SimCLRAudioForPreTraining",
    "SimCLRAudioForPreTrainingOutput",
    "SimCLRAudioModel",
    "SimCLRAudioModelOutput",
    "SimCLRAudioPreTrainedModel",
    "SimCLRAudioProjectionHead",
    "nt_xent_loss",
]


# ---------------------------------------------------------------------------------------------------------------------
# NT-Xent
# ---------------------------------------------------------------------------------------------------------------------
class NTXentOutput(NamedTuple):
    """Result of [`nt_xent_loss`]: `loss` (0-d, differentiable) and `retrieval_accuracy` (0-d, no gradient)."""

    loss: torch.Tensor
    retrieval_accuracy: torch.Tensor


def _distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class _AllGatherWithGradient(torch.autograd.Function):
    """`all_gather` whose backward sums every process's gradient for the local slice (works on gloo, NCCL, ...).

    forward: `(R, D)` on each of W processes → `(W, R, D)`, identical everywhere.
    backward: the `(W, R, D)` gradient is summed over processes (`all_reduce`), and the local slice is returned.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank = torch.distributed.get_rank()
        tensor = tensor.contiguous()
        gathered = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, tensor)
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous()
        torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
        return grad[ctx.rank]


def nt_xent_loss(
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float = 0.1,
    *,
    gather_across_processes: bool = False,
) -> NTXentOutput:
    r"""
    NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, §2.1, eq. 1; reference
    implementations: google-research/simclr `objective.add_contrastive_loss`, sthalles/SimCLR `info_nce_loss`).

    The 2N rows of `cat([view1, view2])` are l2-normalised to z. For an anchor i whose positive is j (row k of
    `view1` and row k of `view2` are positives of each other),

        ℓ(i, j) = −log( exp(cos(z_i, z_j)/τ) / Σ_{k ≠ i} exp(cos(z_i, z_k)/τ) ),

    where k runs over ALL views but the anchor itself: the positive and the 2(N−1) negatives, i.e. the other views
    of BOTH sides. The loss is the mean of ℓ over the 2N anchors. Works for any N ≥ 2 (e.g. the short last batch).

    Several processes (`gather_across_processes=True` and `torch.distributed` initialised with a world size > 1):
    the anchors are the local 2N views, the candidates (positive and negatives) are the views of every process,
    gathered with `_AllGatherWithGradient`, which keeps the autograd graph (all_gather forward, all_reduce backward:
    the `GatherLayer` of SimCLR re-implementations; `torch.distributed.nn.functional.all_gather` would need
    all_to_all in its backward, which the gloo backend of CPU runs lacks). Processes may hold
    different N (sizes are exchanged first and the gathered tensors padded). Why the gradient is right: process p's
    views z_p enter its own loss L_p as anchors and candidates, and every other L_q as candidates. The backward of
    the gather sums over processes the gradient each L_q sends to z_p, so process p obtains
    Σ_q ∂L_q/∂z_p · ∂z_p/∂θ; DistributedDataParallel then averages over the W processes, which gives
    ∂/∂θ [(1/W) Σ_q L_q], the gradient of the mean of the per-process losses, i.e. of the loss over the global
    batch when every process holds the same N (as in SimCLR §2.2, where the loss is computed on the global batch).

    Args:
        view1 (`torch.Tensor` of shape `(N, D)`):
            Projections of the first view of N clips (or frames).
        view2 (`torch.Tensor` of shape `(N, D)`):
            Projections of the second view, row k the positive of row k of `view1`.
        temperature (`float`, *optional*, defaults to 0.1):
            τ > 0 dividing the cosine similarities.
        gather_across_processes (`bool`, *optional*, defaults to `False`):
            Take candidates from every process when `torch.distributed` is initialised (ignored otherwise). Every
            process must then call this function (it runs collectives).

    Returns:
        [`NTXentOutput`]: `loss` (0-d float32 tensor, the mean over the local 2N anchors) and `retrieval_accuracy`
        (0-d float32 tensor without gradient: the fraction of local anchors whose most similar candidate, self
        excluded, is their positive; 1.0 on perfectly matched views).

    Raises:
        ValueError: if the views are not 2-D tensors of the same shape, if `temperature <= 0`, or if the (global)
            batch holds fewer than 2 pairs, so that an anchor would have no negative.
    """
    if view1.dim() != 2 or view1.shape != view2.shape:
        raise ValueError(
            f"`view1` and `view2` must both have shape (N, D); got {list(view1.shape)} and {list(view2.shape)}."
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")

    n_local = view1.shape[0]
    # float32 similarities: under autocast, bf16 cosine/τ logits lose the precision the softmax needs
    z = F.normalize(torch.cat([view1, view2], dim=0).float(), dim=-1)  # (2N, D)

    world_size = _distributed_world_size() if gather_across_processes else 1
    if world_size > 1:
        rank = torch.distributed.get_rank()
        sizes = torch.tensor([n_local], device=z.device, dtype=torch.long)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world_size)]
        torch.distributed.all_gather(all_sizes, sizes)
        all_sizes = [int(s.item()) for s in all_sizes]
        max_rows = 2 * max(all_sizes)
        padded = F.pad(z, (0, 0, 0, max_rows - 2 * n_local))  # all_gather needs equal shapes: (2·max N, D)
        gathered = _AllGatherWithGradient.apply(padded)  # (W, 2·max N, D), gradients flow back
        candidates = torch.cat([g[: 2 * s] for g, s in zip(gathered, all_sizes)], dim=0)  # (2·ΣN, D)
        offset = 2 * sum(all_sizes[:rank])
        n_total = sum(all_sizes)
    else:
        candidates = z
        offset = 0
        n_total = n_local

    if n_total < 2:
        raise ValueError(
            f"NT-Xent needs at least 2 clips (pairs of views) in the batch so that every anchor has a negative; got "
            f"{n_total} (view shapes {list(view1.shape)}"
            + (f", summed over {world_size} processes)." if world_size > 1 else ").")
        )

    logits = z @ candidates.T / temperature  # (2N, 2·ΣN)
    anchors = torch.arange(2 * n_local, device=z.device)
    self_index = offset + anchors
    positive_index = offset + (anchors + n_local) % (2 * n_local)  # row k of view1 <-> row k of view2
    logits = logits.masked_fill(F.one_hot(self_index, logits.shape[1]).bool(), float("-inf"))
    loss = F.cross_entropy(logits, positive_index)
    with torch.no_grad():
        accuracy = (logits.argmax(dim=-1) == positive_index).float().mean()
    return NTXentOutput(loss=loss, retrieval_accuracy=accuracy)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SimCLRAudioModelOutput(ModelOutput):
    r"""
    Output of [`SimCLRAudioModel`] (B rows, any batch; F frames; H = `config.encoder_output_size`).

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, F, H)`):
            Last hidden state of the wav2vec 2.0 encoder.
        pooled_output (`torch.FloatTensor` of shape `(B, H)`):
            Mean of `last_hidden_state` over the valid frames of each row (the utterance embedding of SimCLR's
            "utterance" granularity); padding does not change it.
        frame_attention_mask (`torch.BoolTensor` of shape `(B, F)`):
            True on valid frames (derived from `attention_mask` by the conv strides).
        extract_features (`torch.FloatTensor` of shape `(B, F, C)`):
            Output of the conv feature encoder (C = `backbone_config.conv_dim[-1]`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            Encoder input and the output of every transformer layer, each of shape `(B, F, H)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of every layer, each of shape `(B, num_heads, F, F)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None
    frame_attention_mask: torch.BoolTensor | None = None
    extract_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SimCLRAudioForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`SimCLRAudioForPreTraining`]. N clips, 2N views; M = number of sampled frame pairs at "frame"
    granularity; E = N ("utterance") or M ("frame"); F frames; H = `config.encoder_output_size`;
    P = `config.projection_dim`.

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Total training loss (equals `nt_xent_loss`, the only component).
        nt_xent_loss (`torch.FloatTensor` of shape `()`):
            NT-Xent (SimCLR eq. 1) over the local anchors; in training mode with
            `config.gather_negatives_across_processes`, candidates come from every process.
        retrieval_accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of local anchors whose nearest candidate (cosine, self excluded) is their positive. For
            logging only (no gradient).
        projections (`torch.FloatTensor` of shape `(2E, P)`):
            Outputs of the projection head (before l2 normalisation): rows 0..E-1 view 1, rows E..2E-1 view 2.
        embeddings (`torch.FloatTensor` of shape `(2E, H)`):
            Encoder representations fed to the projection head: utterance means, or the sampled frames.
        sampled_frame_indices (`torch.LongTensor` of shape `(M, 2)`, *optional*):
            At "frame" granularity, the (clip index in 0..N-1, frame index) of each sampled pair; `None` otherwise.
        last_hidden_state (`torch.FloatTensor` of shape `(2N, F, H)`):
            Last hidden state of the encoder.
        frame_attention_mask (`torch.BoolTensor` of shape `(2N, F)`):
            True on valid frames.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            Encoder input and the output of every transformer layer, each of shape `(2N, F, H)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of every layer, each of shape `(2N, num_heads, F, F)`.
    """

    loss: torch.FloatTensor | None = None
    nt_xent_loss: torch.FloatTensor | None = None
    retrieval_accuracy: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    sampled_frame_indices: torch.LongTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    frame_attention_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------
class SimCLRAudioProjectionHead(nn.Module):
    """
    Projection head g(·) of SimCLR (§2.1, "a MLP with one hidden layer"; google-research/simclr
    `model_util.projection_head`): Linear(H → hidden) → norm → ReLU → Linear(hidden → P).
    Used only for the loss.

    Input `(E, H)`, output `(E, P)` with H = `config.encoder_output_size`, hidden =
    `config.projection_hidden_size or H`, P = `config.projection_dim`.
    """

    def __init__(self, config: SimCLRAudioConfig):
        super().__init__()
        hidden_size = config.projection_hidden_size or config.encoder_output_size
        self.dense = nn.Linear(config.encoder_output_size, hidden_size)
        if config.projection_norm == "batch_norm":
            self.norm = nn.BatchNorm1d(hidden_size)
        elif config.projection_norm == "layer_norm":
            self.norm = nn.LayerNorm(hidden_size)
        else:
            self.norm = nn.Identity()
        self.activation = nn.ReLU()
        self.output = nn.Linear(hidden_size, config.projection_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(self.norm(self.dense(embeddings))))


class SimCLRAudioPreTrainedModel(PreTrainedModel):
    """
    Shared base of the SimCLR audio models: a stock [`Wav2Vec2Model`] named `wav2vec2`, so that the encoder's
    state-dict keys are those of `Wav2Vec2ForCTC` / `Wav2Vec2ForSequenceClassification`.
    """

    config_class = SimCLRAudioConfig
    config: SimCLRAudioConfig
    base_model_prefix = "wav2vec2"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the projection head (the wav2vec 2.0 encoder initialises itself with its own `_init_weights`)."""
        std = self.config.backbone_config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def freeze_feature_encoder(self) -> None:
        """Stop gradient computation for the conv feature encoder (as in wav2vec 2.0 fine-tuning)."""
        self.wav2vec2.feature_extractor._freeze_parameters()

    def _frame_attention_mask(self, num_frames: int, attention_mask: torch.Tensor | None, batch_size: int, device):
        """(B, F) bool mask of valid frames; all True without `attention_mask`."""
        if attention_mask is None:
            return torch.ones(batch_size, num_frames, dtype=torch.bool, device=device)
        return self.wav2vec2._get_feature_vector_attention_mask(num_frames, attention_mask)

    @staticmethod
    def _masked_mean(hidden_states: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Mean of `hidden_states` (B, F, H) over the True frames of `frame_mask` (B, F) → (B, H)."""
        weights = frame_mask.to(hidden_states.dtype).unsqueeze(-1)  # (B, F, 1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def export_encoder(self, save_directory: str | os.PathLike, **save_kwargs) -> None:
        """
        Write the encoder as a stock wav2vec 2.0 checkpoint: `config.json` (the backbone `Wav2Vec2Config`,
        `architectures=["Wav2Vec2Model"]`), the `Wav2Vec2Model` weights, and a `preprocessor_config.json`
        ([`Wav2Vec2FeatureExtractor`] at `config.sampling_rate`, `do_normalize=True`, `return_attention_mask=True`).

        `Wav2Vec2ForCTC.from_pretrained(save_directory)` and `Wav2Vec2ForSequenceClassification.from_pretrained(...)`
        load it with only their new heads missing and give the same hidden states as this model's encoder. No
        custom code is written: the export loads without `trust_remote_code`.

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write (created if needed).
            **save_kwargs: Passed to [`PreTrainedModel.save_pretrained`] (e.g. `safe_serialization`).
        """
        encoder = self.wav2vec2
        original_config = encoder.config
        encoder.config = copy.deepcopy(original_config)  # save_pretrained writes architectures/dtype into it
        try:
            encoder.save_pretrained(save_directory, **save_kwargs)
        finally:
            encoder.config = original_config
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=self.config.sampling_rate,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=True,
        ).save_pretrained(save_directory)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """
        [`PreTrainedModel.save_pretrained`], with an `auto_map` naming BOTH model classes of this file so that
        `AutoModel` and `AutoModelForPreTraining` load any SimCLR audio checkpoint with `trust_remote_code=True`.
        """
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        module_name = self.__class__.__module__.rsplit(".", 1)[-1]
        for model_class in (SimCLRAudioModel, SimCLRAudioForPreTraining):
            if model_class._auto_class is not None:
                auto_map[model_class._auto_class] = f"{module_name}.{model_class.__name__}"
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class SimCLRAudioModel(SimCLRAudioPreTrainedModel):
    """
    The SimCLR audio encoder without projection head: a stock wav2vec 2.0 [`Wav2Vec2Model`] plus the utterance
    embedding (mean over valid frames) that SimCLR trains. Loads the encoder of a [`SimCLRAudioForPreTraining`]
    checkpoint (the projection head is dropped).
    """

    def __init__(self, config: SimCLRAudioConfig):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config.backbone_config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SimCLRAudioModelOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(B, T)`):
                Waveforms at `config.sampling_rate`, zero-mean unit-variance per row (as `Wav2Vec2FeatureExtractor`
                returns them), zero-padded.
            attention_mask (`torch.LongTensor` of shape `(B, T)`, *optional*):
                1 on valid samples, 0 on padding. Without it every sample is valid.
            **kwargs: `output_hidden_states`, `output_attentions`, ... passed to [`Wav2Vec2Model.forward`].

        Returns:
            [`SimCLRAudioModelOutput`].
        """
        outputs = self.wav2vec2(input_values, attention_mask=attention_mask, **kwargs)
        hidden_states = outputs.last_hidden_state  # (B, F, H)
        frame_mask = self._frame_attention_mask(
            hidden_states.shape[1], attention_mask, hidden_states.shape[0], hidden_states.device
        )  # (B, F)
        return SimCLRAudioModelOutput(
            last_hidden_state=hidden_states,
            pooled_output=self._masked_mean(hidden_states, frame_mask),
            frame_attention_mask=frame_mask,
            extract_features=outputs.extract_features,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class SimCLRAudioForPreTraining(SimCLRAudioPreTrainedModel):
    """
    SimCLR pretraining of a wav2vec 2.0 encoder: encoder → utterance mean or sampled frames → projection head →
    NT-Xent (see [`nt_xent_loss`]). The loss is computed in `forward`.
    """

    def __init__(self, config: SimCLRAudioConfig):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config.backbone_config)
        self.projection_head = SimCLRAudioProjectionHead(config)
        self.post_init()

    def _sample_frames(self, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Sample up to `config.frame_num_samples` valid frames per clip, uniformly without replacement (torch's
        global RNG on the mask's device). `frame_mask` (N, F) bool → (clip index (M,), frame index (M,)).
        """
        num_clips, num_frames = frame_mask.shape
        num_valid = frame_mask.sum(dim=-1, keepdim=True)  # (N, 1)
        scores = torch.rand(frame_mask.shape, device=frame_mask.device).masked_fill(~frame_mask, 2.0)
        order = scores.argsort(dim=-1)  # valid frames first, in random order
        k = num_frames if self.config.frame_num_samples is None else min(self.config.frame_num_samples, num_frames)
        chosen = order[:, :k]  # (N, k)
        keep = torch.arange(k, device=frame_mask.device).unsqueeze(0) < num_valid  # (N, k)
        clip_index = torch.arange(num_clips, device=frame_mask.device).unsqueeze(1).expand(-1, k)
        return clip_index[keep], chosen[keep]

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SimCLRAudioForPreTrainingOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(2N, T)`):
                Two augmented views of N clips: view 1 of clip k in row k, view 2 in row N + k (the output of
                `hf_speech_cl.augment.SimCLRAugment`), zero-padded.
            attention_mask (`torch.LongTensor` of shape `(2N, T)`, *optional*):
                1 on valid samples, 0 on padding.
            **kwargs: `output_hidden_states`, `output_attentions`, ... passed to [`Wav2Vec2Model.forward`].

        Returns:
            [`SimCLRAudioForPreTrainingOutput`].

        Raises:
            ValueError: if `input_values` is not (2N, T) with an even number of rows; at "frame" granularity if the
                two views of a clip have different valid lengths; if the batch holds fewer than 2 clips (frames).
        """
        if input_values.dim() != 2 or input_values.shape[0] % 2 != 0:
            raise ValueError(
                "`input_values` must have shape (2N, T): view 1 of N clips in rows 0..N-1 and view 2 in rows "
                f"N..2N-1; got shape {list(input_values.shape)}."
            )
        num_clips = input_values.shape[0] // 2
        if self.config.granularity == "frame" and attention_mask is not None:
            lengths = attention_mask.sum(dim=-1)
            if not torch.equal(lengths[:num_clips], lengths[num_clips:]):
                raise ValueError(
                    "granularity='frame' pairs the same time step of the two views, so both views of a clip must "
                    f"have the same valid length; got view-1 lengths {lengths[:num_clips].tolist()} and view-2 "
                    f"lengths {lengths[num_clips:].tolist()} (disable speed perturbation for frame granularity)."
                )

        outputs = self.wav2vec2(input_values, attention_mask=attention_mask, **kwargs)
        hidden_states = outputs.last_hidden_state  # (2N, F, H)
        frame_mask = self._frame_attention_mask(
            hidden_states.shape[1], attention_mask, hidden_states.shape[0], hidden_states.device
        )  # (2N, F)

        sampled_frame_indices = None
        if self.config.granularity == "utterance":
            embeddings = self._masked_mean(hidden_states, frame_mask)  # (2N, H)
        else:
            clip_index, frame_index = self._sample_frames(frame_mask[:num_clips])  # (M,), (M,)
            embeddings = torch.cat(
                [hidden_states[clip_index, frame_index], hidden_states[clip_index + num_clips, frame_index]], dim=0
            )  # (2M, H)
            sampled_frame_indices = torch.stack([clip_index, frame_index], dim=-1)  # (M, 2)

        projections = self.projection_head(embeddings)  # (2E, P)
        num_pairs = projections.shape[0] // 2
        nt_xent = nt_xent_loss(
            projections[:num_pairs],
            projections[num_pairs:],
            self.config.nt_xent_temperature,
            # only in training: an evaluation run on some of the processes must not wait in a collective
            gather_across_processes=self.config.gather_negatives_across_processes and self.training,
        )
        return SimCLRAudioForPreTrainingOutput(
            loss=nt_xent.loss,
            nt_xent_loss=nt_xent.loss,
            retrieval_accuracy=nt_xent.retrieval_accuracy,
            projections=projections,
            embeddings=embeddings,
            sampled_frame_indices=sampled_frame_indices,
            last_hidden_state=hidden_states,
            frame_attention_mask=frame_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


SimCLRAudioModel.register_for_auto_class("AutoModel")
SimCLRAudioForPreTraining.register_for_auto_class("AutoModelForPreTraining")
