"""Continued pretraining from a stock checkpoint (`--init_from` of the HuBERT and wav2vec 2.0 recipes).

The encoder of the checkpoint is kept, every weight of it: a config that does not fit (another conv layout, hidden
size, depth, codebook size, ...) is an error naming the fields, never a silent re-initialisation. What is new is
said in one log line, counted by module (`InitReport.summary`):

    continued from facebook/hubert-base-ls960: 211 tensors loaded; newly initialised: final_proj (2 tensors),
    label_embs_concat (1); not used: lm_head (2 tensors)

- HuBERT (`load_hubert_for_continued_pretraining`): any checkpoint with a `HubertModel` encoder (stock `HubertModel`,
  `HubertForCTC`, our `HubertForPreTraining`) gives its encoder to a `HubertForPreTraining` with a NEW prediction
  head (`final_proj`, `label_embs_concat`): the labels are new k-means clusters of one of its layers, whose ids mean
  nothing to a head the checkpoint may carry, so K may differ from the checkpoint's.
- wav2vec 2.0 (`load_wav2vec2_for_continued_pretraining`): a `Wav2Vec2ForPreTraining` checkpoint continues with its
  own quantizer and projections (`quantizer`, `project_q`, `project_hid`). A checkpoint without them (stock
  `Wav2Vec2Model` / `Wav2Vec2ForCTC`) is refused: a new quantizer on top of a trained encoder would first have to
  relearn targets the encoder was not trained to predict, which is fresh pretraining in disguise.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, HubertModel, PreTrainedConfig, Wav2Vec2Config, Wav2Vec2ForPreTraining

from .models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig, stock_hubert_config
from .presets import ENCODER_PRESETS

__all__ = [
    "ENCODER_FIELDS",
    "HUBERT_HEAD",
    "QUANTIZER_FIELDS",
    "WAV2VEC2_PRETRAINING_MODULES",
    "InitReport",
    "check_fits",
    "checkpoint_config",
    "checkpoint_normalizes",
    "count_by_module",
    "encoder_architecture",
    "load_hubert_for_continued_pretraining",
    "load_wav2vec2_for_continued_pretraining",
    "matching_preset",
]

logger = logging.getLogger(__name__)

#: Config fields that fix the encoder's weights (their shapes, or what they compute): a continued model must have the
#: checkpoint's values. Common to `HubertConfig` and `Wav2Vec2Config` except `feat_proj_layer_norm` (HuBERT) and the
#: adapter fields (wav2vec 2.0); a field a config lacks is not compared.
ENCODER_FIELDS = (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_extract_activation",
    "feat_proj_layer_norm",
    "do_stable_layer_norm",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "conv_pos_batch_norm",
    "layer_norm_eps",
    "add_adapter",
    "adapter_kernel_size",
    "adapter_stride",
    "num_adapter_layers",
    "output_hidden_size",
    "adapter_attn_dim",
)
#: wav2vec 2.0's quantizer "vocabulary" and projections: continued with the checkpoint's own, so fixed too.
QUANTIZER_FIELDS = ("num_codevector_groups", "num_codevectors_per_group", "codevector_dim", "proj_codevector_dim")
#: `HubertForPreTraining`'s prediction head: new in every continued run.
HUBERT_HEAD = ("final_proj", "label_embs_concat")
#: What `Wav2Vec2ForPreTraining` adds to a `Wav2Vec2Model`: the checkpoint must have it.
WAV2VEC2_PRETRAINING_MODULES = ("quantizer", "project_q", "project_hid")
#: The learned mask vector: absent from checkpoints saved without masking (e.g. exported for fine-tuning with
#: `mask_time_prob=0`); newly initialised then, as the masked frames' input is learned anew in a few updates.
MASK_EMBEDDING = "masked_spec_embed"
_BASE_PREFIXES = ("hubert.", "wav2vec2.")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _values(config: PreTrainedConfig | Mapping[str, Any]) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def encoder_architecture(config: PreTrainedConfig | Mapping[str, Any], fields: Iterable[str] = ENCODER_FIELDS):
    """The fields of `fields` that `config` has, lists for tuples (so configs read from JSON compare equal)."""
    values = _values(config)
    return {name: _plain(values[name]) for name in fields if name in values}


def matching_preset(config: PreTrainedConfig | Mapping[str, Any]) -> str | None:
    """The `hf_speech_cl.presets` name whose every field `config` has (e.g. `base` for facebook/hubert-base-ls960),
    or None."""
    values = _values(config)
    for name, preset in ENCODER_PRESETS.items():
        if all(name_ in values and _plain(values[name_]) == _plain(v) for name_, v in preset.items()):
            return name
    return None


def check_fits(
    source: str,
    checkpoint: PreTrainedConfig | Mapping[str, Any],
    asked: PreTrainedConfig | Mapping[str, Any],
    *,
    fields: Iterable[str] = ENCODER_FIELDS,
    asked_by: str = "the config asked for",
) -> None:
    """Refuse a config whose architecture differs from the checkpoint's.

    Args:
        source: the checkpoint's name, for the message.
        checkpoint / asked: configs (or dicts) to compare on `fields` (a field either lacks is skipped).
        asked_by: what made `asked`, for the message (e.g. "--model_size small").

    Raises:
        ValueError: naming every field that differs, with both values.
    """
    have, want = encoder_architecture(checkpoint, fields), encoder_architecture(asked, fields)
    differ = {name: (have[name], want[name]) for name in have if name in want and have[name] != want[name]}
    if differ:
        listed = "; ".join(f"{name}: {a!r} in the checkpoint, {b!r} asked" for name, (a, b) in differ.items())
        raise ValueError(
            f"--init_from {source} does not fit {asked_by} ({listed}). Continued pretraining keeps every weight of the "
            "checkpoint's encoder, so these cannot change: leave them out (the checkpoint's values are used) or train "
            "a fresh model without --init_from."
        )


def checkpoint_config(source: str, model_types: tuple[str, ...], what: str) -> PreTrainedConfig:
    """`AutoConfig.from_pretrained(source)` (after `import hf_speech_cl`, which registers `hubert_pretraining`).

    Raises:
        ValueError: its `model_type` is not one of `model_types` (names the type found and those expected).
    """
    config = AutoConfig.from_pretrained(source)
    if config.model_type not in model_types:
        raise ValueError(
            f"--init_from {source} is a {config.model_type!r} checkpoint (model_type); {what} continues from "
            f"model_type {' or '.join(repr(t) for t in model_types)}."
        )
    return config


def checkpoint_normalizes(source: str) -> bool | None:
    """`do_normalize` of the checkpoint's feature extractor (`preprocessor_config.json`), None when it ships none:
    the continued model should see its input normalised as the checkpoint did."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        return bool(Wav2Vec2FeatureExtractor.from_pretrained(source).do_normalize)
    except (OSError, ValueError):
        return None


