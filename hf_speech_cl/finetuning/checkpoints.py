"""One function from "what to start from" to a task model: `load_pretrained_for_task(path, task, **head_kwargs)`.

`path` may name:

- nothing (`None`, `""` or `"none"`): a randomly initialised wav2vec 2.0 encoder of preset `model_size`
  (`hf_speech_cl.presets.encoder_preset`), the no-pretraining baseline;
- a checkpoint of our SimCLR recipe (`model_type="simclr_audio"`): its `encoder/` folder (stock wav2vec 2.0, written
  by `recipes/pretrain_simclr.py`) if present, else `SimCLRAudioForPreTraining.export_encoder` into a temporary folder;
- a checkpoint of our HuBERT recipe (`model_type="hubert_pretraining"`): `HubertForPreTraining.export_encoder`
  (a stock `HubertModel`) into a temporary folder;
- a stock checkpoint of a speech encoder, local or a Hub id when the Hub is reachable: `Wav2Vec2ForPreTraining`
  from our wav2vec 2.0 recipe, `facebook/wav2vec2-base`, `facebook/hubert-base-ls960`, WavLM, data2vec-audio...
  (every model type transformers has both a CTC and an audio-classification head for);
- a checkpoint already fine-tuned for the task (continue training; its head is kept when it fits, see below);
- a CTC probe (`model_type="ctc_probe"`) for `task="ctc"`.

The task model is `AutoModelForCTC` / `AutoModelForAudioClassification` of the encoder's type with the encoder's
weights, or with `probe=True` the frozen-encoder probe of the SUPERB protocol: `CTCProbeForCTC` for CTC, the stock
classifier with `use_weighted_layer_sum=True` and a frozen base model for classification.

Heads that do not fit are errors unless `reinit_head=True`: a CTC head whose `vocab_size` differs from the new
vocabulary, a classification head whose label names differ from the dataset's (the same names in another order are
fine: the checkpoint's ids are kept and the data is mapped to them; read `model.config.label2id` afterwards).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    PreTrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_CTC_MAPPING_NAMES,
)

from ..data.audio import receptive_field_samples
from ..models.ctc_probe import CTCProbeConfig, CTCProbeForCTC
from ..models.ctc_probe import register as register_ctc_probe
from ..presets import ENCODER_PRESETS, default_model_size, encoder_preset

__all__ = [
    "check_output_is_not_the_checkpoint",
    "NO_PRETRAINING",
    "SPEECH_ENCODER_TYPES",
    "TASKS",
    "checkpoint_model_type",
    "encoder_min_input_samples",
    "load_feature_extractor",
    "load_pretrained_for_task",
    "resolve_encoder_checkpoint",
]

logger = logging.getLogger(__name__)

TASKS = ("ctc", "audio-classification")
NO_PRETRAINING = (None, "", "none", "None")
#: Stock model types with both a CTC and an audio-classification head in transformers that read raw waveforms
#: (`input_values`): wav2vec2, hubert, wavlm, data2vec-audio, ... (`wav2vec2-bert` reads mel features instead).
SPEECH_ENCODER_TYPES: tuple[str, ...] = tuple(
    sorted((set(MODEL_FOR_CTC_MAPPING_NAMES) & set(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES)) - {"wav2vec2-bert"})
)
_OUR_PRETRAINING_TYPES = ("simclr_audio", "hubert_pretraining")
_PROBE_FIELDS = frozenset(f for f in CTCProbeConfig.__dataclass_fields__ if f.startswith(("probe_", "ctc_")))


def _config_dict(path: str) -> dict[str, Any]:
    local = Path(path)
    if local.is_dir() and not (local / "config.json").is_file():
        raise ValueError(f"{path!r} is a folder without config.json: not a model checkpoint")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as error:
        raise ValueError(
            f"Cannot read the config of {path!r} ({error}). Give a local checkpoint folder, a Hub model id (with the "
            "Hub reachable), or `none` for a randomly initialised encoder."
        ) from error
    if "model_type" not in config_dict:
        raise ValueError(f"The config of {path!r} has no `model_type`; cannot tell what model it is")
    return config_dict


def checkpoint_model_type(path: str | None) -> str | None:
    """The `model_type` in the config of checkpoint `path` (None for no pretraining).

    Raises:
        ValueError: unreadable config or one without `model_type`.
    """
    return None if path in NO_PRETRAINING else _config_dict(str(path))["model_type"]


def check_output_is_not_the_checkpoint(output_dir: str | os.PathLike, path: str | None) -> None:
    """Refuse to fine-tune into the folder of the checkpoint being fine-tuned: the final save would replace the
    pretrained weights and card, and the run would try to resume from the pretraining checkpoints.

    Raises:
        ValueError: `output_dir` and `path` are the same folder.
    """
    if path and os.path.isdir(path) and Path(output_dir).resolve() == Path(path).resolve():
        raise ValueError(
            f"--output_dir {output_dir} is the checkpoint being fine-tuned (--model_name_or_path): the fine-tuned "
            "model would replace it. Pick another --output_dir."
        )


def resolve_encoder_checkpoint(path: str, workdir: str | os.PathLike) -> tuple[str, str]:
    """A folder or Hub id holding a stock checkpoint for `path`, and its original `model_type`.

    Our pretraining types are exported to stock checkpoints in `workdir` (see the module docstring); stock and
    fine-tuned checkpoints are returned as they are.

    Raises:
        ValueError: unreadable config, or a model type that is not a speech encoder (lists the supported ones).
    """
    model_type = _check_supported(_config_dict(path)["model_type"], path)
    if model_type == "simclr_audio":
        encoder_dir = Path(path) / "encoder"
        if (encoder_dir / "config.json").is_file():
            return str(encoder_dir), model_type
        from ..models.simclr_audio import SimCLRAudioForPreTraining

        SimCLRAudioForPreTraining.from_pretrained(path).export_encoder(workdir)
        return str(workdir), model_type
    if model_type == "hubert_pretraining":
        from ..models.hubert_pretraining import HubertForPreTraining

        HubertForPreTraining.from_pretrained(path).export_encoder(workdir)
        return str(workdir), model_type
    return path, model_type


def _check_supported(model_type: str, path: str) -> str:
    if model_type in (*_OUR_PRETRAINING_TYPES, *SPEECH_ENCODER_TYPES, CTCProbeConfig.model_type):
        return model_type
    raise ValueError(
        f"{path!r} is a {model_type!r} model, not a speech encoder this recipe can fine-tune. Supported: our "
        f"pretraining checkpoints ({', '.join(_OUR_PRETRAINING_TYPES)}), stock {', '.join(SPEECH_ENCODER_TYPES)}, "
        "or `none` for a randomly initialised encoder."
    )


def _with_new_head(path: str, config: PreTrainedConfig, model_class: Any) -> PreTrainedModel:
    """A task model whose encoder weights come from `path` and whose head is freshly initialised."""
    encoder = AutoModel.from_pretrained(path, config=config)
    model = model_class.from_config(config)
    model.base_model.load_state_dict(encoder.state_dict())
    return model


def _split_probe_kwargs(head_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    probe = {k: v for k, v in head_kwargs.items() if k in _PROBE_FIELDS or k in ("vocab_size", "pad_token_id")}
    encoder = {k: v for k, v in head_kwargs.items() if k not in probe}
    return probe, encoder


def _check_ctc_head(path: str, config: PreTrainedConfig, head_kwargs: dict[str, Any], reinit_head: bool) -> bool:
    """Whether a CTC head in the checkpoint must be replaced (True) or kept (False)."""
    has_head = any(arch.endswith("ForCTC") for arch in (config.architectures or []))
    wanted = head_kwargs.get("vocab_size")
    if not has_head or wanted is None or wanted == config.vocab_size:
        return False
    if reinit_head:
        logger.warning(
            "Replacing the CTC head of %s (vocab_size %d) by a new one of %d", path, config.vocab_size, wanted
        )
        return True
    raise ValueError(
        f"{path!r} has a CTC head of vocab_size={config.vocab_size}, but the vocabulary has {wanted} tokens. "
        "Fine-tune with the checkpoint's own tokenizer (its vocab.json is used when present), or pass "
        "--reinit_head to train a new output layer."
    )


def _check_label_head(
    path: str, config: PreTrainedConfig, head_kwargs: dict[str, Any], reinit_head: bool
) -> tuple[bool, dict[str, Any]]:
    """(replace the head?, head kwargs to apply) for a classification checkpoint."""
    has_head = any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or []))
    wanted = head_kwargs.get("label2id")
    if not has_head or wanted is None:
        return False, head_kwargs
    existing = {str(name): int(i) for name, i in (config.label2id or {}).items()}
    if set(existing) == set(wanted):
        if existing != {k: int(v) for k, v in wanted.items()}:
            logger.info("Keeping the label ids of %s; the data is mapped to them", path)
        kept = dict(head_kwargs)
        kept["label2id"] = existing
        kept["id2label"] = {i: name for name, i in existing.items()}
        return False, kept
    if reinit_head:
        logger.warning(
            "Replacing the classification head of %s (labels %s) by one for %s", path, sorted(existing), sorted(wanted)
        )
        return True, head_kwargs
    raise ValueError(
        f"{path!r} is a classifier for the labels {sorted(existing)}, but the data has the labels {sorted(wanted)}. "
        "Pass --reinit_head to train a new classification head on its encoder."
    )


def load_pretrained_for_task(
    path: str | None,
    task: str,
    *,
    model_size: str | None = None,
    probe: bool = False,
    reinit_head: bool = False,
    **head_kwargs: Any,
) -> PreTrainedModel:
    """The model to fine-tune for `task`, starting from `path` (see the module docstring for what `path` may be).

    Args:
        path: checkpoint folder, Hub id, or `None`/`"none"` for no pretraining.
        task: `"ctc"` or `"audio-classification"`.
        model_size: encoder preset when `path` is none (`hf_speech_cl.presets`; None: `default_model_size()`).
        probe: build the frozen-encoder probe instead of the fully fine-tunable model.
        reinit_head: replace a task head of the checkpoint that does not fit (see the module docstring).
        head_kwargs: config fields for the task model: CTC `vocab_size`, `pad_token_id`, `ctc_loss_reduction`,
            `ctc_zero_infinity`, SpecAugment (`mask_time_prob`, `mask_feature_prob`, ...), dropouts, `layerdrop`;
            classification `label2id`, `id2label`, `classifier_proj_size`, `use_weighted_layer_sum`; probe fields
            (`probe_hidden_size`, `probe_num_layers`, ... of `CTCProbeConfig`).

    Returns:
        A `PreTrainedModel` in training mode. With `probe=True` only the probe's parameters require gradients.

    Raises:
        ValueError: unknown task or preset; a checkpoint that is not a speech encoder; a head that does not fit.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    register_ctc_probe()
    model_class = AutoModelForCTC if task == "ctc" else AutoModelForAudioClassification
    if task == "audio-classification" and probe:
        head_kwargs = {**head_kwargs, "use_weighted_layer_sum": True}

    if path in NO_PRETRAINING:
        model_size = model_size or default_model_size()
        if model_size not in ENCODER_PRESETS:
            raise ValueError(f"Unknown --model_size {model_size!r}; choose one of {sorted(ENCODER_PRESETS)}")
        if task == "ctc" and probe:
            probe_kwargs, encoder_kwargs = _split_probe_kwargs(head_kwargs)
            encoder = AutoModel.from_config(Wav2Vec2Config(**encoder_preset(model_size, **encoder_kwargs)))
            model = CTCProbeForCTC.from_encoder(encoder, **probe_kwargs)
        else:
            model = model_class.from_config(Wav2Vec2Config(**encoder_preset(model_size, **head_kwargs)))
    else:
        with tempfile.TemporaryDirectory(prefix="hf_speech_cl-encoder-") as workdir:
            model = _load_checkpoint(str(path), task, model_class, workdir, probe, reinit_head, head_kwargs)
    if task == "audio-classification" and probe:
        model.freeze_base_model()
    model.train()
    return model


