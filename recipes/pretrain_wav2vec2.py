#!/usr/bin/env python
"""wav2vec 2.0 pretraining with the stock `transformers.Wav2Vec2ForPreTraining` (Baevski et al. 2020).

Masked frames of the Transformer's output must pick their own quantized latent among K distractors (contrastive
loss, per masked frame), plus a diversity loss that keeps the G codebooks in use. Compared with transformers'
example script: resumable checkpoints, both encoder variants (group-norm BASE and stable layer-norm), masks and
negatives that respect padding, loss normalised by the masked frames of all processes, and checks for the known
failure modes (codebook collapse, NaN losses from clips too short to mask).

With no arguments it pretrains the `tiny` encoder on the offline `synthetic-librispeech` train split in under
10 minutes on 2 CPU cores. The output folder loads with `Wav2Vec2ForCTC.from_pretrained(out)` and
`Wav2Vec2ForSequenceClassification.from_pretrained(out)`; `phone_probe.json` (and the card) hold a linear
frame-level phone probe of its frozen layers on the test split, beside MFCC and a random encoder
(`hf_speech_cl.finetuning.phone_probe`; `--phone_probe false` skips it).

Continued pretraining (`--init_from PATH_OR_HUB_ID`, old name `--model_name_or_path`): every weight of a
`Wav2Vec2ForPreTraining` checkpoint (e.g. facebook/wav2vec2-base), its own quantizer and projections included
(`Wav2Vec2ForPreTraining.from_pretrained`). A checkpoint without them (stock `Wav2Vec2Model`, fine-tuned
`Wav2Vec2ForCTC` such as facebook/wav2vec2-base-960h) is refused with an error saying so; no quantizer is
re-initialised. The architecture and codebooks are the checkpoint's: `--model_size`, `--feat_extract_norm` or
`--config_overrides` that change them are an error naming the fields. The objective is the pretraining one (mask
probability 0.65, span 10, distractors and diversity weight of the preset the checkpoint's architecture matches, the
paper's BASE values otherwise; the flags override), not the values in the checkpoint's config (stock configs carry
fine-tuning ones, e.g. mask_time_prob 0.05); the Gumbel temperature starts at its floor, where the checkpoint's own
schedule ended (`--max_gumbel_temperature` to change). The card says what the model started from.

Examples:
    accelerate launch recipes/pretrain_wav2vec2.py
    accelerate launch recipes/pretrain_wav2vec2.py --model_size base --feat_extract_norm group
    accelerate launch recipes/pretrain_wav2vec2.py --dataset_name openslr/librispeech_asr --dataset_config clean \\
        --train_split train.100 --streaming --model_size base --mixed_precision bf16
    accelerate launch recipes/pretrain_wav2vec2.py --init_from facebook/wav2vec2-base \\
        --dataset_name openslr/librispeech_asr --dataset_config clean --train_split train.100 --max_steps 20000
    torchrun --nproc_per_node 2 recipes/pretrain_wav2vec2.py
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import HfArgumentParser, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

from hf_speech_cl.continued_pretraining import (
    ENCODER_FIELDS,
    QUANTIZER_FIELDS,
    InitReport,
    check_fits,
    checkpoint_config,
    checkpoint_normalizes,
    load_wav2vec2_for_continued_pretraining,
    matching_preset,
)
from hf_speech_cl.data import DataArguments, DataCollatorForWav2Vec2Pretraining, build_pretraining_dataloaders
from hf_speech_cl.finetuning import PhoneProbe, PhoneProbeArguments
from hf_speech_cl.presets import ENCODER_PRESETS, default_model_size, encoder_preset
from hf_speech_cl.training import PretrainingArguments, finalize_pretraining, make_accelerator, train
from hf_speech_cl.wav2vec2_pretraining import (
    WAV2VEC2_PRETRAINING_DEFAULTS,
    Wav2Vec2MaskSampler,
    Wav2Vec2PretrainingMonitor,
    check_pretraining_setup,
    wav2vec2_loss_normalizer,
)

logger = logging.getLogger("pretrain_wav2vec2")


@dataclass
class Wav2Vec2Arguments:
    init_from: str | None = field(
        default=None,
        metadata={
            "aliases": ["--model_name_or_path"],
            "help": "Continue pretraining from this Wav2Vec2ForPreTraining checkpoint (folder or Hub id, e.g. "
            "facebook/wav2vec2-base) with its own quantizer and projections, instead of a fresh preset. A checkpoint "
            "without them (Wav2Vec2Model, Wav2Vec2ForCTC) is an error. `--model_name_or_path` is the old name of "
            "this flag (same meaning).",
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": f"Encoder preset for a fresh model: {', '.join(ENCODER_PRESETS)}. Default: cpu on a machine without CUDA, gpu with it (`hf_speech_cl.presets.default_model_size`); "
            "with --init_from the checkpoint's architecture (given, it must be the checkpoint's)."
        },
    )
    feat_extract_norm: str | None = field(
        default=None,
        metadata={
            "help": "group: the original BASE feature encoder (group norm in the first conv layer, post-LN "
            "Transformer); layer: layer norm in every conv layer and a pre-LN Transformer (do_stable_layer_norm). "
            "Default: the preset's (group for base, layer for tiny/small)."
        },
    )
    mask_time_prob: float | None = field(
        default=None, metadata={"help": "Probability of a frame starting a mask span (paper: 0.65)."}
    )
    mask_time_length: int | None = field(default=None, metadata={"help": "Mask span length in frames (paper: 10)."})
    num_negatives: int | None = field(
        default=None, metadata={"help": "Distractors K per masked frame (paper: 100; tiny preset: 30)."}
    )
    diversity_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight alpha of the diversity loss (paper: 0.1)."}
    )
    max_gumbel_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Gumbel-softmax temperature at update 0. Default: 2.0 (paper), with --init_from "
            "--min_gumbel_temperature (where the checkpoint's schedule ended)."
        },
    )
    min_gumbel_temperature: float = field(default=0.5, metadata={"help": "Floor of the Gumbel-softmax temperature."})
    gumbel_temperature_decay: float = field(
        default=0.999995, metadata={"help": "Factor applied to the temperature per update (paper §4.2)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated `field=value` pairs applied to the Wav2Vec2Config (with --init_from: to the "
            "checkpoint's; fields of the architecture or codebooks cannot change)."
        },
    )

    def __post_init__(self):
        if self.feat_extract_norm not in (None, "group", "layer"):
            raise ValueError(f"--feat_extract_norm must be group or layer, got {self.feat_extract_norm!r}")
        if self.model_size is not None and self.model_size not in ENCODER_PRESETS:
            raise ValueError(f"--model_size must be one of {', '.join(ENCODER_PRESETS)}, got {self.model_size!r}")
        if self.max_gumbel_temperature is None:
            self.max_gumbel_temperature = self.min_gumbel_temperature if self.init_from else 2.0


#: Objective fields of `WAV2VEC2_PRETRAINING_DEFAULTS` (not the codebook sizes, which a checkpoint fixes).
OBJECTIVE_FIELDS = ("mask_time_prob", "mask_time_length", "num_negatives", "diversity_loss_weight")


def model_size_of(model_args: Wav2Vec2Arguments) -> str | None:
    """`--model_size`, else the preset the --init_from checkpoint's architecture is (None: none), else the machine's
    default (`default_model_size`: cpu, or gpu with CUDA)."""
    if model_args.model_size or not model_args.init_from:
        return model_args.model_size or default_model_size()
    return matching_preset(checkpoint_config(model_args.init_from, ("wav2vec2",), "wav2vec 2.0 pretraining"))


def build_config(model_args: Wav2Vec2Arguments) -> Wav2Vec2Config:
    """The Wav2Vec2Config trained: a preset's (fresh model) or, with --init_from, the checkpoint's with the
    pretraining objective.

    Raises:
        ValueError: with --init_from, a preset, --feat_extract_norm or override that changes the checkpoint's
            architecture or codebooks (names the fields), or a checkpoint that is not wav2vec 2.0.
    """
    flags = {key: getattr(model_args, key) for key in OBJECTIVE_FIELDS if getattr(model_args, key) is not None}
    source = model_args.init_from
    size = model_size_of(model_args)
    defaults = WAV2VEC2_PRETRAINING_DEFAULTS.get(size, WAV2VEC2_PRETRAINING_DEFAULTS["base"])
    if source:  # the checkpoint's config, its own codebooks; the pretraining objective
        checkpoint = checkpoint_config(source, ("wav2vec2",), "wav2vec 2.0 pretraining")
        kwargs = encoder_preset(model_args.model_size) if model_args.model_size else {}
        kwargs.update({k: defaults[k] for k in (*OBJECTIVE_FIELDS, "contrastive_logits_temperature")})
    else:
        kwargs = {**encoder_preset(size), **defaults}
    if model_args.feat_extract_norm is not None:
        kwargs["feat_extract_norm"] = model_args.feat_extract_norm
        kwargs["do_stable_layer_norm"] = model_args.feat_extract_norm == "layer"
    kwargs.update(flags)
    if source:
        config = Wav2Vec2Config.from_pretrained(source)
        config.update(kwargs)
    else:
        config = Wav2Vec2Config(**kwargs)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    if source:
        asked_by = " and ".join(
            f"--{name} {getattr(model_args, name)}"
            for name in ("model_size", "feat_extract_norm", "config_overrides")
            if getattr(model_args, name)
        )
        check_fits(
            source,
            checkpoint,
            config,
            fields=ENCODER_FIELDS + QUANTIZER_FIELDS,
            asked_by=asked_by or "the config asked for",
        )
    return config


def build_model(
    model_args: Wav2Vec2Arguments, config: Wav2Vec2Config
) -> tuple[Wav2Vec2ForPreTraining, InitReport | None]:
    """A fresh `Wav2Vec2ForPreTraining(config)`, or the --init_from checkpoint's (with what was new in it)."""
    if model_args.init_from:
        return load_wav2vec2_for_continued_pretraining(model_args.init_from, config)
    return Wav2Vec2ForPreTraining(config), None


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(
        (Wav2Vec2Arguments, DataArguments, PretrainingArguments, PhoneProbeArguments), description=__doc__
    )
    parser.set_defaults(
        output_dir="outputs/wav2vec2",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_train_crop_s=4.0,
        save_steps=100,
        logging_steps=10,
    )
    model_args, data_args, args, probe_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    config = build_config(model_args)  # a checkpoint that does not fit is refused before anything is written
    normalize = checkpoint_normalizes(model_args.init_from) if model_args.init_from else None
    size = model_size_of(model_args)

    accelerator = make_accelerator(args)
    model, init_report = build_model(model_args, config)
    if init_report is not None and accelerator.is_main_process:
        logger.info(init_report.summary())
    config = model.config
    feature_extractor = Wav2Vec2FeatureExtractor(
        sampling_rate=data_args.sampling_rate,
        do_normalize=True if normalize is None else normalize,  # as the checkpoint saw its input, if it says
        return_attention_mask=True,
    )
    started_from = (
        f" Continued pretraining: every weight, the quantizer and projections included, from `{model_args.init_from}` "
        f"({init_report.summary()})."
        if init_report is not None
        else ""
    )
    check_pretraining_setup(model, int(data_args.min_duration_s * feature_extractor.sampling_rate))
    collator = DataCollatorForWav2Vec2Pretraining(model=model, feature_extractor=feature_extractor)
    with accelerator.main_process_first():
        train_loader, eval_loader = build_pretraining_dataloaders(
            data_args,
            feature_extractor,
            config,
            batch_size=args.per_device_train_batch_size,
            seed=args.seed,
            collator=collator,
        )
    monitor = Wav2Vec2PretrainingMonitor(
        config,
        max_temperature=model_args.max_gumbel_temperature,
        min_temperature=model_args.min_gumbel_temperature,
        temperature_decay=model_args.gumbel_temperature_decay,
        warmup_steps=args.num_warmup_steps,
    )
    result = train(
        model,
        train_loader,
        args,
        accelerator=accelerator,
        sampling_rate=feature_extractor.sampling_rate,
        batch_transform=Wav2Vec2MaskSampler(collator),  # masks from (seed, update, process, micro-batch)
        step_callbacks=[monitor.step],
        metrics_fn=monitor.metrics,
        loss_normalizer=wav2vec2_loss_normalizer,
        eval_dataloader=eval_loader,
        # layer drop (Wav2Vec2Config default 0.1) skips whole layers: DDP must expect parameters without gradient
        find_unused_parameters=config.layerdrop > 0,
        hparams={"model_size": size, "feat_extract_norm": config.feat_extract_norm, "init_from": model_args.init_from},
    )
    out = finalize_pretraining(
        accelerator=accelerator,
        model=model,
        result=result,
        args=args,
        savables=(feature_extractor,),
        objective_name="wav2vec 2.0 (masked contrastive prediction of quantized latents)",
        objective_description=(
            f"Spans of {config.mask_time_length} frames, starting at a fraction {config.mask_time_prob} of frames, "
            "are masked before the Transformer; each masked output must identify its own quantized latent among "
            f"{config.num_negatives} distractors from the same clip (cosine similarity / {config.contrastive_logits_temperature}, "
            f"Baevski et al. 2020 eq. 3), plus a diversity loss (weight {config.diversity_loss_weight}) on the "
            f"{config.num_codevector_groups} x {config.num_codevectors_per_group} Gumbel-softmax codebooks "
            f"(temperature {model_args.max_gumbel_temperature} -> {model_args.min_gumbel_temperature}, "
            f"x{model_args.gumbel_temperature_decay} per update). Losses are normalised by the number of masked "
            "frames over all processes." + started_from
        ),
        recipe="recipes/pretrain_wav2vec2.py",
        dataset=data_args.dataset_name,
        train_split=data_args.train_split,
        dataset_note=data_args.dataset_note,
        architecture=(
            f"`Wav2Vec2ForPreTraining` ({f'`{size}`, ' if size else ''}feat_extract_norm={config.feat_extract_norm}): "
            f"{config.num_hidden_layers} Transformer layers of {config.hidden_size} units, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters."
            + (f" Initialised from `{model_args.init_from}`." if model_args.init_from else "")
        ),
        usage=(
            "from transformers import Wav2Vec2ForCTC\n"
            f"model = Wav2Vec2ForCTC.from_pretrained('{args.hub_model_id or args.output_dir}', vocab_size=32)"
        ),
        finetune_command=(
            f"accelerate launch recipes/finetune_asr.py --model_name_or_path {args.output_dir} --train_minutes 10"
        ),
        citation="Baevski, Zhou, Mohamed, Auli. wav2vec 2.0: A Framework for Self-Supervised Learning of Speech "
        "Representations. NeurIPS 2020. arXiv:2006.11477",
        hyperparameters={
            "mask_time_prob": config.mask_time_prob,
            "mask_time_length": config.mask_time_length,
            "num_negatives": config.num_negatives,
            "diversity_loss_weight": config.diversity_loss_weight,
            "crop (s)": data_args.max_train_crop_s,
            **({"initialised from": f"`{model_args.init_from}` (all weights)"} if model_args.init_from else {}),
        },
        tags=["wav2vec2", "contrastive-learning"],
        phone_probe=PhoneProbe(probe_args, data_args, seed=args.seed, device=accelerator.device),
    )
    first, last = result.first_metrics, result.last_metrics
    if monitor.collapsed:
        logger.warning("The codebook collapsed during training (see the warning above); the model may be useless.")
    accelerator.print(
        f"done: {result.global_step} updates in {result.wall_time_s:.0f} s, "
        f"{result.audio_seconds / 3600:.2f} h of audio seen, {result.audio_seconds_per_second:.1f} audio-s/s; "
        f"contrastive loss {first.get('contrastive_loss', float('nan')):.3f} -> "
        f"{last.get('contrastive_loss', float('nan')):.3f}, codevector perplexity "
        f"{first.get('codevector_perplexity', float('nan')):.1f} -> {last.get('codevector_perplexity', float('nan')):.1f}"
        f"; model in {out}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
