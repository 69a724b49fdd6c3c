"""Command-line arguments of the shared pretraining loop (one dataclass, parsed by `HfArgumentParser`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["PretrainingArguments"]

#: Metric-name endings for which lower is better (`greater_is_better` inferred False): losses and error rates.
_LOWER_IS_BETTER = ("loss", "cer", "wer")


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
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation metric that picks the best model, with or without the `eval_` prefix as in "
            "transformers' `TrainingArguments` (`loss` = `eval_loss` of the eval data, `cer`/`wer` of the ASR "
            "evaluator, `accuracy`/`macro_f1` of the classifier's). After every evaluation (every --eval_steps and "
            "at the end) the best value and its update are tracked and the best weights saved to "
            "`output_dir/best_model/` (config + weights, `from_pretrained`-loadable); best metric and update are "
            "reported in train_results.json. Default: none (`loss` when --load_best_model_at_end, as transformers)."
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a higher --metric_for_best_model is better. Default (None): inferred from the name, "
            "False for names ending in loss, cer or wer (error rates), True otherwise (accuracy, f1); transformers "
            "infers False only for `loss`."
        },
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "At the end, load the weights of the best evaluation (from `output_dir/best_model/`) into the "
            "model: the recipes then save, test and upload that model, and their report names its update "
            "(transformers' `TrainingArguments.load_best_model_at_end`). Checkpoints keep the last weights, so a "
            "resumed run continues where it stopped. Needs --eval_steps. Default: off (the final model)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many consecutive evaluations without an improvement of "
            "--metric_for_best_model by more than --early_stopping_threshold (transformers' "
            "`EarlyStoppingCallback(early_stopping_patience)`: the count restarts at every such improvement). "
            "--max_steps stays the cap. Needs --metric_for_best_model and --eval_steps. The count is part of the "
            "checkpoint, so a resumed run stops at the same update; a run that stopped stays stopped when rerun "
            "(`--resume false` starts over). Default: none (no early stopping)."
        },
    )
    early_stopping_min_steps: int = field(
        default=0,
        metadata={
            "help": "Evaluations before this update never count towards --early_stopping_patience (the best model "
            "is still tracked from the first evaluation), so no run stops before it. For a start that says little "
            "about the end: CTC fine-tuning sits on its blank/common-character plateau for hundreds of updates, "
            "and a frozen-encoder warm-up (--freeze_transformer_updates) can give a best that full fine-tuning "
            "first has to regain: from this update on, the count compares with the best evaluation since it, "
            "while the best model stays the best of all evaluations. The fine-tuning recipes raise it to just after "
            "--freeze_transformer_updates. Not in transformers' `EarlyStoppingCallback`. Default: 0 (every "
            "evaluation counts, against the best)."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={
            "help": "How much --metric_for_best_model must improve on the best value so far (absolute, in the "
            "metric's units) to restart the patience count (transformers' `EarlyStoppingCallback("
            "early_stopping_threshold)`). A smaller improvement still makes a new best model but counts as an "
            "evaluation without improvement. Default: 0.0 (any improvement)."
        },
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
        self._check_best_model_arguments()

    def _check_best_model_arguments(self) -> None:
        """Validate (and complete, as transformers' `TrainingArguments.__post_init__` does) the best-model and
        early-stopping fields: `metric_for_best_model` defaults to `loss` with `load_best_model_at_end`, and
        `greater_is_better` is inferred from the metric's name."""
        if self.metric_for_best_model is not None and self.metric_for_best_model.removeprefix("eval_") == "":
            raise ValueError(f"metric_for_best_model must name a metric, got {self.metric_for_best_model!r}")
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"  # transformers' default
        if self.metric_for_best_model is None:
            if self.greater_is_better is not None:
                raise ValueError("greater_is_better has no effect without metric_for_best_model: pass both")
            if self.early_stopping_patience is not None:
                raise ValueError(
                    f"early_stopping_patience={self.early_stopping_patience} needs metric_for_best_model (the "
                    "evaluation metric to watch, e.g. --metric_for_best_model cer)"
                )
        elif self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith(_LOWER_IS_BETTER)
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(
                    f"early_stopping_patience must be >= 1 evaluation, got {self.early_stopping_patience}"
                )
            if not self.eval_steps:
                raise ValueError(
                    f"early_stopping_patience={self.early_stopping_patience} needs eval_steps (evaluations during "
                    f"training); got eval_steps={self.eval_steps}, so the only evaluation is the final one"
                )
        for name in ("early_stopping_min_steps", "early_stopping_threshold"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            if value and self.early_stopping_patience is None:
                raise ValueError(f"{name}={value} is only used by early stopping: pass early_stopping_patience too")
        if self.load_best_model_at_end and not self.eval_steps:
            raise ValueError(
                f"load_best_model_at_end needs eval_steps (evaluations during training); got eval_steps="
                f"{self.eval_steps}, so the only evaluation is the final one and the best model is the final model"
            )

    @property
    def metric_key(self) -> str | None:
        """`metric_for_best_model` as the evaluation returns it: with the `eval_` prefix (`cer` → `eval_cer`)."""
        if self.metric_for_best_model is None:
            return None
        name = self.metric_for_best_model
        return name if name.startswith("eval_") else f"eval_{name}"

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * self.max_steps)
