"""The one training loop every pretraining recipe uses (plain `accelerate`, no objective-specific branches).

The loop knows a model only through `model(**batch)` returning a `ModelOutput` whose `loss` it minimises and whose
other 0-d tensor fields (loss components, retrieval accuracy, codevector perplexity, ...) it averages and logs.
What differs between objectives enters through three hooks:

- `batch_transform(batch, generator) -> batch`: runs on the training device after the batch is moved there (SimCLR's
  two augmented views, wav2vec 2.0's masks and negatives). `generator` is seeded from `(seed, update, process,
  micro-batch index within the update)`, so augmentation is reproducible and a resumed run draws exactly what an
  uninterrupted one would have.
- `step_callbacks`: each is called as `callback(model, update)` before every forward pass of that update (e.g. the
  Gumbel-softmax temperature decay of wav2vec 2.0).
- `metrics_fn(outputs, batch) -> dict[str, tensor]`: what to log from a forward pass (default: every 0-d float field
  of the output). Objective-specific metrics (per-frame losses, masked fraction) come from here.
- `loss_normalizer(batch, outputs) -> count | (summed_loss, count)`: for losses that fairseq normalises by a
  `sample_size` (masked frames). Either the count of the micro-batch, when `outputs.loss` is already a sum over it
  (stock `Wav2Vec2ForPreTraining`), or the pair (sum, count) for a model that returns a mean (HuBERT:
  `(loss * sample_size, sample_size)`). The sums of all micro-batches of all processes are back-propagated, the
  counts are all-reduced once per update, and the gradients are multiplied by `processes * accumulation_steps /
  total count` before clipping: the update is the gradient of (sum of all losses) / (total count), as fairseq's
  `Trainer.train_step` does (`optimizer.multiply_grads(num_processes / sample_size)`), whatever the accumulation.

Randomness (exact resume): before every micro-batch, Python's, NumPy's and torch's global generators (CPU and CUDA)
are seeded from `micro_batch_seed(seed, update, process, micro-batch)`, so dropout, layer drop and masks drawn
inside `forward` (HuBERT) are a function of those four numbers only; data order and crops are functions of
`(seed, epoch)` in the data pipeline. A run resumed from `checkpoint-{k}` therefore repeats exactly the draws of the
uninterrupted run from update k on (to float tolerance; bit-identical on one thread). Evaluation seeds the same
generators from `(seed, -1, process, batch)` and restores their states afterwards: the same checkpoint gets the
same score twice and evaluating does not change the training stream.

Robustness: a batch that is `None` on any process (no readable clip) is skipped by every process together (one
flag all-reduced per micro-batch when there are several processes), counted in `skipped_batches` and logged; an
update whose loss or gradient is not finite is skipped and the model's buffers (BatchNorm running statistics,
`num_batches_tracked`) are restored to what they were before that update's forward passes. Both are warned about
once, counted (`skipped_batches`, `nonfinite_updates` in the logged rows and `train_results.json`) and summed up in
one line at the end.

Best model and early stopping (`--metric_for_best_model`, `--early_stopping_patience`, `--load_best_model_at_end`,
with transformers' `Trainer._determine_best_metric` / `EarlyStoppingCallback` semantics): after every evaluation
(every `eval_steps` and the final one) the metric is compared with the best so far; a strictly better value is the
new best and its weights are written to `output_dir/best_model/` (`save_pretrained` of the unwrapped model into a
temporary folder, renamed when complete; main process, the others wait). An evaluation that does not beat the best
by more than `early_stopping_threshold` counts as one without improvement; after `early_stopping_patience` of them
in a row every process stops at the same update (the decision is taken from process 0's metric, broadcast);
evaluations before `early_stopping_min_steps` do not count (ours: a plateau at the start is no sign of the end). A
separate folder rather than a protected `checkpoint-{k}`: evaluations need not fall on save steps, a checkpoint
carries the optimizer state (about 3x the weights) and rotation stays simple, and `best_model/` loads with
`from_pretrained`. The best value, its update, the count and whether training stopped are in `trainer_state.json`
of every checkpoint, so a run resumed after a kill reaches the same best update and stops at the same update (the
evaluation that wrote a newer `best_model/` before the kill is repeated and rewrites it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm

from .arguments import PretrainingArguments
from .checkpointing import (
    TRAINER_STATE_NAME,
    apply_default_modes,
    atomic_write_text,
    claim_output_dir,
    find_last_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    remove_incomplete_checkpoints,
)
from .schedules import make_scheduler
from .tracking import JSONLinesTracker, truncate_metrics

__all__ = [
    "BEST_MODEL_DIR",
    "BEST_MODEL_STATE_NAME",
    "NonFiniteLossError",
    "TrainResult",
    "evaluate",
    "make_accelerator",
    "make_partial_state",
    "micro_batch_seed",
    "seed_global_generators",
    "step_generator",
    "train",
]

logger = logging.getLogger(__name__)

#: Folder of `output_dir` holding the best evaluation's weights (`--metric_for_best_model`).
BEST_MODEL_DIR = "best_model"
#: Written last into `BEST_MODEL_DIR`: `{"step", "metric", "value"}` of the weights there (marks it complete).
BEST_MODEL_STATE_NAME = "best_model_state.json"

BatchTransform = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
StepCallback = Callable[[torch.nn.Module, int], None]
LossNormalizer = Callable[[dict[str, torch.Tensor], Any], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
MetricsFn = Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive updates had a NaN/inf loss or gradient."""


