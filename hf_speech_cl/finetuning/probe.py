"""The frozen-encoder probe of the SUPERB protocol (Yang et al. 2021, §3): what trains and what stays fixed.

SUPERB freezes the pretrained model ("upstream"), mixes all its hidden layers with learned softmax weights and
trains a small task network ("downstream") on the mixture. `load_pretrained_for_task(..., probe=True)` builds it:
`CTCProbeForCTC` for ASR (weighted sum → BiLSTM → CTC, SUPERB ASR), and for utterance classification the stock
`*ForSequenceClassification` with `use_weighted_layer_sum=True` and `freeze_base_model()` (weighted sum → linear
projection → mean pooling → linear, the SUPERB KS/ER downstream up to its hidden size).

`keep_encoder_in_eval` is the step callback that keeps a frozen base model in eval mode (no dropout, layer drop or
SpecAugment in the upstream, as a frozen SUPERB upstream runs) although the training loop puts the whole model in
training mode; `CTCProbeForCTC` does it itself.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .ctc import TransformerFreezer

__all__ = ["keep_encoder_in_eval", "prepare_for_finetuning", "trainable_parameter_names"]


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients (what an optimizer built now would update)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def keep_encoder_in_eval(model: nn.Module, update: int) -> None:
    """Step callback `cb(model, update)`: put `model.base_model` in eval mode if none of its parameters trains."""
    base = model.base_model
    if base is not model and not any(param.requires_grad for param in base.parameters()):
        base.eval()


def prepare_for_finetuning(
    model: nn.Module, *, probe: bool, freeze_feature_encoder: bool, freeze_transformer_updates: int
) -> list[Callable[[nn.Module, int], None]]:
    """Freeze what must not train and return the step callbacks for the shared loop.

    Probe: the encoder is already frozen (`load_pretrained_for_task(probe=True)`); `keep_encoder_in_eval` keeps it in
    eval mode. Fine-tuning: `model.freeze_feature_encoder()` if asked, and a `TransformerFreezer` for the first
    `freeze_transformer_updates` updates. Call it before `accelerator.prepare`.
    """
    if probe:
        return [keep_encoder_in_eval]
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    return [TransformerFreezer(model, freeze_transformer_updates)] if freeze_transformer_updates else []
