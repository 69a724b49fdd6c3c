"""Command-line arguments of the shared pretraining loop (one dataclass, parsed by `HfArgumentParser`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["PretrainingArguments"]


@dataclass
class PretrainingArguments:
    """Everything the shared training loop needs; every recipe parses it with `transformers.HfArgumentParser`.

    Optimizer defaults follow wav2vec 2.0 / fairseq pretraining (Adam betas (0.9, 0.98), eps 1e-6, weight decay 0.01,
    linear warm-up then decay; Baevski et al. 2020 §4.2), scaled down for small models.
    """

    output_dir: str = field(
        default="outputs/run",
        metadata={"help": "Folder for checkpoints (`checkpoint-{step}/`), logs and the final model."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into `output_dir` even if it is not empty and not one of our runs (transformers' "
            "`TrainingArguments` convention); without it such a folder is refused before anything is written. "
            "Rerunning into our own run's folder needs no flag (it resumes, see `--resume`). Deletes nothing: files "
            "of the same name are replaced."
        },
    )
    max_steps: int = field(default=300, metadata={"help": "Number of optimizer updates to train for."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Clips per batch on each process (before any view duplication)."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated into one optimizer update."}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (after warm-up)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases or norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (0.98 as fairseq's wav2vec 2.0)."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={
            "help": "Schedule after warm-up: any name `transformers.get_scheduler` takes (linear, cosine, ...), or "
            "tri_stage: fairseq's wav2vec 2.0/HuBERT fine-tuning schedule (warm-up from 0.01 x peak, hold, "
            "exponential decay to final_lr_scale x peak; phases 0.1/0.4/0.5 of max_steps as in "
            "examples/wav2vec/config/finetuning/base_10m.yaml; its warm-up is its first phase, --warmup_steps is "
            "not used)."
        },
    )
    lr_scheduler_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of the schedule's own arguments (transformers' `scheduler_specific_kwargs`); "
            'tri_stage: \'{"phase_ratio": [0.1, 0.4, 0.5], "init_lr_scale": 0.01, "final_lr_scale": 0.05}\' '
            "(these are its defaults; fairseq base_10m sets final_lr_scale 0.05)."
        },
    )
    warmup_steps: int | None = field(
        default=None, metadata={"help": "Linear warm-up updates. Default: `warmup_ratio` of `max_steps`."}
    )
    warmup_ratio: float = field(default=0.08, metadata={"help": "Warm-up fraction used when `warmup_steps` is unset."})
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": "Clip the gradient's global L2 norm to this value. An update whose norm is NaN/inf is skipped "
            "(fairseq's overflow handling) and counted."
        },
    )
    max_consecutive_nonfinite: int = field(
        default=10,
        metadata={"help": "Stop with an error after this many consecutive updates with a NaN/inf loss or gradient."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log averaged metrics every this many updates."})
    save_steps: int = field(default=100, metadata={"help": "Write a resumable checkpoint every this many updates."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (oldest deleted). None keeps all."}
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate on the eval split every this many updates (default: at the end)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for weights, data order, cropping and augmentation."})
    resume: bool = field(
        default=True,
        metadata={
            "help": "Continue from the newest complete checkpoint in `output_dir` if there is one (same step, "
            "optimizer, scheduler and RNG state). `--resume false` starts over and deletes old checkpoints."
        },
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no | fp16 | bf16. Default: what `accelerate launch`/`accelerate config` chose (bf16 needs a GPU "
            "or a recent CPU)."
        },
    )
    ddp_find_unused_parameters: bool = field(
        default=False,
        metadata={
            "help": "Let DDP tolerate parameters without gradients in a step (needed when part of the model is "
            "frozen for some updates, e.g. fine-tuning with --freeze_transformer_updates)."
        },
    )
    report_to: str = field(
        default="jsonl",
        metadata={
            "help": "Comma-separated accelerate trackers: jsonl (ours: `output_dir/logs/metrics.jsonl`), "
            "tensorboard, wandb, ... or `none`."
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "Name of the run for the trackers."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the final model folder (with its model card) to the Hub."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Repository for `--push_to_hub`, e.g. `user/simclr-audio-tiny`."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (default: the one `huggingface-cli login` stored)."}
    )

    @property
    def lr_scheduler_kwargs_dict(self) -> dict:
        """`lr_scheduler_kwargs` parsed from JSON (`{}` when unset)."""
        if not self.lr_scheduler_kwargs:
            return {}
        try:
            parsed = json.loads(self.lr_scheduler_kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"lr_scheduler_kwargs is not valid JSON: {self.lr_scheduler_kwargs!r} ({error})"
            ) from None
        if not isinstance(parsed, dict):
            raise ValueError(f"lr_scheduler_kwargs must be a JSON object, got {self.lr_scheduler_kwargs!r}")
        return parsed

    def __post_init__(self):
        _ = self.lr_scheduler_kwargs_dict  # a typo in the JSON is an error now, not after the data is loaded
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.per_device_train_batch_size < 1:
            raise ValueError(f"per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id NAME (e.g. user/my-model)")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be one of no, fp16, bf16; got {self.mixed_precision!r}")

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * self.max_steps)