@dataclass
class TrainResult:
    """What a finished `train` call reports (also written to `output_dir/train_results.json`).

    Attributes:
        global_step: updates done in total (including those before a resume): the update training ended at,
            `max_steps` unless it stopped early.
        first_metrics / last_metrics: the first and last logged averages (`loss`, components, `lr`, ...).
        eval_metrics: averages over the eval data at the end (empty without eval data).
        wall_time_s: seconds this call ran (not counting earlier runs before a resume).
        audio_seconds: seconds of input audio consumed in total, over all processes and runs.
        audio_seconds_per_second: throughput of this call, over all processes.
        nonfinite_updates: updates skipped because the loss or gradient was NaN/inf.
        skipped_batches: micro-batches every process skipped because one process had no readable clip.
        resumed_from: the checkpoint this call continued from, if any.
        metric_for_best_model: the evaluation metric watched (`eval_` prefixed), or None.
        best_metric / best_step: its best value over all evaluations and the update of that evaluation (None
            without `metric_for_best_model` or evaluation data).
        evaluations_without_improvement: consecutive evaluations, up to the last, that did not improve the best by
            more than `early_stopping_threshold` (from `early_stopping_min_steps` on, the best of those evaluations).
        stopped_early: training ended before `max_steps` because of `early_stopping_patience`; `global_step` is
            then the update it stopped at.
        model_step: the update whose weights the returned (and so saved and tested) model holds: `best_step` with
            `load_best_model_at_end`, else `global_step`.
        data_report: clips the data pipeline left out, by cause, with the names of the first few
            (`hf_speech_cl.data.DataStats.merge` over processes), for `"train"` and `"eval"`; decode-time skips
            count once per epoch in which they were met (this call's epochs only).
    """

    global_step: int = 0
    first_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    audio_seconds: float = 0.0
    audio_seconds_per_second: float = 0.0
    nonfinite_updates: int = 0
    skipped_batches: int = 0
    resumed_from: str | None = None
    metric_for_best_model: str | None = None
    best_metric: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    stopped_early: bool = False
    model_step: int = 0
    data_report: dict[str, Any] = field(default_factory=dict)


