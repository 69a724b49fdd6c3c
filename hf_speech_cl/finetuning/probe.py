"""The frozen-encoder probe of the SUPERB protocol (Yang et al. 2021, §3): what trains and what stays fixed.

SUPERB freezes the pretrained model ("upstream"), mixes all its hidden layers with learned softmax weights and
trains a small task network ("downstream") on the mixture. `load_pretrained_for_task(..., probe=True)` builds it:
`CTCProbeForCTC` for ASR (weighted sum → BiLSTM → CTC, SUPERB ASR), and for utterance classification the stock
`*ForSequenceClassification` with `use_weighted_layer_sum=True` and `freeze_base_model()` (weighted sum → linear
projection → mean pooling → linear, the SUPERB KS/ER downstream up to its hidden size).

`parameter_summary` is the one log line of what trains: parameter counts by module, trainable and frozen.

`keep_encoder_in_eval` is the step callback that keeps a frozen base model in eval mode (no dropout, layer drop or
SpecAugment in the upstream, as a frozen SUPERB upstream runs) although the training loop puts the whole model in
training mode; `CTCProbeForCTC` does it itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from ..training import PretrainingArguments
from .ctc import TransformerFreezer

logger = logging.getLogger(__name__)

__all__ = [
    "format_count",
    "keep_encoder_in_eval",
    "parameter_groups",
    "parameter_summary",
    "prepare_for_finetuning",
    "trainable_parameter_names",
]


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients (what an optimizer built now would update)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def parameter_groups(model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Parameter counts (elements) by module, as `(trainable, frozen)` dicts `{dotted module name: count}`.

    The groups are the coarsest modules that are wholly trainable or wholly frozen: a top-level module (`lm_head`,
    `wav2vec2`) is one group unless it holds both kinds, in which case its children are grouped the same way
    (`wav2vec2.feature_extractor` frozen, `wav2vec2.encoder` trainable), down to single parameters
    (`wav2vec2.masked_spec_embed`). Groups are in the order of `model.named_parameters()`; a parameter shared by two
    names counts once.
    """
    params = [(name.split("."), param) for name, param in model.named_parameters()]
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}

    def split(prefix: list[str], members: list[tuple[list[str], nn.Parameter]]) -> None:
        kinds = {param.requires_grad for _, param in members}
        if len(kinds) == 1 and prefix:
            (trainable if kinds.pop() else frozen)[".".join(prefix)] = sum(p.numel() for _, p in members)
            return
        children: dict[str, list[tuple[list[str], nn.Parameter]]] = {}
        for parts, param in members:
            children.setdefault(parts[len(prefix)], []).append((parts, param))
        for child, child_members in children.items():
            split([*prefix, child], child_members)

    split([], params)
    return trainable, frozen


def format_count(count: int) -> str:
    """A parameter count for people: `812`, `8.2 k`, `4.9 M`, `1.3 B` (two significant digits from 1 000 on)."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.2g} {unit}" if count < 10 * scale else f"{count / scale:.0f} {unit}"
    return str(count)


def parameter_summary(model: nn.Module) -> str:
    """One line of what trains, by module (`parameter_groups`), e.g. `"4.9 M of 5.5 M parameters trainable:
    lm_head 8.2 k, wav2vec2.encoder 4.9 M; frozen: wav2vec2.feature_extractor 0.6 M"`, for the recipes' log
    instead of every parameter name."""
    trainable, frozen = parameter_groups(model)

    def listed(groups: dict[str, int]) -> str:
        return ", ".join(f"{name} {format_count(count)}" for name, count in groups.items()) or "none"

    total = sum(trainable.values()) + sum(frozen.values())
    return (
        f"{format_count(sum(trainable.values()))} of {format_count(total)} parameters trainable: {listed(trainable)}; "
        f"frozen: {listed(frozen)}"
    )


def keep_encoder_in_eval(model: nn.Module, update: int) -> None:
    """Step callback `cb(model, update)`: put `model.base_model` in eval mode if none of its parameters trains."""
    base = model.base_model
    if base is not model and not any(param.requires_grad for param in base.parameters()):
        base.eval()


def prepare_for_finetuning(
    model: nn.Module,
    *,
    probe: bool,
    freeze_feature_encoder: bool,
    freeze_transformer_updates: int,
    training_args: PretrainingArguments | None = None,
) -> list[Callable[[nn.Module, int], None]]:
    """Freeze what must not train and return the step callbacks for the shared loop.

    Probe: the encoder is already frozen (`load_pretrained_for_task(probe=True)`); `keep_encoder_in_eval` keeps it in
    eval mode. Fine-tuning: `model.freeze_feature_encoder()` if asked, and a `TransformerFreezer` for the first
    `freeze_transformer_updates` updates; with early stopping (`training_args.early_stopping_patience`) no
    evaluation of those frozen updates counts towards the patience (`training_args.early_stopping_min_steps` is
    raised to `freeze_transformer_updates + 1`: the evaluation at update N has seen frozen updates only): a best
    reached with only the output layer trained says nothing about when full fine-tuning stops improving. Call it
    before `accelerator.prepare`.
    """
    if (
        training_args is not None
        and training_args.early_stopping_patience is not None
        and not probe
        and freeze_transformer_updates >= training_args.early_stopping_min_steps
    ):
        # the evaluation at update N (--freeze_transformer_updates) still sees a model of frozen updates only
        logger.info(
            "Early stopping counts evaluations after update %d, when the encoder has trained "
            "(--freeze_transformer_updates; --early_stopping_min_steps was %d)",
            freeze_transformer_updates,
            training_args.early_stopping_min_steps,
        )
        training_args.early_stopping_min_steps = freeze_transformer_updates + 1
    if probe:
        return [keep_encoder_in_eval]
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    return [TransformerFreezer(model, freeze_transformer_updates)] if freeze_transformer_updates else []
