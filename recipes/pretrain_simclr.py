#!/usr/bin/env python
"""SimCLR pretraining of a wav2vec 2.0-architecture speech encoder (NT-Xent over two augmented views).

With no arguments it pretrains the `tiny` encoder on the offline `synthetic-librispeech` train split (built on
first use) in under 10 minutes on 2 CPU cores, and leaves in `--output_dir`:

- the SimCLR checkpoint (`AutoModel.from_pretrained(out)` after `import hf_speech_cl`, or with
  `trust_remote_code=True` without it), its feature extractor and a model card (`README.md`);
- `encoder/`: the encoder alone as a stock wav2vec 2.0 checkpoint for `Wav2Vec2ForCTC.from_pretrained(out/encoder)`;
- `checkpoint-*/`: resumable training state. Rerunning the same command continues from the newest one;
- `phone_probe.json`: a linear frame-level phone probe of the encoder's frozen layers on the test split, beside MFCC
  and a random encoder (`hf_speech_cl.finetuning.phone_probe`; also in the card; `--phone_probe false` skips it).

Examples:
    accelerate launch recipes/pretrain_simclr.py
    accelerate launch recipes/pretrain_simclr.py --granularity frame --output_dir outputs/simclr-frame
    accelerate launch recipes/pretrain_simclr.py --dataset_name openslr/librispeech_asr --dataset_config clean \\
        --train_split train.100 --eval_split validation --streaming --model_size base --mixed_precision bf16
    torchrun --nproc_per_node 2 recipes/pretrain_simclr.py      # two CPU processes (gloo); negatives gathered
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import HfArgumentParser, Wav2Vec2FeatureExtractor

from hf_speech_cl.augment import SimCLRAugment
from hf_speech_cl.continued_pretraining import matching_preset
from hf_speech_cl.data import DataArguments, build_pretraining_dataloaders
from hf_speech_cl.finetuning import PhoneProbe, PhoneProbeArguments
from hf_speech_cl.models.simclr_audio import SimCLRAudioConfig, SimCLRAudioForPreTraining
from hf_speech_cl.presets import ENCODER_PRESETS, default_model_size, encoder_preset
from hf_speech_cl.training import PretrainingArguments, finalize_pretraining, make_accelerator, train

logger = logging.getLogger("pretrain_simclr")


@dataclass
class SimCLRArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue from a SimCLR checkpoint (folder or Hub id) instead of a fresh `--model_size`."},
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": f"Encoder preset for a fresh model: {', '.join(ENCODER_PRESETS)}. Default: cpu on a machine without CUDA, gpu with it (`hf_speech_cl.presets.default_model_size`); tiny for quick "
            "checks."
        },
    )
    granularity: str = field(
        default="utterance",
        metadata={
            "help": "utterance: one embedding per clip (mean over valid frames), classic SimCLR. frame: positives "
            "are the same time step of the two views (speed perturbation is then off)."
        },
    )
    projection_dim: int = field(default=128, metadata={"help": "Output size of the projection head."})
    nt_xent_temperature: float = field(default=0.1, metadata={"help": "NT-Xent temperature tau (SimCLR eq. 1)."})
    layerdrop: float = field(
        default=0.0,
        metadata={
            "help": "Probability of skipping each Transformer layer of the encoder per update (LayerDrop; SimCLR "
            "uses none, wav2vec 2.0 BASE 0.05). Works on several processes: DDP is then told to expect unused "
            "parameters."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated `field=value` pairs applied to SimCLRAudioConfig, e.g. augmentation "
            "probabilities/strengths: 'noise_prob=0.5,speed_prob=0.3'. See SimCLRAudioConfig's docstring."
        },
    )


def build_model(model_args: SimCLRArguments) -> SimCLRAudioForPreTraining:
    if model_args.model_name_or_path:
        return SimCLRAudioForPreTraining.from_pretrained(model_args.model_name_or_path)
    config = SimCLRAudioConfig(
        # a dict is merged over SimCLRAudioConfig's backbone defaults (no SpecAugment: the views are augmented
        # already; LayerDrop only with --layerdrop, and then `train` lets DDP find the unused parameters)
        backbone_config={**encoder_preset(model_args.model_size), "layerdrop": model_args.layerdrop},
        granularity=model_args.granularity,
        projection_dim=model_args.projection_dim,
        nt_xent_temperature=model_args.nt_xent_temperature,
    )
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    return SimCLRAudioForPreTraining(config)


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(
        (SimCLRArguments, DataArguments, PretrainingArguments, PhoneProbeArguments), description=__doc__
    )
    parser.set_defaults(
        output_dir="outputs/simclr",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        max_train_crop_s=2.0,  # 300 updates in < 10 min with the one thread `accelerate launch` gives a CPU run
        save_steps=100,
        logging_steps=10,
    )
    model_args, data_args, args, probe_args = parser.parse_args_into_dataclasses(args=argv)
    requested_size = model_args.model_size
    model_args.model_size = requested_size or default_model_size()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    accelerator = make_accelerator(args)
    model = build_model(model_args)
    config = model.config
    if model_args.model_name_or_path:  # the checkpoint's architecture, not the machine's default preset
        size = matching_preset(config.backbone_config)
        if requested_size and requested_size != size:
            raise ValueError(
                f"--model_size {requested_size} does not fit --model_name_or_path {model_args.model_name_or_path}, "
                f"whose encoder is {f'the {size} preset' if size else 'no preset'}: drop --model_size to continue "
                "the checkpoint as it is"
            )
        model_args.model_size = size or "custom"
    feature_extractor = Wav2Vec2FeatureExtractor(
        sampling_rate=config.sampling_rate, do_normalize=True, return_attention_mask=True
    )
    with accelerator.main_process_first():
        train_loader, eval_loader = build_pretraining_dataloaders(
            data_args,
            feature_extractor,
            config.backbone_config,
            batch_size=args.per_device_train_batch_size,
            seed=args.seed,
            min_clips=2,  # NT-Xent: every anchor needs a negative
        )
    augment = SimCLRAugment.from_config(config)

    result = train(
        model,
        train_loader,
        args,
        accelerator=accelerator,
        sampling_rate=feature_extractor.sampling_rate,
        batch_transform=augment,
        eval_dataloader=eval_loader,
        find_unused_parameters=config.backbone_config.layerdrop > 0,  # a dropped layer has no gradient
        hparams={"granularity": config.granularity, "model_size": model_args.model_size},
    )

    def export_encoder(output_dir):
        accelerator.unwrap_model(model).export_encoder(output_dir / "encoder")
        feature_extractor.save_pretrained(output_dir / "encoder")

    out = finalize_pretraining(
        accelerator=accelerator,
        model=model,
        result=result,
        args=args,
        savables=(feature_extractor,),
        objective_name=f"SimCLR ({config.granularity}-level NT-Xent)",
        objective_description=(
            "Two augmented views of every clip go through a shared wav2vec 2.0-architecture encoder and a projection "
            f"head (to {config.projection_dim} dimensions); the NT-Xent loss (Chen et al. 2020, eq. 1; temperature "
            f"{config.nt_xent_temperature}) pulls the two views of a clip together and pushes apart all other "
            "2(N-1) views of the batch"
            + (" (gathered from every process)" if accelerator.num_processes > 1 else "")
            + (
                ". Granularity `frame`: positives are the same time step of the two views, negatives other frames."
                if config.granularity == "frame"
                else ". Granularity `utterance`: mean over valid frames."
            )
        ),
        recipe="recipes/pretrain_simclr.py",
        dataset=data_args.dataset_name,
        train_split=data_args.train_split,
        dataset_note=data_args.dataset_note,
        augmentations=augment.describe(),
        architecture=(
            f"wav2vec 2.0 encoder (`{model_args.model_size}`): {config.backbone_config.num_hidden_layers} Transformer "
            f"layers of {config.backbone_config.hidden_size} units, {sum(p.numel() for p in model.parameters()):,} "
            "parameters with the projection head. The encoder alone is in `encoder/` as a stock `Wav2Vec2Model`."
        ),
        usage=(
            "import hf_speech_cl  # registers the simclr_audio model type\n"
            "from transformers import AutoModel\n"
            f"model = AutoModel.from_pretrained('{args.hub_model_id or out_name(args)}')\n"
            "# or, without hf_speech_cl: AutoModel.from_pretrained(path, trust_remote_code=True)"
        ),
        finetune_command=(
            f"accelerate launch recipes/finetune_asr.py --model_name_or_path {args.output_dir} --train_minutes 10"
        ),
        citation="Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual "
        "Representations. ICML 2020. arXiv:2002.05709",
        hyperparameters={
            "NT-Xent temperature": config.nt_xent_temperature,
            "granularity": config.granularity,
            "crop (s)": data_args.max_train_crop_s,
        },
        tags=["simclr", "contrastive-learning", "wav2vec2"],
        after_save=export_encoder,
        phone_probe=PhoneProbe(probe_args, data_args, seed=args.seed, device=accelerator.device),
    )
    first, last = result.first_metrics, result.last_metrics
    accelerator.print(
        f"done: {result.global_step} updates in {result.wall_time_s:.0f} s, "
        f"{result.audio_seconds / 3600:.2f} h of audio seen, {result.audio_seconds_per_second:.1f} audio-s/s; "
        f"loss {first.get('loss', float('nan')):.3f} -> {last.get('loss', float('nan')):.3f}, "
        f"retrieval accuracy {first.get('retrieval_accuracy', float('nan')):.3f} -> "
        f"{last.get('retrieval_accuracy', float('nan')):.3f}; model in {out}"
    )


def out_name(args: PretrainingArguments) -> str:
    return args.output_dir


if __name__ == "__main__":
    main(sys.argv[1:])
