"""fairseq's tri-stage learning-rate schedule (warm-up, hold, exponential decay) and the scheduler factory."""

from __future__ import annotations

import math

import pytest
import torch

from hf_speech_cl.training.schedules import (
    describe_schedule,
    get_tri_stage_schedule,
    make_scheduler,
    tri_stage_multiplier,
)


def _lrs(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_tri_stage_matches_fairseq_base_10m_phases():
    # 1000 updates, phase_ratio [0.1, 0.4, 0.5]: warm-up 100, hold 400, decay 500; peak 1e-3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    lrs = _lrs(get_tri_stage_schedule(optimizer, 1000, final_lr_scale=0.05), optimizer, 1200)
    assert lrs[0] == pytest.approx(1e-5)  # init_lr_scale 0.01 x peak
    assert lrs[50] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lrs[100] == pytest.approx(1e-3) and lrs[499] == pytest.approx(1e-3)
    assert lrs[750] == pytest.approx(1e-3 * math.exp(math.log(0.05) * 0.5))  # halfway through the decay
    assert lrs[1000] == pytest.approx(5e-5) and lrs[1199] == pytest.approx(5e-5)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # never rises after the warm-up


def test_scheduler_factory_and_errors():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(
        "tri_stage",
        optimizer,
        num_warmup_steps=999,
        num_training_steps=10,
        scheduler_kwargs={"phase_ratio": [0, 1, 0]},
    )
    assert _lrs(scheduler, optimizer, 3) == [1.0, 1.0, 1.0]  # no warm-up phase: num_warmup_steps is not used
    linear = make_scheduler(
        "linear",
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
        num_warmup_steps=2,
        num_training_steps=10,
    )
    assert linear.get_last_lr() == [0.0]
    with pytest.raises(ValueError, match="phase_ratio"):
        tri_stage_multiplier(0, num_training_steps=10, phase_ratio=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="not arguments of the tri-stage"):
        make_scheduler("tri_stage", optimizer, num_warmup_steps=0, num_training_steps=10, scheduler_kwargs={"x": 1})


def test_training_loop_follows_the_tri_stage_schedule(tmp_path):
    from test_training_loop import make_args, run

    from hf_speech_cl.training import read_metrics

    kwargs = '{"phase_ratio": [0.2, 0.3, 0.5], "final_lr_scale": 0.1}'
    args = make_args(
        tmp_path,
        max_steps=10,
        logging_steps=1,
        save_steps=5,
        lr_scheduler_type="tri_stage",
        lr_scheduler_kwargs=kwargs,
    )
    run(args)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "logs") if "lr" in r}
    # lr logged after update t is the schedule at step t: warm-up 2, hold 3, decay 5 updates; peak 0.1
    expected = {
        t: 0.1 * tri_stage_multiplier(t, num_training_steps=10, phase_ratio=(0.2, 0.3, 0.5), final_lr_scale=0.1)
        for t in range(1, 11)
    }
    assert lrs == pytest.approx(expected)
    assert lrs[10] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="not valid JSON"):
        make_args(tmp_path, lr_scheduler_kwargs="{phase_ratio: 1}")


def test_the_card_states_the_tri_stage_phases_not_the_unused_warm_up():
    schedule, warmup = describe_schedule("tri_stage", num_warmup_steps=24, num_training_steps=600)
    assert warmup == 60 and schedule.startswith("tri_stage (warm-up 60 / hold 240 / decay 300 updates")
    assert "0.01 -> 1 -> 0.05" in schedule
    _, warmup = describe_schedule(
        "tri_stage", num_warmup_steps=24, num_training_steps=600, scheduler_kwargs={"phase_ratio": [0.2, 0.3, 0.5]}
    )
    assert warmup == 120
    assert describe_schedule("linear", num_warmup_steps=24, num_training_steps=600) == ("linear", 24)