def make_accelerator(args: PretrainingArguments) -> Accelerator:
    """An `Accelerator` for `args`: mixed precision, gradient accumulation, trackers, seed.

    Trackers come from `args.report_to`; `jsonl` is ours (`JSONLinesTracker`), other names are accelerate's.

    Raises:
        ValueError: `args.output_dir` is not empty and not one of our runs, without `--overwrite_output_dir`
            (`checkpointing.check_output_dir`; every process checks before anything is written).
    """
    claim_output_dir(args.output_dir, args.overwrite_output_dir)  # before anything is written into it
    logging_dir = os.path.join(args.output_dir, "logs")
    run_name = args.run_name or Path(args.output_dir).name
    log_with: list[Any] = []
    for name in (n.strip() for n in args.report_to.split(",")):
        if name in ("", "none"):
            continue
        log_with.append(JSONLinesTracker(run_name, logging_dir) if name == "jsonl" else name)
    kwargs_handlers = []
    if args.ddp_find_unused_parameters:
        kwargs_handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(
        cpu=_multi_cpu(),
        kwargs_handlers=kwargs_handlers,
        # every process reads a stream itself and keeps its share of our length-grouped batches (accelerate's default
        # for iterable datasets, process 0 reading and dispatching slices of one concatenated batch, cannot join
        # padded batches of different lengths; map-style datasets are sharded by sampler either way)
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    set_seed(args.seed, device_specific=False)
    return accelerator


def _multi_cpu() -> bool:
    """Under torchrun on a machine without CUDA, accelerate only reaches MULTI_CPU (gloo) with cpu=True; without it,
    every process believes it is process 0 of 1 while torch.distributed is initialised (accelerate 1.15)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def make_partial_state(args: PretrainingArguments | None = None) -> PartialState:
    """accelerate's `PartialState` as `make_accelerator` sets it up (gloo on CPU-only machines under torchrun), for
    work before the accelerator exists (e.g. HuBERT's label stages with `main_process_first`).

    With `args`, first checks and claims `args.output_dir` as `make_accelerator` does (pass it when the recipe writes
    into the folder before it makes an accelerator).

    Raises:
        ValueError: see `make_accelerator`.
    """
    if args is not None:
        claim_output_dir(args.output_dir, args.overwrite_output_dir)  # before anything is written into it
    return PartialState(cpu=_multi_cpu())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and normalisation weights (as transformers' Trainer does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scalar_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """The 0-d (one-element) floating tensors of a `ModelOutput`: what gets logged."""
    items = outputs.items() if hasattr(outputs, "items") else []
    return {
        k: v.detach().float().reshape(())
        for k, v in items
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()
    }


def _audio_seconds(batch: dict[str, Any], sampling_rate: int) -> float:
    if "attention_mask" in batch and batch["attention_mask"] is not None:
        return float(batch["attention_mask"].sum()) / sampling_rate
    return float(batch["input_values"].numel()) / sampling_rate


def data_report(accelerator: Accelerator, loaders: dict[str, Any]) -> dict[str, Any]:
    """`{name: DataStats report}` of the loaders' datasets, merged over processes, each cause with skips logged once
    (a warning naming the first clips). Loaders without `DataStats` (or `None`) are left out."""
    from ..data import DataStats

    reports: dict[str, Any] = {}
    for name, loader in loaders.items():
        stats = getattr(getattr(loader, "dataset", None), "stats", None)
        if not isinstance(stats, DataStats):
            continue
        snapshots = [stats.snapshot()]
        if accelerator.num_processes > 1:
            snapshots = gather_object(snapshots)
        report = DataStats.merge(snapshots)
        reports[name] = report
        if report["skipped"] and accelerator.is_main_process:
            logger.warning(
                "%s data: clips left out: %s",
                name,
                "; ".join(
                    f"{cause} {count} (first: {', '.join(report['examples'].get(cause, [])) or 'unnamed'})"
                    for cause, count in report["skipped"].items()
                ),
            )
    return reports


def step_generator(device: torch.device, seed: int, update: int, process: int, micro: int) -> torch.Generator:
    """The random generator of one micro-batch's `batch_transform` (masks, augmentations): a pure function of the run
    seed, the update (-1 in evaluation), the process index and the micro-batch index within the update (in
    evaluation: the batch index), so a resumed or re-run update draws the same numbers, and every process different
    ones."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + update * 10_007 + process * 101 + micro) % (2**63 - 1))
    return generator


def micro_batch_seed(seed: int, update: int, process: int, micro: int) -> int:
    """A 63-bit seed mixing `(seed, update, process, micro)` through `numpy.random.SeedSequence` (update -1 and up)."""
    entropy = [seed % 2**32, update + 1, process, micro]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def seed_global_generators(seed: int, update: int, process: int, micro: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch's CPU and CUDA default generators from
    `micro_batch_seed(...)`: dropout, layer drop (`torch.rand` in transformers' encoders) and masks drawn with
    NumPy's global generator (transformers' `_compute_mask_indices`) become functions of those four numbers."""
    value = micro_batch_seed(seed, update, process, micro)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also every CUDA device's default generator


def _global_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process if `flag` is true on any (one small all-reduce; none on a single process)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum") > 0)


def _normalizer_count(
    normalized: torch.Tensor | tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`loss_normalizer`'s answer as (summed loss, count as a float tensor on the loss's device)."""
    if isinstance(normalized, (tuple, list)):
        loss, count = normalized
    else:
        count = normalized
    return loss, torch.as_tensor(count).detach().float().to(loss.device).reshape(())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataloader: Iterable[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    *,
    batch_transform: BatchTransform | None = None,
    metrics_fn: MetricsFn | None = None,
    seed: int = 0,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Average every scalar output field over `dataloader` (all processes), model in eval mode.

    `batch_transform` draws from a generator with a fixed seed, and the global generators (masks drawn inside
    `forward`) are seeded per batch from `(seed, -1, process, batch)` and restored afterwards, so the same
    checkpoint always gets the same score and evaluating leaves the training stream untouched.
    """
    was_training = model.training
    rng_state = _global_rng_state()
    model.eval()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    count = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        if _any_process(accelerator, batch is None):
            continue  # every process together (SimCLR's all-gather would wait for the one that skipped)
        seed_global_generators(seed, -1, accelerator.process_index, index)
        if batch_transform is not None:
            batch = batch_transform(
                batch, step_generator(accelerator.device, seed, -1, accelerator.process_index, index)
            )
        outputs = model(**batch)
        logged = metrics_fn(outputs, batch) if metrics_fn is not None else _scalar_outputs(outputs)
        for key, value in logged.items():
            sums[key] = sums[key] + value.detach().float()
        count += 1
    model.train(was_training)
    _set_global_rng_state(rng_state)
    total = accelerator.reduce(count, reduction="sum")
    if float(total) == 0:
        return {}
    keys = sorted(sums)
    stacked = accelerator.reduce(torch.stack([sums[k] for k in keys]) if keys else count.new_zeros(0), "sum")
    return {f"eval_{k}": float(v) / float(total) for k, v in zip(keys, stacked)}


def train(
    model: torch.nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    args: PretrainingArguments,
    *,
    accelerator: Accelerator,
    sampling_rate: int,
    batch_transform: BatchTransform | None = None,
    step_callbacks: Iterable[StepCallback] = (),
    loss_normalizer: LossNormalizer | None = None,
    metrics_fn: MetricsFn | None = None,
    eval_dataloader: torch.utils.data.DataLoader | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    hparams: dict[str, Any] | None = None,
    find_unused_parameters: bool | None = None,
) -> TrainResult:
    """Train `model` for `args.max_steps` updates; resume from the newest checkpoint in `args.output_dir`.

    Args:
        model: a `PreTrainedModel` whose `forward(**batch)` returns a `ModelOutput` with a `loss`.
        train_dataloader: yields collated batches (dicts of tensors; `None` batches — all clips unreadable — are
            skipped). Its sampler should expose `set_epoch(epoch)` for a reproducible, resumable order.
        args: the loop's settings (`PretrainingArguments`).
        accelerator: from `make_accelerator(args)`.
        sampling_rate: of `input_values`, in Hz (from the feature extractor); turns `attention_mask` sums into
            audio-seconds for the throughput log.
        batch_transform, step_callbacks, loss_normalizer, metrics_fn: objective-specific hooks (see the module docstring).
        eval_dataloader: optional; evaluated every `args.eval_steps` updates and at the end (averaged outputs).
        eval_fn: optional task evaluation (e.g. WER after greedy CTC decoding): called as `eval_fn(model)` with the
            prepared model on every process every `args.eval_steps` updates and at the end; returns metrics that
            are logged (prefix them yourself, e.g. `eval_wer`) and merged into `TrainResult.eval_metrics`.
        hparams: extra values stored with the trackers' run configuration.
        find_unused_parameters: let DistributedDataParallel tolerate parameters without a gradient in an update
            (layer drop: transformers skips a dropped layer, and without this the second update raises "Expected
            to have finished reduction in the prior iteration"). Recipes pass `config.layerdrop > 0`. Default:
            `args.ddp_find_unused_parameters`. Only matters with several processes.

    Best model and early stopping: see the module docstring. With `args.metric_for_best_model`, every evaluation
    logs one line (its value, the best so far and its update, evaluations without improvement), and stopping one
    more. With `args.load_best_model_at_end`, the best weights are loaded into the model after the final evaluation
    and the evaluation is repeated on them (`TrainResult.eval_metrics` and `eval_fn`'s state then describe the
    returned model; it is not logged again).

    Returns:
        A `TrainResult`. The trained model is `accelerator.unwrap_model(model)` (the object passed in), holding the
        weights of update `TrainResult.model_step`.

    Raises:
        NonFiniteLossError: after `args.max_consecutive_nonfinite` consecutive NaN/inf updates.
        ValueError: if the training data yields no batch at all; if an evaluation returns metrics without
            `args.metric_for_best_model` (the message lists those it returned); if early stopping or
            `load_best_model_at_end` is asked for without `eval_dataloader` or `eval_fn`.
    """
    output_dir = Path(args.output_dir)
    metric_key = args.metric_key
    if metric_key is not None and eval_dataloader is None and eval_fn is None:
        if args.early_stopping_patience is not None or args.load_best_model_at_end:
            raise ValueError(
                f"metric_for_best_model={args.metric_for_best_model!r} with early_stopping_patience / "
                "load_best_model_at_end needs evaluation data (an eval split), and this run has none"
            )
        logger.info("No evaluation data: metric_for_best_model %s is not tracked", args.metric_for_best_model)
        metric_key = None
    if args.early_stopping_patience is not None and args.early_stopping_min_steps >= args.max_steps:
        logger.warning(
            "early_stopping_min_steps %d >= max_steps %d: no evaluation counts towards the patience, so early "
            "stopping never fires",
            args.early_stopping_min_steps,
            args.max_steps,
        )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
        _recover_best_model_dir(output_dir)
        if not args.resume:
            for old in list_checkpoints(output_dir):
                shutil.rmtree(old)
    accelerator.wait_for_everyone()

    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    scheduler = make_scheduler(  # prepared schedulers step once per process per update
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
        scheduler_kwargs=args.lr_scheduler_kwargs_dict,
    )
    if find_unused_parameters and accelerator.ddp_handler is None:
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    model, optimizer, train_dataloader, scheduler = accelerator.prepare(model, optimizer, train_dataloader, scheduler)
    if eval_dataloader is not None:
        eval_dataloader = accelerator.prepare(eval_dataloader)
    callbacks = list(step_callbacks)

    state: dict[str, Any] = {
        "global_step": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "audio_seconds": 0.0,
        "nonfinite_updates": 0,
        "skipped_batches": 0,
        "first_metrics": {},
        "model_class": type(accelerator.unwrap_model(model)).__name__,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        # best model / early stopping (`_track_best`); last_eval_step: the update of the last tracked evaluation
        "best_metric": None,
        "best_step": None,
        "evaluations_without_improvement": 0,
        "patience_best": None,  # the bar of the patience count: the best evaluation from early_stopping_min_steps on
        "stopped_early": False,
        "last_eval_step": None,
    }
    resumed_from = find_last_checkpoint(output_dir) if args.resume else None
    if resumed_from is not None:
        saved = read_trainer_state(resumed_from)
        if saved.get("model_class", state["model_class"]) != state["model_class"]:
            raise ValueError(
                f"{output_dir} holds checkpoints of a {saved['model_class']} run ({resumed_from.name}); this run "
                f"trains a {state['model_class']}: pick another --output_dir, or pass --resume false to start over "
                "(which deletes those checkpoints)"
            )
        if saved.get("num_parameters", state["num_parameters"]) != state["num_parameters"]:
            raise ValueError(
                f"{output_dir} holds checkpoints of a model with {saved['num_parameters']:,} parameters "
                f"({resumed_from.name}); this run builds one with {state['num_parameters']:,}: a different "
                "--model_size or config? Without --model_size the preset is the machine's (cpu without CUDA, gpu "
                "with it), so pass the run's own --model_size to resume it, pick another --output_dir, or pass "
                "--resume false to start over (which deletes those checkpoints)"
            )
        with _quiet_accelerate_checkpointing():
            accelerator.load_state(str(resumed_from))
        state.update(saved)
        if "patience_best" not in saved:  # a checkpoint from before early_stopping_min_steps: the best was the bar
            state["patience_best"] = saved.get("best_metric")
        accelerator.print(
            f"Resuming from {resumed_from} at update {state['global_step']} "
            f"(epoch {state['epoch']}, batch {state['batches_in_epoch']})"
        )

    if accelerator.is_main_process:
        _check_best_model_dir(output_dir, state, resumed_from)
        # one history: rows a killed run logged after the checkpoint we continue from are dropped
        dropped = truncate_metrics(output_dir / "logs", state["global_step"])
        if dropped:
            logger.warning(
                "Dropped %d rows of logs/metrics.jsonl logged after update %d by the interrupted run",
                dropped,
                state["global_step"],
            )
    accelerator.wait_for_everyone()

    run_config = {**asdict(args), **(hparams or {})}
    accelerator.init_trackers(args.run_name or output_dir.name, config=_flat_config(run_config))

    result = TrainResult(resumed_from=str(resumed_from) if resumed_from else None)
    progress = tqdm(
        total=args.max_steps,
        initial=state["global_step"],
        disable=not accelerator.is_local_main_process,
        desc="training",
        unit="update",
        dynamic_ncols=True,
    )
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    micro_batches = 0
    interval_audio = 0.0
    interval_start = time.perf_counter()
    run_start = interval_start
    run_audio = 0.0
    consecutive_nonfinite = 0
    micro = 0  # micro-batch index within the current update
    update_count = torch.zeros((), device=accelerator.device)  # loss_normalizer counts of this update, this process
    buffers_before: dict[str, torch.Tensor] = {}
    max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
    run_skipped_batches = run_nonfinite_updates = 0  # this call's, for the warnings (once) and the summary

    def run_evaluation() -> dict[str, float]:
        """Loss averages over `eval_dataloader` and `eval_fn`'s metrics; the model back in training mode."""
        metrics: dict[str, float] = {}
        if eval_dataloader is not None:
            metrics.update(
                evaluate(
                    model,
                    eval_dataloader,
                    accelerator,
                    batch_transform=batch_transform,
                    metrics_fn=metrics_fn,
                    seed=args.seed,
                )
            )
        if eval_fn is not None:
            metrics.update(eval_fn(model))
        model.train()
        return metrics

    def track(metrics: dict[str, float], step: int, final: bool = False) -> bool:
        """Best model / early stopping after the evaluation of update `step` (`final`: the one after training,
        which stops nothing); True: stop training."""
        if metric_key is None or not metrics:  # no metric watched, or the evaluation saw no data (warned there)
            return False
        if metric_key not in metrics:
            raise ValueError(
                f"metric_for_best_model is {args.metric_for_best_model!r}, but the evaluation returned no "
                f"{metric_key!r}; it returned: {', '.join(sorted(metrics))}. Pass one of those as "
                "--metric_for_best_model."
            )
        value = float(metrics[metric_key])
        if accelerator.num_processes > 1:  # one decision for all: process 0's value
            value = float(broadcast(torch.tensor([value], dtype=torch.float64, device=accelerator.device))[0])
        improved, stop = _track_best(state, value, step, args)
        stop = stop and not final
        state["last_eval_step"] = step
        if improved:
            _save_best_model(accelerator, output_dir, model, step, metric_key, value)
        if accelerator.is_main_process:
            logger.info("%s", _describe_evaluation(state, metric_key, value, step, improved, args))
            if stop:
                logger.info(
                    "Early stopping at update %d of %d: %s did not improve by more than %g in %d consecutive "
                    "evaluations (best %.6g at update %d)",
                    step,
                    args.max_steps,
                    metric_key,
                    args.early_stopping_threshold,
                    state["evaluations_without_improvement"],
                    state["best_metric"],
                    state["best_step"],
                )
        return stop

    model.train()
    last_eval: tuple[int, dict[str, float]] | None = None  # (update, metrics) of this call's last evaluation
    if state["stopped_early"]:
        accelerator.print(
            f"Training stopped early at update {state['global_step']} ({metric_key} best at update "
            f"{state['best_step']}); nothing left to train (--resume false starts over)"
        )

    while state["global_step"] < args.max_steps and not state["stopped_early"]:
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(state["epoch"])
        loader = train_dataloader
        if state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_dataloader, state["batches_in_epoch"])
        yielded = False
        for batch in loader:
            yielded = True
            state["batches_in_epoch"] += 1
            step = state["global_step"]
            if _any_process(accelerator, batch is None):
                # every process skips together: one process alone entering forward/backward would wait forever in
                # DDP's all-reduce (or SimCLR's all-gather)
                state["skipped_batches"] += 1
                run_skipped_batches += 1
                (logger.warning if run_skipped_batches == 1 else logger.debug)(
                    "update %d: a batch without any readable clip on %s; every process skips it (%d skipped so "
                    "far; further skips are counted in skipped_batches, not warned about)",
                    step,
                    "this process" if batch is None else "another process",
                    state["skipped_batches"],
                )
                continue
            seconds = _audio_seconds(batch, sampling_rate)
            interval_audio += seconds
            run_audio += seconds
            if micro == 0:
                buffers_before = {name: b.detach().clone() for name, b in model.named_buffers()}
            seed_global_generators(args.seed, step, accelerator.process_index, micro)
            with accelerator.accumulate(model):
                for callback in callbacks:
                    callback(accelerator.unwrap_model(model), step)
                if batch_transform is not None:
                    batch = batch_transform(
                        batch, step_generator(accelerator.device, args.seed, step, accelerator.process_index, micro)
                    )
                micro += 1
                outputs = model(**batch)
                loss = outputs.loss
                logged = metrics_fn(outputs, batch) if metrics_fn is not None else _scalar_outputs(outputs)
                if loss_normalizer is not None:
                    loss, local = _normalizer_count(loss_normalizer(batch, outputs), loss)
                    update_count = update_count + local
                    if metrics_fn is None:
                        logged["loss"] = loss.detach().float() / local.clamp(min=1)
                accelerator.backward(loss)
                for key, value in logged.items():
                    sums[key] = sums[key] + value
                micro_batches += 1
                if accelerator.sync_gradients:
                    if loss_normalizer is not None:
                        # fairseq: gradient of (sum over micro-batches and processes) / (total count), the count
                        # all-reduced once per update; undoes accelerate's 1/accumulation and DDP's 1/processes
                        total = accelerator.reduce(update_count, "sum").clamp(min=1)
                        factor = accelerator.num_processes * accelerator.gradient_accumulation_steps / total
                        for param in model.parameters():
                            if param.grad is not None:
                                param.grad.mul_(factor.to(param.grad.dtype))
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    finite = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)))
                    if finite and torch.isfinite(loss.detach()).all():
                        optimizer.step()
                        scheduler.step()
                        consecutive_nonfinite = 0
                    else:
                        # the forward passes already moved BatchNorm running statistics: put them back
                        with torch.no_grad():
                            for name, buffer in model.named_buffers():
                                if name in buffers_before:
                                    buffer.copy_(buffers_before[name])
                        state["nonfinite_updates"] += 1
                        run_nonfinite_updates += 1
                        consecutive_nonfinite += 1
                        (logger.warning if run_nonfinite_updates == 1 else logger.debug)(
                            "update %d: loss %s / gradient norm %s is not finite; update skipped (further ones are "
                            "counted in nonfinite_updates, not warned about)",
                            step,
                            float(loss.detach()),
                            grad_norm,
                        )
                        if consecutive_nonfinite >= args.max_consecutive_nonfinite:
                            raise NonFiniteLossError(
                                f"{consecutive_nonfinite} consecutive updates had a NaN/inf loss or gradient "
                                f"(last loss {float(loss.detach())}). Lower --learning_rate, raise --warmup_steps, "
                                "train in fp32 (--mixed_precision no), or check the data for silent/corrupt clips. "
                                f"The last good checkpoint is {find_last_checkpoint(output_dir)}."
                            )
                    optimizer.zero_grad(set_to_none=True)
                    micro = 0
                    update_count = torch.zeros((), device=accelerator.device)

            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            step = state["global_step"]
            progress.update(1)

            if step % args.logging_steps == 0 or step == args.max_steps:
                metrics = _reduce_interval(accelerator, sums, micro_batches)
                audio = float(accelerator.reduce(torch.tensor(interval_audio, device=accelerator.device), "sum"))
                state["audio_seconds"] += audio
                elapsed = time.perf_counter() - interval_start
                metrics["lr"] = scheduler.get_last_lr()[0]
                metrics["audio_seconds_per_second"] = audio / max(elapsed, 1e-9)
                metrics["audio_hours_seen"] = state["audio_seconds"] / 3600
                metrics["epoch"] = state["epoch"]
                metrics["skipped_batches"] = state["skipped_batches"]
                metrics["nonfinite_updates"] = state["nonfinite_updates"]
                if not state["first_metrics"]:
                    state["first_metrics"] = metrics
                result.last_metrics = metrics
                accelerator.log(metrics, step=step)
                progress.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in _SHOWN})
                sums.clear()
                micro_batches = 0
                interval_audio = 0.0
                interval_start = time.perf_counter()

            if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
                eval_metrics = run_evaluation()
                if eval_metrics:
                    accelerator.log(eval_metrics, step=step)
                last_eval = (step, eval_metrics)
                state["stopped_early"] = track(eval_metrics, step)

            if step % args.save_steps == 0 or step == args.max_steps or state["stopped_early"]:
                _save_checkpoint(accelerator, model, output_dir, state, args.save_total_limit)

            if step >= args.max_steps or state["stopped_early"]:
                break
        else:
            # nothing left after skipping: resumed from a checkpoint of the epoch's last batch; go on with the next
            if not yielded and not state["batches_in_epoch"]:
                raise ValueError(
                    "The training data yielded no batch: every clip was filtered out (too short/long, unreadable) "
                    "or the split is empty. Check --dataset_name/--train_split and the duration limits."
                )
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            continue
    progress.close()

    result.global_step = state["global_step"]
    result.first_metrics = state["first_metrics"]
    result.nonfinite_updates = state["nonfinite_updates"]
    result.skipped_batches = state["skipped_batches"]
    result.audio_seconds = state["audio_seconds"]
    result.wall_time_s = time.perf_counter() - run_start
    total_run_audio = float(accelerator.reduce(torch.tensor(run_audio, device=accelerator.device), "sum"))
    result.audio_seconds_per_second = total_run_audio / max(result.wall_time_s, 1e-9)
    if last_eval is not None and last_eval[0] == state["global_step"]:
        result.eval_metrics.update(last_eval[1])  # stopped right after an evaluation: the same weights
    elif eval_dataloader is not None or eval_fn is not None:
        result.eval_metrics.update(run_evaluation())
        # not logged nor counted again when rerunning a run that stopped right after evaluating this update
        if state["last_eval_step"] != state["global_step"]:
            if result.eval_metrics:
                accelerator.log(result.eval_metrics, step=result.global_step)
            track(result.eval_metrics, state["global_step"], final=True)
    result.model_step = state["global_step"]
    if args.load_best_model_at_end and metric_key is not None and state["best_step"] is not None:
        if state["best_step"] != state["global_step"] and _load_best_model(accelerator, output_dir, model, state):
            result.model_step = state["best_step"]
            result.eval_metrics = run_evaluation()  # the returned model's scores (and eval_fn's examples)
            if accelerator.is_main_process:
                logger.info(
                    "Loaded the best model (update %d, %s %.6g) instead of the last (update %d); re-evaluated: %s %s",
                    state["best_step"],
                    metric_key,
                    state["best_metric"],
                    state["global_step"],
                    metric_key,
                    result.eval_metrics.get(metric_key),
                )
    result.metric_for_best_model = metric_key
    result.best_metric = state["best_metric"]
    result.best_step = state["best_step"]
    result.evaluations_without_improvement = state["evaluations_without_improvement"]
    result.stopped_early = bool(state["stopped_early"])
    if (run_skipped_batches or run_nonfinite_updates) and accelerator.is_main_process:
        logger.warning(
            "This run skipped %d batches without a readable clip and %d updates with a non-finite loss or gradient "
            "(%d and %d in total)",
            run_skipped_batches,
            run_nonfinite_updates,
            state["skipped_batches"],
            state["nonfinite_updates"],
        )
    result.data_report = data_report(accelerator, {"train": train_dataloader, "eval": eval_dataloader})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "train_results.json", json.dumps(asdict(result), indent=2))
    # not accelerator.end_training(): it also destroys the process group, and recipes still synchronise afterwards
    # (saving, model card, upload)
    for tracker in accelerator.trackers:
        tracker.finish()
    return result


