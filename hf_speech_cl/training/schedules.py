"""Learning-rate schedules that `transformers.get_scheduler` does not have: fairseq's tri-stage schedule.

`make_scheduler` is what the training loop calls: `lr_scheduler_type="tri_stage"` gives `get_tri_stage_schedule`,
any other name goes to `transformers.get_scheduler` (with `lr_scheduler_kwargs` as its
`scheduler_specific_kwargs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

__all__ = [
    "TRI_STAGE",
    "TRI_STAGE_DEFAULTS",
    "describe_schedule",
    "get_tri_stage_schedule",
    "make_scheduler",
    "tri_stage_multiplier",
]

#: The `lr_scheduler_type` name of `get_tri_stage_schedule`.
TRI_STAGE = "tri_stage"
#: Its arguments' defaults (fairseq `base_10m.yaml` and `TriStageLRSchedule`; see `tri_stage_multiplier`).
TRI_STAGE_DEFAULTS: dict[str, Any] = {"phase_ratio": (0.1, 0.4, 0.5), "init_lr_scale": 0.01, "final_lr_scale": 0.05}


def tri_stage_multiplier(
    step: int,
    *,
    num_training_steps: int,
    phase_ratio: Sequence[float] = TRI_STAGE_DEFAULTS["phase_ratio"],
    init_lr_scale: float = TRI_STAGE_DEFAULTS["init_lr_scale"],
    final_lr_scale: float = TRI_STAGE_DEFAULTS["final_lr_scale"],
) -> float:
    """The factor of the peak learning rate at `step` of fairseq's tri-stage schedule.

    fairseq `fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py` (`TriStageLRSchedule`), the schedule of wav2vec
    2.0 / HuBERT fine-tuning (`examples/wav2vec/config/finetuning/base_10m.yaml`: `phase_ratio: [0.1, 0.4, 0.5]`,
    `final_lr_scale: 0.05`, fairseq's default `init_lr_scale: 0.01`): with `w, h, d` the phase lengths
    `int(num_training_steps * ratio)`,

    - warm-up, `step < w`: linear from `init_lr_scale` to 1;
    - hold, `step < w + h`: 1;
    - decay, `step <= w + h + d`: `exp(log(final_lr_scale) * (step - w - h) / d)`, exponential from 1 to
      `final_lr_scale`;
    - after: `final_lr_scale`.

    Raises:
        ValueError: `phase_ratio` not three non-negative numbers summing to at most 1, or scales outside (0, 1].
    """
    warmup, hold, decay = _phases(num_training_steps, phase_ratio, init_lr_scale, final_lr_scale)
    if step < warmup:
        return init_lr_scale + (1.0 - init_lr_scale) * step / warmup
    step -= warmup
    if step < hold:
        return 1.0
    step -= hold
    if step <= decay:
        return math.exp(math.log(final_lr_scale) * step / max(decay, 1))
    return final_lr_scale


def _phases(
    num_training_steps: int, phase_ratio: Sequence[float], init_lr_scale: float, final_lr_scale: float
) -> tuple[int, int, int]:
    ratios = [float(r) for r in phase_ratio]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) > 1 + 1e-6:
        raise ValueError(
            f"phase_ratio must be three non-negative fractions (warm-up, hold, decay) summing to at most 1, got "
            f"{list(phase_ratio)}"
        )
    for name, value in (("init_lr_scale", init_lr_scale), ("final_lr_scale", final_lr_scale)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    return tuple(int(num_training_steps * r) for r in ratios)  # type: ignore[return-value]


def get_tri_stage_schedule(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    *,
    phase_ratio: Sequence[float] = TRI_STAGE_DEFAULTS["phase_ratio"],
    init_lr_scale: float = TRI_STAGE_DEFAULTS["init_lr_scale"],
    final_lr_scale: float = TRI_STAGE_DEFAULTS["final_lr_scale"],
) -> LambdaLR:
    """A `LambdaLR` following `tri_stage_multiplier` (the optimizer's learning rate is the peak).

    Raises:
        ValueError: see `tri_stage_multiplier`.
    """
    _phases(num_training_steps, phase_ratio, init_lr_scale, final_lr_scale)  # validate now, not at the first step
    multiplier = partial(
        tri_stage_multiplier,
        num_training_steps=num_training_steps,
        phase_ratio=tuple(phase_ratio),
        init_lr_scale=init_lr_scale,
        final_lr_scale=final_lr_scale,
    )
    return LambdaLR(optimizer, multiplier)


def describe_schedule(
    name: str, *, num_warmup_steps: int, num_training_steps: int, scheduler_kwargs: dict[str, Any] | None = None
) -> tuple[str, int]:
    """`(schedule, warm-up updates)` as a model card states them: the tri-stage schedule's warm-up is its first phase
    (`num_warmup_steps` is unused there), so its card names the three phases instead.

    Raises:
        ValueError: see `tri_stage_multiplier`.
    """
    if name != TRI_STAGE:
        return name, num_warmup_steps
    kwargs = {**TRI_STAGE_DEFAULTS, **(scheduler_kwargs or {})}
    warmup, hold, decay = _phases(num_training_steps, **kwargs)
    return (
        f"tri_stage (warm-up {warmup} / hold {hold} / decay {decay} updates; {kwargs['init_lr_scale']:g} -> 1 -> "
        f"{kwargs['final_lr_scale']:g} x peak)",
        warmup,
    )


def make_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    scheduler_kwargs: dict[str, Any] | None = None,
) -> Any:
    """`get_tri_stage_schedule` for `name == "tri_stage"` (its warm-up is its first phase: `num_warmup_steps` is not
    used), else `transformers.get_scheduler(name, ...)`.

    Raises:
        ValueError: an unknown name or arguments the schedule does not take.
    """
    kwargs = dict(scheduler_kwargs or {})
    if name == TRI_STAGE:
        unknown = set(kwargs) - set(TRI_STAGE_DEFAULTS)
        if unknown:
            raise ValueError(
                f"lr_scheduler_kwargs {sorted(unknown)} are not arguments of the tri-stage schedule (phase_ratio, "
                "init_lr_scale, final_lr_scale)"
            )
        return get_tri_stage_schedule(optimizer, num_training_steps, **kwargs)
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=kwargs or None,
    )
