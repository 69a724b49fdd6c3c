#!/usr/bin/env python
"""wav2vec 2.0 pretraining with the stock `transformers.Wav2Vec2ForPreTraining` (Baevski et al. 2020).

Masked frames of the Transformer's output must pick their own quantized latent among K distractors (contrastive
loss, per masked frame), plus a diversity loss that keeps the G codebooks in use. Compared with transformers'
example script: resumable checkpoints, both encoder variants (group-norm BASE and stable layer-norm), masks and
negatives that respect padding, loss normalised by the masked frames of all processes, and checks for the known
failure modes (codebook collapse, NaN losses from clips too short to mask).

With no arguments it pretrains the `tiny` encoder on the offline `synthetic-librispeech` train split in under
10 minutes on 2 CPU cores. The output folder loads with `Wav2Vec2ForCTC.from_pretrained(out)` and
`Wav2Vec2ForSequenceClassification.from_pretrained(out)`.

Examples:
    accelerate launch recipes/pretrain_wav2vec2.py
    accelerate launch recipes/pretrain_wav2vec2.py --model_size base --feat_extract_norm group
    accelerate launch recipes/pretrain_wav2vec2.py --dataset_name openslr/librispeech_asr --dataset_config clean \\
        --train_split train.100 --streaming --model_size base --mixed_precision bf16
    torchrun --nproc_per_node 2 recipes/pretrain_wav2vec2.py
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import HfArgumentParser, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

from hf_speech_cl.data import DataArguments, DataCollatorForWav2Vec2Pretraining, build_pretraining_dataloaders
from hf_speech_cl.presets import ENCODER_PRESETS, encoder_preset
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
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue from a wav2vec 2.0 checkpoint (folder or Hub id) instead of a fresh preset."},
    )
    model_size: str = field(
        default="tiny", metadata={"help": f"Encoder preset for a fresh model: {', '.join(ENCODER_PRESETS)}."}
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
    max_gumbel_temperature: float = field(default=2.0, metadata={"help": "Gumbel-softmax temperature at update 0."})
    min_gumbel_temperature: float = field(default=0.5, metadata={"help": "Floor of the Gumbel-softmax temperature."})
    gumbel_temperature_decay: float = field(
        default=0.999995, metadata={"help": "Factor applied to the temperature per update (paper §4.2)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated `field=value` pairs applied to the Wav2Vec2Config of a fresh model."},
    )


def build_model(model_args: Wav2Vec2Arguments) -> Wav2Vec2ForPreTraining:
    objective = {
        key: getattr(model_args, key)
        for key in ("mask_time_prob", "mask_time_length", "num_negatives", "diversity_loss_weight")
        if getattr(model_args, key) is not None
    }
    if model_args.model_name_or_path:
        return Wav2Vec2ForPreTraining.from_pretrained(model_args.model_name_or_path, **objective)
    kwargs = encoder_preset(model_args.model_size)
    if model_args.feat_extract_norm is not None:
        if model_args.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"--feat_extract_norm must be group or layer, got {model_args.feat_extract_norm!r}")
        kwargs["feat_extract_norm"] = model_args.feat_extract_norm
        kwargs["do_stable_layer_norm"] = model_args.feat_extract_norm == "layer"
    kwargs.update(WAV2VEC2_PRETRAINING_DEFAULTS.get(model_args.model_size, WAV2VEC2_PRETRAINING_DEFAULTS["base"]))
    kwargs.update(objective)
    config = Wav2Vec2Config(**kwargs)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    return Wav2Vec2ForPreTraining(config)


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((Wav2Vec2Arguments, DataArguments, PretrainingArguments), description=__doc__)
    parser.set_defaults(
        output_dir="outputs/wav2vec2-tiny",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_train_crop_s=4.0,
        save_steps=100,
        logging_steps=10,
    )
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    accelerator = make_accelerator(args)
    model = build_model(model_args)
    config = model.config
    feature_extractor = Wav2Vec2FeatureExtractor(
        sampling_rate=data_args.sampling_rate, do_normalize=True, return_attention_mask=True
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
        hparams={"model_size": model_args.model_size, "feat_extract_norm": config.feat_extract_norm},
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
            "frames over all processes."
        ),
        recipe="recipes/pretrain_wav2vec2.py",
        dataset=data_args.dataset_name,
        train_split=data_args.train_split,
        dataset_note=data_args.dataset_note,
        architecture=(
            f"`Wav2Vec2ForPreTraining` (`{model_args.model_size}`, feat_extract_norm={config.feat_extract_norm}): "
            f"{config.num_hidden_layers} Transformer layers of {config.hidden_size} units, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters."
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
        },
        tags=["wav2vec2", "contrastive-learning"],
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