def _module_of(key: str) -> str:
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.split(".", 1)[0]


def count_by_module(keys: Iterable[str]) -> str:
    """`"final_proj (2 tensors), label_embs_concat (1)"`: tensors per top-level module (the base model's prefix
    `hubert.` / `wav2vec2.` dropped), in first-seen order of sorted keys; `"nothing"` for none."""
    counts = Counter(_module_of(k) for k in sorted(keys))
    if not counts:
        return "nothing"
    parts = [f"{name} ({n})" for name, n in counts.items()]
    first, n = next(iter(counts.items()))
    parts[0] = f"{first} ({n} tensor{'s' if n != 1 else ''})"
    return ", ".join(parts)


@dataclass
class InitReport:
    """Where a continued model's weights came from.

    Attributes:
        source: the checkpoint (`--init_from`).
        loaded: number of tensors taken from it.
        newly_initialised: parameter/buffer names initialised afresh.
        not_used: names in the checkpoint left out (task heads: `lm_head`, a previous `final_proj`, ...).
    """

    source: str
    loaded: int
    newly_initialised: list[str] = field(default_factory=list)
    not_used: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `continued from X: N tensors loaded; newly initialised: final_proj (2 tensors), ...`."""
        line = (
            f"continued from {self.source}: {self.loaded} tensors loaded; newly initialised: "
            f"{count_by_module(self.newly_initialised)}"
        )
        if self.not_used:
            line += f"; not used: {count_by_module(self.not_used)}"
        return line


def _not_loaded(info: Mapping[str, Any]) -> set[str]:
    """Missing and size-mismatched keys of a `from_pretrained(..., output_loading_info=True)` report."""
    mismatched = {k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())}
    return set(info["missing_keys"]) | mismatched


def _refuse_missing_encoder_weights(source: str, missing: Iterable[str]) -> None:
    missing = sorted(missing)
    if missing:
        raise ValueError(
            f"--init_from {source} lacks encoder weights the model needs: {count_by_module(missing)} (e.g. "
            f"{missing[0]}). They would be initialised at random; refusing. Is it the checkpoint of another "
            "architecture?"
        )


def load_hubert_for_continued_pretraining(
    source: str, config: HubertPretrainingConfig, **from_pretrained_kwargs: Any
) -> tuple[HubertForPreTraining, InitReport]:
    """A `HubertForPreTraining(config)` whose encoder holds the weights of the encoder in `source`, and a new head.

    `source` is a folder or Hub id of any checkpoint with a HuBERT encoder: stock `HubertModel`, `HubertForCTC`,
    `HubertForSequenceClassification` or our `HubertForPreTraining` (its head is not used: see the module docstring).

    Raises:
        ValueError: `config`'s architecture differs from the checkpoint's (`check_fits`), or the checkpoint lacks
            an encoder weight (other than the mask embedding).
    """
    check_fits(source, AutoConfig.from_pretrained(source), config)
    encoder, info = HubertModel.from_pretrained(
        source, config=stock_hubert_config(config), output_loading_info=True, **from_pretrained_kwargs
    )
    missing = _not_loaded(info)
    _refuse_missing_encoder_weights(source, missing - {MASK_EMBEDDING})
    model = HubertForPreTraining(config)
    model.hubert.load_state_dict(encoder.state_dict(), strict=True)
    head = [name for name, _ in model.named_parameters() if name.split(".", 1)[0] in HUBERT_HEAD]
    report = InitReport(
        source=str(source),
        loaded=len(encoder.state_dict()) - len(missing),
        newly_initialised=head + sorted(f"hubert.{k}" for k in missing),
        not_used=sorted(info["unexpected_keys"]),
    )
    return model, report


def load_wav2vec2_for_continued_pretraining(
    source: str, config: Wav2Vec2Config, **from_pretrained_kwargs: Any
) -> tuple[Wav2Vec2ForPreTraining, InitReport]:
    """`Wav2Vec2ForPreTraining.from_pretrained(source, config=config)` with its own quantizer and projections.

    Raises:
        ValueError: `config`'s architecture or codebooks differ from the checkpoint's (`check_fits`); the checkpoint
            has no quantizer/projections (a stock `Wav2Vec2Model` or `Wav2Vec2ForCTC`), or lacks encoder weights.
    """
    check_fits(source, AutoConfig.from_pretrained(source), config, fields=ENCODER_FIELDS + QUANTIZER_FIELDS)
    model, info = Wav2Vec2ForPreTraining.from_pretrained(
        source, config=config, output_loading_info=True, **from_pretrained_kwargs
    )
    missing = _not_loaded(info)
    without = [m for m in WAV2VEC2_PRETRAINING_MODULES if any(_module_of(k) == m for k in missing)]
    if without:
        architectures = ", ".join(getattr(model.config, "architectures", None) or []) or "an encoder-only"
        raise ValueError(
            f"--init_from {source} has no {', '.join(without)} weights ({architectures} checkpoint): continuing "
            "wav2vec 2.0 pretraining needs the checkpoint's own quantizer and projections, i.e. a "
            "Wav2Vec2ForPreTraining checkpoint (facebook/wav2vec2-base, facebook/wav2vec2-large-lv60, one of "
            "recipes/pretrain_wav2vec2.py's outputs); fine-tuned checkpoints (facebook/wav2vec2-base-960h) and "
            "stock Wav2Vec2Model exports have dropped them. A new quantizer is not initialised here: train a fresh "
            "model (no --init_from), or fine-tune this checkpoint directly."
        )
    _refuse_missing_encoder_weights(source, {k for k in missing if _module_of(k) != MASK_EMBEDDING})
    report = InitReport(
        source=str(source),
        loaded=len(model.state_dict()) - len(missing),
        newly_initialised=sorted(missing),
        not_used=sorted(info["unexpected_keys"]),
    )
    return model, report