_SHOWN = ("loss", "retrieval_accuracy", "accuracy_masked", "codevector_perplexity", "lr", "audio_seconds_per_second")


def _reduce_interval(accelerator: Accelerator, sums: dict[str, torch.Tensor], micro_batches: int) -> dict[str, float]:
    """Mean of each scalar output over the logging interval and over all processes."""
    keys = sorted(sums)
    if not keys:
        return {}
    stacked = torch.stack([sums[k] for k in keys]) / max(micro_batches, 1)
    stacked = accelerator.reduce(stacked, "mean")
    return {k: float(v) for k, v in zip(keys, stacked)}


def _save_checkpoint(
    accelerator: Accelerator, model: torch.nn.Module, output_dir: Path, state: dict[str, Any], keep: int | None
) -> None:
    """`save_state` into a temporary folder, then rename: a checkpoint either exists complete or not at all.

    The model's `config.json` goes in too, so that `from_pretrained("checkpoint-N")` loads its weights, as a
    transformers `Trainer` checkpoint does (probes and fine-tuning of intermediate checkpoints).
    """
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with _quiet_accelerate_checkpointing():  # six INFO lines per save otherwise; ours is the one line below
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / TRAINER_STATE_NAME, json.dumps(state, indent=2, default=float))
        config = getattr(accelerator.unwrap_model(model), "config", None)
        if config is not None and hasattr(config, "save_pretrained"):
            config.save_pretrained(tmp)
        apply_default_modes(tmp)  # safetensors writes 0o600 (safetensors/safetensors#782)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, keep)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _quiet_accelerate_checkpointing() -> Iterator[None]:
    """accelerate logs every file of `save_state`/`load_state` at INFO: keep its warnings, drop that list."""
    quiet = logging.getLogger("accelerate.checkpointing")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quiet.setLevel(level)