def _load_checkpoint(
    path: str,
    task: str,
    model_class: Any,
    workdir: str,
    probe: bool,
    reinit_head: bool,
    head_kwargs: dict[str, Any],
) -> PreTrainedModel:
    source, model_type = resolve_encoder_checkpoint(path, workdir)
    if model_type == CTCProbeConfig.model_type:
        if task != "ctc":
            raise ValueError(f"{path!r} is a CTC probe; fine-tune its encoder checkpoint for {task!r} instead")
        probe_kwargs, _ = _split_probe_kwargs(head_kwargs)
        config = AutoConfig.from_pretrained(source)
        replace = _check_ctc_head(path, config, probe_kwargs, reinit_head)
        if replace:
            encoder = CTCProbeForCTC.from_pretrained(source).encoder
            return CTCProbeForCTC.from_encoder(encoder, **probe_kwargs)
        return CTCProbeForCTC.from_pretrained(source, **probe_kwargs)

    config = AutoConfig.from_pretrained(source)
    if task == "ctc" and probe:
        probe_kwargs, encoder_kwargs = _split_probe_kwargs(head_kwargs)
        config.update(encoder_kwargs)
        encoder = AutoModel.from_pretrained(source, config=config)
        return CTCProbeForCTC.from_encoder(encoder, **probe_kwargs)
    if task == "ctc":
        replace = _check_ctc_head(path, config, head_kwargs, reinit_head)
    else:
        replace, head_kwargs = _check_label_head(path, config, head_kwargs, reinit_head)
    config.update(head_kwargs)
    if replace:
        return _with_new_head(source, config, model_class)
    return model_class.from_pretrained(source, config=config)


