"""The shared training path: arguments, the accelerate loop, checkpoints/resume, logging, model cards, Hub upload."""

from .arguments import PretrainingArguments
from .checkpointing import find_last_checkpoint, list_checkpoints
from .export import (
    finalize_pretraining,
    push_folder_to_hub,
    render_model_card,
    save_pretrained_atomic,
    write_model_card,
)
from .loop import (
    BEST_MODEL_DIR,
    NonFiniteLossError,
    TrainResult,
    evaluate,
    make_accelerator,
    make_partial_state,
    micro_batch_seed,
    seed_global_generators,
    step_generator,
    train,
)
from .tracking import JSONLinesTracker, read_metrics

__all__ = [
    "BEST_MODEL_DIR",
    "JSONLinesTracker",
    "NonFiniteLossError",
    "PretrainingArguments",
    "TrainResult",
    "evaluate",
    "finalize_pretraining",
    "find_last_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "make_partial_state",
    "micro_batch_seed",
    "push_folder_to_hub",
    "read_metrics",
    "render_model_card",
    "save_pretrained_atomic",
    "seed_global_generators",
    "step_generator",
    "train",
    "write_model_card",
]