def _track_best(state: dict[str, Any], value: float, step: int, args: PretrainingArguments) -> tuple[bool, bool]:
    """Update `state`'s best metric and count of evaluations without improvement with the evaluation of `step`.

    As transformers: the best is replaced by a strictly better value (`Trainer._determine_best_metric`; NaN never
    is), and the count restarts only when the value beats the previous best by more than
    `args.early_stopping_threshold` (`EarlyStoppingCallback.check_metric_value`; the first evaluation always does).

    Ours, `args.early_stopping_min_steps`: evaluations before it never add to the count, and the count compares with
    the best of the evaluations from that update on (`state["patience_best"]`), not with an earlier best: a best
    reached on a plateau or with a frozen encoder stays the best model, but does not stop a run that is still
    improving on its own terms. With a minimum of 0 that bar is the best itself (transformers' rule).

    Returns:
        `(improved, stop)`: a new best; the count reached `args.early_stopping_patience`.
    """

    def beats(reference: float | None) -> bool:
        if math.isnan(value):
            return False
        if reference is None:
            return True
        return value > reference if args.greater_is_better else value < reference

    improved = beats(state["best_metric"])
    if improved:
        state["best_metric"], state["best_step"] = value, step
    if step < args.early_stopping_min_steps:
        return improved, False  # before --early_stopping_min_steps nothing counts towards the patience
    bar = state.get("patience_best")
    better = beats(bar)
    if better and (bar is None or abs(value - bar) > args.early_stopping_threshold):
        state["evaluations_without_improvement"] = 0
    else:
        state["evaluations_without_improvement"] += 1
    if better:
        state["patience_best"] = value
    patience = args.early_stopping_patience
    return improved, patience is not None and state["evaluations_without_improvement"] >= patience


