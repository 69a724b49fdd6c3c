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
`num_batches_tracked`) are restored to what they were before that update's forward passes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
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
        global_step: updates done in total (including those before a resume).
        first_metrics / last_metrics: the first and last logged averages (`loss`, components, `lr`, ...).
        eval_metrics: averages over the eval data at the end (empty without eval data).
        wall_time_s: seconds this call ran (not counting earlier runs before a resume).
        audio_seconds: seconds of input audio consumed in total, over all processes and runs.
        audio_seconds_per_second: throughput of this call, over all processes.
        nonfinite_updates: updates skipped because the loss or gradient was NaN/inf.
        skipped_batches: micro-batches every process skipped because one process had no readable clip.
        resumed_from: the checkpoint this call continued from, if any.
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
        accelerator.load_state(str(resumed_from))
        state.update(saved)
        accelerator.print(
            f"Resuming from {resumed_from} at update {state['global_step']} "
            f"(epoch {state['epoch']}, batch {state['batches_in_epoch']})"
        )

    if accelerator.is_main_process:
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
            step = state["global_step"]
            if _any_process(accelerator, batch is None):
                # every process skips together: one process alone entering forward/backward would wait forever in
                # DDP's all-reduce (or SimCLR's all-gather)
                state["skipped_batches"] += 1
                logger.warning(
                    "update %d: a batch without any readable clip on %s; every process skips it (%d skipped so far)",
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
    result.skipped_batches = state["skipped_batches"]
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
        apply_default_modes(tmp)  # safetensors writes 0o600 (safetensors/safetensors#782)
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
