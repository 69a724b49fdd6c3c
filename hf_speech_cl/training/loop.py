"""The one training loop every pretraining recipe uses (plain `accelerate`, no objective-specific branches).

The loop knows a model only through `model(**batch)` returning a `ModelOutput` whose `loss` it minimises and whose
other 0-d tensor fields (loss components, retrieval accuracy, codevector perplexity, ...) it averages and logs.
What differs between objectives enters through three hooks:

- `batch_transform(batch, generator) -> batch`: runs on the training device after the batch is moved there (SimCLR's
  two augmented views). `generator` is seeded from `(seed, update, process, micro-batch)`, so augmentation is
  reproducible and a resumed run draws exactly what an uninterrupted one would have.
- `step_callbacks`: each is called as `callback(model, update)` before every forward pass of that update (e.g. the
  Gumbel-softmax temperature decay of wav2vec 2.0).
- `metrics_fn(outputs, batch) -> dict[str, tensor]`: what to log from a forward pass (default: every 0-d float field
  of the output). Objective-specific metrics (per-frame losses, masked fraction) come from here.
- `loss_normalizer(batch) -> tensor`: a count (e.g. masked frames) for models whose loss is a *sum*; the loss is
  divided by that count summed over all processes and multiplied by the number of processes, so that after DDP's
  gradient averaging the update equals the gradient of (total loss / total count) — the normalisation of fairseq's
  wav2vec 2.0 criterion and transformers' `run_wav2vec2_pretraining_no_trainer.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from .arguments import PretrainingArguments
from .checkpointing import (
    TRAINER_STATE_NAME,
    atomic_write_text,
    find_last_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    remove_incomplete_checkpoints,
)
from .tracking import JSONLinesTracker

__all__ = ["NonFiniteLossError", "TrainResult", "evaluate", "make_accelerator", "step_generator", "train"]

logger = logging.getLogger(__name__)

BatchTransform = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
StepCallback = Callable[[torch.nn.Module, int], None]
LossNormalizer = Callable[[dict[str, torch.Tensor]], torch.Tensor]
MetricsFn = Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive updates had a NaN/inf loss or gradient."""


@dataclass
class TrainResult:
    """What a finished `train` call reports (also written to `output_dir/train_results.json`).

    Attributes:
        global_step: updates done in total (including those before a resume).
        first_metrics / last_metrics: the first and last logged averages (`loss`, components, `lr`, ...).
        eval_metrics: averages over the eval data at the end (empty without eval data).
        wall_time_s: seconds this call ran (not counting earlier runs before a resume).
        audio_seconds: seconds of input audio consumed in total, over all processes and runs.
        audio_seconds_per_second: throughput of this call, over all processes.
        nonfinite_updates: updates skipped because the loss or gradient was NaN/inf.
        resumed_from: the checkpoint this call continued from, if any.
    """

    global_step: int = 0
    first_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    audio_seconds: float = 0.0
    audio_seconds_per_second: float = 0.0
    nonfinite_updates: int = 0
    resumed_from: str | None = None


def make_accelerator(args: PretrainingArguments) -> Accelerator:
    """An `Accelerator` for `args`: mixed precision, gradient accumulation, trackers, seed.

    Trackers come from `args.report_to`; `jsonl` is ours (`JSONLinesTracker`), other names are accelerate's.
    """
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
    # Under torchrun on a machine without CUDA, accelerate only reaches MULTI_CPU (gloo) with cpu=True; without it,
    # every process believes it is process 0 of 1 while torch.distributed is initialised (accelerate 1.15).
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=multi_process and not torch.cuda.is_available(),
        kwargs_handlers=kwargs_handlers,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    set_seed(args.seed, device_specific=False)
    return accelerator


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


def step_generator(device: torch.device, seed: int, update: int, process: int, micro: int) -> torch.Generator:
    """The random generator of one micro-batch's `batch_transform` (masks, augmentations): a pure function of the run
    seed, the update (-1 in evaluation), the process index and the micro-batch index, so a resumed or re-run update
    draws the same numbers, and every process different ones."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + update * 10_007 + process * 101 + micro) % (2**63 - 1))
    return generator


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

    `batch_transform` draws from a generator with a fixed seed, so the same checkpoint always gets the same score.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    count = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        if batch is None:
            continue
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

    Returns:
        A `TrainResult`. The trained model is `accelerator.unwrap_model(model)` (the object passed in).

    Raises:
        NonFiniteLossError: after `args.max_consecutive_nonfinite` consecutive NaN/inf updates.
        ValueError: if the training data yields no batch at all.
    """
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
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
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
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
        "first_metrics": {},
    }
    resumed_from = find_last_checkpoint(output_dir) if args.resume else None
    if resumed_from is not None:
        accelerator.load_state(str(resumed_from))
        state.update(read_trainer_state(resumed_from))
        accelerator.print(
            f"Resuming from {resumed_from} at update {state['global_step']} "
            f"(epoch {state['epoch']}, batch {state['batches_in_epoch']})"
        )

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
    micro = 0
    max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
    model.train()

    while state["global_step"] < args.max_steps:
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(state["epoch"])
        loader = train_dataloader
        if state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_dataloader, state["batches_in_epoch"])
        yielded = False
        for batch in loader:
            yielded = True
            state["batches_in_epoch"] += 1
            if batch is None:
                continue
            step = state["global_step"]
            seconds = _audio_seconds(batch, sampling_rate)
            interval_audio += seconds
            run_audio += seconds
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
                    local = loss_normalizer(batch).detach().float().to(loss.device)
                    count = accelerator.reduce(local.clone(), "sum")
                    if metrics_fn is None:
                        logged["loss"] = loss.detach().float() / local.clamp(min=1)
                    loss = loss * accelerator.num_processes / count.clamp(min=1)
                accelerator.backward(loss)
                for key, value in logged.items():
                    sums[key] = sums[key] + value
                micro_batches += 1
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    finite = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)))
                    if finite and torch.isfinite(loss.detach()).all():
                        optimizer.step()
                        scheduler.step()
                        consecutive_nonfinite = 0
                    else:
                        state["nonfinite_updates"] += 1
                        consecutive_nonfinite += 1
                        logger.warning(
                            "update %d: loss %s / gradient norm %s is not finite; update skipped",
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
                eval_metrics = {}
                if eval_dataloader is not None:
                    eval_metrics.update(
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
                    eval_metrics.update(eval_fn(model))
                    model.train()
                if eval_metrics:
                    accelerator.log(eval_metrics, step=step)

            if step % args.save_steps == 0 or step == args.max_steps:
                _save_checkpoint(accelerator, output_dir, state, args.save_total_limit)

            if step >= args.max_steps:
                break
        else:
            if not yielded:
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
    result.audio_seconds = state["audio_seconds"]
    result.wall_time_s = time.perf_counter() - run_start
    total_run_audio = float(accelerator.reduce(torch.tensor(run_audio, device=accelerator.device), "sum"))
    result.audio_seconds_per_second = total_run_audio / max(result.wall_time_s, 1e-9)
    if eval_dataloader is not None:
        result.eval_metrics.update(
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
        result.eval_metrics.update(eval_fn(model))
    if result.eval_metrics:
        accelerator.log(result.eval_metrics, step=result.global_step)
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


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict[str, Any], keep: int | None) -> None:
    """`save_state` into a temporary folder, then rename: a checkpoint either exists complete or not at all."""
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / TRAINER_STATE_NAME, json.dumps(state, indent=2, default=float))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker-friendly hyper-parameters: only bool/int/float/str/None values."""
    flat = {}
    for key, value in config.items():
        flat[key] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return flat