def _describe_evaluation(
    state: dict[str, Any], key: str, value: float, step: int, improved: bool, args: PretrainingArguments
) -> str:
    """The one log line of an evaluation: its value, the best so far, the evaluations without improvement."""
    count = state["evaluations_without_improvement"]
    patience = f" of {args.early_stopping_patience}" if args.early_stopping_patience is not None else ""
    if improved and count == 0:
        verdict = f"new best (saved to {BEST_MODEL_DIR}/)"
    elif improved:
        verdict = (
            f"new best (saved to {BEST_MODEL_DIR}/) but not by more than early_stopping_threshold "
            f"{args.early_stopping_threshold:g}: {count}{patience} evaluations without improvement"
        )
    else:
        verdict = (
            f"best {state['best_metric']:.6g} at update {state['best_step']}; {count}{patience} evaluations without "
            "improvement"
            if state["best_step"] is not None
            else f"no best yet; {count}{patience} evaluations without improvement"
        )
    return f"update {step}: {key} {value:.6g}, {verdict}"


def _save_best_model(
    accelerator: Accelerator, output_dir: Path, model: torch.nn.Module, step: int, key: str, value: float
) -> None:
    """Write the weights of update `step` to `output_dir/BEST_MODEL_DIR` (all processes call it; main writes).

    `save_pretrained` of the unwrapped model (a plain module: its state dict as `model.safetensors`) into
    `.tmp-best_model`, `BEST_MODEL_STATE_NAME` last, then the old folder is moved aside and the new one renamed
    into place: a kill at any point leaves a complete folder that `_recover_best_model_dir` puts back.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final, tmp, old = _best_model_paths(output_dir)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        unwrapped = accelerator.unwrap_model(model)
        if hasattr(unwrapped, "save_pretrained"):
            unwrapped.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(unwrapped, str(tmp / "model.safetensors"))
        atomic_write_text(tmp / BEST_MODEL_STATE_NAME, json.dumps({"step": step, "metric": key, "value": value}))
        apply_default_modes(tmp)  # safetensors writes 0o600 (safetensors/safetensors#782)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _best_model_paths(output_dir: Path) -> tuple[Path, Path, Path]:
    """(`best_model/`, its temporary folder, the previous one while it is replaced)."""
    return output_dir / BEST_MODEL_DIR, output_dir / f".tmp-{BEST_MODEL_DIR}", output_dir / f".old-{BEST_MODEL_DIR}"


def _read_best_model_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / BEST_MODEL_STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _recover_best_model_dir(output_dir: Path) -> None:
    """After a kill inside `_save_best_model`: put the newest complete best model back in place, drop the rest."""
    final, tmp, old = _best_model_paths(output_dir)
    if not final.exists():
        for candidate in (tmp, old):  # tmp is complete only once its state file is written
            if candidate.is_dir() and _read_best_model_state(candidate) is not None:
                os.replace(candidate, final)
                break
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def _check_best_model_dir(output_dir: Path, state: dict[str, Any], resumed_from: Path | None) -> None:
    """Main process, at the start: a fresh run drops an earlier run's `best_model/`; a resumed one says when the
    folder holds another update than the checkpoint's best (a kill after a later improvement: that evaluation is
    repeated and rewrites it)."""
    final = output_dir / BEST_MODEL_DIR
    if not final.exists():
        if resumed_from is not None and state["best_step"] is not None:
            logger.warning(
                "%s/ is missing but %s's best is update %s: a later evaluation must improve on it, or "
                "load_best_model_at_end keeps the last model",
                BEST_MODEL_DIR,
                resumed_from.name,
                state["best_step"],
            )
        return
    if resumed_from is None:
        shutil.rmtree(final)  # an earlier run's (or the weights of a run killed before its first checkpoint)
        return
    saved = _read_best_model_state(final) or {}
    if saved.get("step") != state["best_step"]:
        logger.info(
            "%s/ holds update %s, written after %s (best: update %s); it is rewritten if the repeated evaluation "
            "improves again",
            BEST_MODEL_DIR,
            saved.get("step"),
            resumed_from.name,
            state["best_step"],
        )


def _load_best_model(accelerator: Accelerator, output_dir: Path, model: torch.nn.Module, state: dict) -> bool:
    """Load `best_model/`'s weights into the unwrapped model on every process; False (and a warning) when the folder
    does not hold update `state["best_step"]`.

    Raises:
        ValueError: the folder's weights do not fit the model (names missing or unknown).
    """
    from safetensors.torch import load_file

    accelerator.wait_for_everyone()
    folder = output_dir / BEST_MODEL_DIR
    saved = _read_best_model_state(folder) or {}
    if saved.get("step") != state["best_step"]:
        logger.warning(
            "Cannot load the best model: %s/ holds update %s, not the best update %s (a run resumed after a kill "
            "scored that evaluation differently); the model of the last update (%d) is kept",
            BEST_MODEL_DIR,
            saved.get("step"),
            state["best_step"],
            state["global_step"],
        )
        return False
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    unwrapped = accelerator.unwrap_model(model)
    missing, unexpected = unwrapped.load_state_dict(weights, strict=False)
    # save_pretrained writes a tensor shared by two names (tied weights) once: the other name is missing but loaded
    own = unwrapped.state_dict()
    loaded = {tensor.data_ptr() for name, tensor in own.items() if name in weights}
    missing = [name for name in missing if own[name].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit the model: missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    return True


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker-friendly hyper-parameters: only bool/int/float/str/None values."""
    flat = {}
    for key, value in config.items():
        flat[key] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return flat
