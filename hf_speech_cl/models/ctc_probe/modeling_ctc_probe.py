"""The CTC probe model: frozen encoder → learned weighted sum of all hidden layers → BiLSTM/linear head → CTC.

Imports only `torch` and `transformers` (the `models/` wall): `save_pretrained` copies this file and its sibling
configuration next to the weights, so `AutoModelForCTC.from_pretrained(dir, trust_remote_code=True)` and
`pipeline("automatic-speech-recognition", model=dir, trust_remote_code=True)` load a probe without `hf_speech_cl`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutput

from .configuration_ctc_probe import CTCProbeConfig

__all__ = ["CTCProbeForCTC", "weighted_layer_sum"]


def weighted_layer_sum(
    hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor], layer_weights: torch.Tensor, layer_norm: bool = False
) -> torch.Tensor:
    """Mix hidden layers with softmax-normalised weights (s3prl `Featurizer._weighted_sum`, SUPERB §3).

    Args:
        hidden_states: `L` tensors of shape (batch, frames, hidden).
        layer_weights: (L,) unnormalised weights (softmax is applied here).
        layer_norm: normalise each layer over its last dimension first (no learned affine), as
            `Featurizer(normalize=True)`.

    Returns:
        (batch, frames, hidden): `sum_l softmax(w)_l * h_l`.

    Raises:
        ValueError: if the number of layers and of weights differ.
    """
    if len(hidden_states) != layer_weights.numel():
        raise ValueError(
            f"Got {len(hidden_states)} hidden states but {layer_weights.numel()} layer weights; they must match."
        )
    stacked = torch.stack(tuple(hidden_states), dim=0)  # (L, B, T, H)
    if layer_norm:
        stacked = nn.functional.layer_norm(stacked, stacked.shape[-1:])
    weights = nn.functional.softmax(layer_weights, dim=-1).to(stacked.dtype)
    return (weights.view(-1, 1, 1, 1) * stacked).sum(dim=0)


class CTCProbePreTrainedModel(PreTrainedModel):
    config_class = CTCProbeConfig
    base_model_prefix = "encoder"
    main_input_name = "input_values"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CTCProbeForCTC):
            init.constant_(module.layer_weights, 1.0 / module.layer_weights.numel())


class CTCProbeForCTC(CTCProbePreTrainedModel):
    """A frozen speech encoder with a trainable SUPERB-style ASR probe (see [`CTCProbeConfig`]).

    Forward: `input_values` (batch, samples) → encoder hidden states (L+1 of shape (batch, frames, hidden)) →
    `weighted_layer_sum` → `probe_num_layers` bidirectional LSTM layers over the valid frames (packed, so padding
    never leaks into the backward direction) → dropout → linear → `logits` (batch, frames, vocab_size). With
    `labels` the CTC loss is computed exactly as `Wav2Vec2ForCTC` does it (blank = `pad_token_id`, labels -100 and
    blank ignored, frame counts from `attention_mask`).

    The trainable parameters are `layer_weights`, `head` and `lm_head`; with `config.freeze_encoder` (default) the
    encoder's parameters have `requires_grad=False` and the encoder stays in eval mode (`train()` is overridden).

    Build one on a pretrained encoder with `CTCProbeForCTC.from_encoder(encoder, vocab_size=..., pad_token_id=...)`.
    """

    def __init__(self, config: CTCProbeConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config)
        hidden = config.encoder_config.hidden_size
        self.layer_weights = nn.Parameter(torch.full((config.num_encoder_layers,), 1.0 / config.num_encoder_layers))
        if config.probe_num_layers > 0:
            self.head = nn.LSTM(
                input_size=hidden,
                hidden_size=config.probe_hidden_size,
                num_layers=config.probe_num_layers,
                dropout=config.probe_dropout if config.probe_num_layers > 1 else 0.0,
                bidirectional=True,
                batch_first=True,
            )
            head_out = 2 * config.probe_hidden_size
        else:
            self.head = None
            head_out = hidden
        self.dropout = nn.Dropout(config.probe_dropout)
        self.lm_head = nn.Linear(head_out, config.vocab_size)
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, **config_kwargs) -> CTCProbeForCTC:
        """A probe on top of (a copy of the weights of) `encoder`, a stock base model such as `Wav2Vec2Model`.

        Args:
            encoder: the pretrained encoder; its `config` becomes `encoder_config` and its state dict is loaded.
            config_kwargs: the other `CTCProbeConfig` fields (`vocab_size`, `pad_token_id`, `probe_hidden_size`...).

        Raises:
            ValueError: if `encoder` is not a base model `AutoModel` would build from its config.
        """
        config = CTCProbeConfig(encoder_config=encoder.config.to_dict(), **config_kwargs)
        model = cls(config)
        if type(model.encoder) is not type(encoder):
            raise ValueError(
                f"The encoder must be the base model of its config ({type(model.encoder).__name__}), got "
                f"{type(encoder).__name__}; pass `model.base_model` of a task model."
            )
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], then `freeze_encoder()` if `config.freeze_encoder`: loading
        materialises fresh parameters, which would otherwise all require gradients again."""
        model = super().from_pretrained(*args, **kwargs)
        if model.config.freeze_encoder:
            model.freeze_encoder()
        return model

    def freeze_encoder(self) -> None:
        """Stop gradients to every encoder parameter and keep the encoder in eval mode."""
        for param in self.encoder.parameters():
            param.requires_grad = False
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def _get_feat_extract_output_lengths(self, input_lengths: torch.LongTensor | int):
        """Frames the encoder outputs for `input_lengths` samples (delegates to the encoder's conv arithmetic)."""
        return self.encoder._get_feat_extract_output_lengths(input_lengths)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, samples)`): normalised waveforms.
            attention_mask (`torch.LongTensor` of shape `(batch_size, samples)`, *optional*): 1 on real samples.
            labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*): character ids, padded
                with -100 (or the blank id).

        Returns:
            `CausalLMOutput` with `loss` (scalar, if `labels`) and `logits` (batch, frames, vocab_size).

        Raises:
            ValueError: if a label is >= `vocab_size`.
        """
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(f"Label values must be < vocab_size={self.config.vocab_size}, got {int(labels.max())}")
        frozen = self.config.freeze_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            outputs = self.encoder(input_values, attention_mask=attention_mask, output_hidden_states=True)
        hidden = weighted_layer_sum(outputs.hidden_states, self.layer_weights, self.config.probe_layer_norm)
        batch, frames, _ = hidden.shape  # hidden: (B, T, H)
        if attention_mask is not None:
            lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(torch.long).clamp(1, frames)
        else:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=hidden.device)
        if self.head is not None:
            packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed, _ = self.head(packed)
            hidden, _ = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True, total_length=frames)
        logits = self.lm_head(self.dropout(hidden))  # (B, T, V)

        loss = None
        if labels is not None:
            labels_mask = (labels >= 0) & (labels != self.config.pad_token_id)
            target_lengths = labels_mask.sum(-1)
            flattened_targets = labels.masked_select(labels_mask)
            log_probs = nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            with torch.backends.cudnn.flags(enabled=False):
                loss = nn.functional.ctc_loss(
                    log_probs,
                    flattened_targets,
                    lengths,
                    target_lengths,
                    blank=self.config.pad_token_id,
                    reduction=self.config.ctc_loss_reduction,
                    zero_infinity=self.config.ctc_zero_infinity,
                )
        return CausalLMOutput(loss=loss, logits=logits)


CTCProbeForCTC.register_for_auto_class("AutoModelForCTC")