def encoder_min_input_samples(path: str | None, model_size: str | None = None, num_frames: int = 1) -> int:
    """Fewest input samples for which the encoder `path` (or preset `model_size`) emits `num_frames` frames.

    Read from the checkpoint's config alone (the nested `backbone_config` of a SimCLR checkpoint, `encoder_config`
    of a CTC probe), before any weights are loaded, so the data can be filtered before the model exists.

    Raises:
        ValueError: unknown preset, unreadable config, or a config without `conv_kernel`/`conv_stride`.
    """
    if path in NO_PRETRAINING:
        model_size = model_size or default_model_size()
        if model_size not in ENCODER_PRESETS:
            raise ValueError(f"Unknown --model_size {model_size!r}; choose one of {sorted(ENCODER_PRESETS)}")
        geometry = ENCODER_PRESETS[model_size]
    else:
        config_dict = _config_dict(str(path))
        _check_supported(config_dict["model_type"], str(path))
        geometry = config_dict.get("backbone_config") or config_dict.get("encoder_config") or config_dict
    if "conv_kernel" not in geometry or "conv_stride" not in geometry:
        raise ValueError(f"The config of {path!r} has no conv_kernel/conv_stride: not a wav2vec 2.0-style encoder")
    field = receptive_field_samples(geometry["conv_kernel"], geometry["conv_stride"])
    return field + (num_frames - 1) * math.prod(geometry["conv_stride"])


def load_feature_extractor(path: str | None, sampling_rate: int) -> Wav2Vec2FeatureExtractor:
    """The feature extractor saved with checkpoint `path` (or its SimCLR `encoder/` folder), else a new one.

    A new one is `Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, do_normalize=True,
    return_attention_mask=True)`: per-utterance zero-mean unit-variance inputs, as wav2vec 2.0 fine-tuning uses.

    Raises:
        ValueError: if the checkpoint's extractor expects another sampling rate than `sampling_rate` (both quoted).
    """
    extractor = None
    if path not in NO_PRETRAINING:
        for candidate in (str(path), str(Path(str(path)) / "encoder")):
            try:
                extractor = AutoFeatureExtractor.from_pretrained(candidate)
                break
            except (OSError, ValueError, TypeError):
                continue
    if extractor is None:
        return Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, do_normalize=True, return_attention_mask=True)
    if extractor.sampling_rate != sampling_rate:
        raise ValueError(
            f"The checkpoint {path!r} expects audio at {extractor.sampling_rate} Hz but --sampling_rate is "
            f"{sampling_rate}: pass --sampling_rate {extractor.sampling_rate}"
        )
    return extractor
