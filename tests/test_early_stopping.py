"""Best model tracking, early stopping and the one-line parameter summary.

The loop runs on the toy regression model of tests/test_training_loop.py. Its weight `linear.weight` rises
monotonically from about 0.2 towards 3 under the fixed seed, so the metric `eval_dist = |weight - 1.5|` improves,
reaches its best once the weight passes 1.5 (update 18 with evaluations every 2 updates) and worsens afterwards:
with patience 3 training stops at update 24. The metric is a function of the weights, so re-evaluating the loaded
best model must reproduce the best value.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from test_training_loop import Interrupt, make_args, run

from hf_speech_cl.training import BEST_MODEL_DIR, PretrainingArguments, find_last_checkpoint, read_metrics
from hf_speech_cl.training.checkpointing import read_trainer_state
from hf_speech_cl.training.loop import _track_best

TARGET = 1.5
BEST, STOP, PATIENCE, EVAL_STEPS = 18, 24, 3, 2


class WeightDistance:
    """`eval_fn`: `eval_dist = |linear.weight - TARGET|`; keeps a copy of the weights of every call."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, model):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        weight = float(model.linear.weight.detach())
        return {"eval_dist": abs(weight - TARGET), "eval_weight": weight}


def stopping_args(tmp_path, **overrides):
    defaults = dict(
        max_steps=40,
        eval_steps=EVAL_STEPS,
        save_steps=5,
        metric_for_best_model="dist",  # without the eval_ prefix, as transformers accepts it
        greater_is_better=False,  # a name not ending in loss/cer/wer would be inferred greater-is-better
        early_stopping_patience=PATIENCE,
        load_best_model_at_end=True,
    )
    return make_args(tmp_path, **{**defaults, **overrides})


def assert_weights_equal(model, expected):
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_training_stops_after_patience_and_keeps_the_best_model(tmp_path, caplog):
    evaluator = WeightDistance()
    args = stopping_args(tmp_path)
    with caplog.at_level(logging.INFO, logger="hf_speech_cl.training.loop"):
        model, result = run(args, eval_fn=evaluator)
    # evaluations at 2, 4, ..., 24 (12), then the best model's re-evaluation; no final one (update 24 was evaluated)
    assert len(evaluator.weights) == STOP // EVAL_STEPS + 1
    assert result.stopped_early and result.global_step == STOP and result.best_step == BEST
    assert result.model_step == BEST and result.evaluations_without_improvement == PATIENCE
    best_weights = evaluator.weights[BEST // EVAL_STEPS - 1]
    assert result.best_metric == pytest.approx(abs(float(best_weights["linear.weight"]) - TARGET))
    assert result.eval_metrics["eval_dist"] == result.best_metric  # the returned model, re-evaluated
    assert_weights_equal(model, best_weights)
    saved = load_file(tmp_path / "run" / BEST_MODEL_DIR / "model.safetensors")
    assert all(torch.equal(saved[k], best_weights[k]) for k in best_weights)
    report = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert (report["best_step"], report["stopped_early"], report["global_step"]) == (BEST, True, STOP)
    # the stopping update is checkpointed (24 is no save step) with the state a rerun needs to stay stopped
    last = find_last_checkpoint(args.output_dir)
    assert last.name == f"checkpoint-{STOP}" and read_trainer_state(last)["stopped_early"]
    assert max(r["step"] for r in read_metrics(tmp_path / "run" / "logs")) == STOP
    lines = [r.getMessage() for r in caplog.records]
    per_evaluation = [line for line in lines if line.startswith("update ") and "eval_dist" in line]
    assert len(per_evaluation) == STOP // EVAL_STEPS
    assert (
        per_evaluation[BEST // EVAL_STEPS - 1].startswith(f"update {BEST}: eval_dist")
        and "new best" in (per_evaluation[BEST // EVAL_STEPS - 1])
    )
    assert per_evaluation[-1].endswith(
        f"best {result.best_metric:.6g} at update {BEST}; 3 of 3 evaluations without improvement"
    )
    assert sum(line.startswith(f"Early stopping at update {STOP}") for line in lines) == 1

    # without load_best_model_at_end the last weights are returned, and the same best is reported
    evaluator = WeightDistance()
    model, result = run(stopping_args(tmp_path / "last", load_best_model_at_end=False), eval_fn=evaluator)
    assert (result.best_step, result.global_step, result.model_step) == (BEST, STOP, STOP)
    assert_weights_equal(model, evaluator.weights[-1])


def test_resume_after_a_crash_gives_the_same_best_step_and_stopping_update(tmp_path):
    reference_model, reference = run(stopping_args(tmp_path / "a"), eval_fn=WeightDistance())

    def crash_at(step):
        def callback(model, update):
            if update == step:
                raise Interrupt

        return callback

    # killed after the evaluation of update 18 wrote best_model/ but before checkpoint-20: checkpoint-15 knows
    # only update 14 as the best, and the repeated evaluations of updates 16 and 18 must find the same best
    args = stopping_args(tmp_path / "b")
    with pytest.raises(Interrupt):
        run(args, eval_fn=WeightDistance(), step_callbacks=[crash_at(BEST + 1)])
    assert find_last_checkpoint(args.output_dir).name == "checkpoint-15"
    assert read_trainer_state(find_last_checkpoint(args.output_dir))["best_step"] == 14
    assert json.loads((tmp_path / "b" / "run" / BEST_MODEL_DIR / "best_model_state.json").read_text())["step"] == BEST
    # killed again after checkpoint-20, which holds one evaluation without improvement (update 20): the count must
    # carry over, or the resumed run would stop at update 26
    with pytest.raises(Interrupt):
        run(args, eval_fn=WeightDistance(), step_callbacks=[crash_at(21)])
    state = read_trainer_state(find_last_checkpoint(args.output_dir))
    assert (state["global_step"], state["best_step"], state["evaluations_without_improvement"]) == (20, BEST, 1)
    model, result = run(args, eval_fn=WeightDistance())
    assert result.resumed_from.endswith("checkpoint-20")
    for key in ("best_step", "best_metric", "global_step", "stopped_early", "model_step"):
        assert getattr(result, key) == getattr(reference, key), key
    assert_weights_equal(model, reference_model.state_dict())

    # rerunning the finished command trains nothing more: it stays stopped at the same update with the same model
    evaluator = WeightDistance()
    model, again = run(args, eval_fn=evaluator)
    assert (again.global_step, again.best_step, again.stopped_early) == (STOP, BEST, True)
    assert not [r for r in read_metrics(tmp_path / "b" / "run" / "logs") if r["step"] > STOP]
    assert_weights_equal(model, reference_model.state_dict())


def test_threshold_and_nan_follow_transformers_semantics():
    args = make_args_only(metric_for_best_model="loss", early_stopping_patience=2, early_stopping_threshold=0.08)
    state = {"best_metric": None, "best_step": None, "evaluations_without_improvement": 0}
    # (value, new best?, count after, stop?)
    expected = [(1.0, True, 0, False), (0.9, True, 0, False), (0.85, True, 1, False), (0.95, False, 2, True)]
    for step, (value, improved, count, stop) in enumerate(expected, start=1):
        assert _track_best(state, value, step, args) == (improved, stop), step
        assert state["evaluations_without_improvement"] == count, step
    assert (state["best_metric"], state["best_step"]) == (0.85, 3)  # a small improvement is still the best
    assert _track_best(state, float("nan"), 5, args) == (False, True) and state["best_step"] == 3


def test_min_steps_delays_the_patience_count_and_sets_its_own_bar(tmp_path):
    # the toy metric improves until update 18 and worsens after: with patience 3 it stops at 24 (the test above);
    # with nothing before update 30 counting, update 30 sets the bar and 32, 34, 36 fail it: stop at 36, best 18
    min_steps = 30
    model, result = run(stopping_args(tmp_path, early_stopping_min_steps=min_steps), eval_fn=WeightDistance())
    assert result.stopped_early and result.best_step == BEST and result.model_step == BEST
    assert result.global_step == min_steps + PATIENCE * EVAL_STEPS
    # killed after update 32's evaluation counted against the bar of update 30: the bar must come back with
    # checkpoint-30, or update 32 would set a new one and the resumed run stop at 38
    args = stopping_args(tmp_path / "killed", early_stopping_min_steps=min_steps)
    with pytest.raises(Interrupt):
        run(args, eval_fn=WeightDistance(), step_callbacks=[lambda model, update: _raise_at(update, 33)])
    assert find_last_checkpoint(args.output_dir).name == "checkpoint-30"
    _, resumed = run(args, eval_fn=WeightDistance())
    assert (resumed.global_step, resumed.best_step) == (result.global_step, BEST)
    # unit level, lower is better, patience 1, counted from update 3: the best of update 1 (a plateau, a frozen
    # encoder) stays the best model, but a run improving from update 3 on is not stopped for failing to beat it
    args = make_args_only(metric_for_best_model="loss", early_stopping_patience=1, early_stopping_min_steps=3)
    state = {"best_metric": None, "best_step": None, "evaluations_without_improvement": 0}
    values = {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.8, 5: 0.7, 6: 0.75}
    decisions = [_track_best(state, value, step, args) for step, value in values.items()]
    assert decisions == [(True, False), (False, False), (False, False), (False, False), (False, False), (False, True)]
    assert (state["best_metric"], state["best_step"], state["patience_best"]) == (0.5, 1, 0.7)


def _raise_at(update, step):
    if update == step:
        raise Interrupt


def make_args_only(**overrides):
    return PretrainingArguments(output_dir="unused", eval_steps=1, **overrides)


@pytest.mark.parametrize(
    ("name", "greater"), [("cer", False), ("eval_wer", False), ("eval_loss", False), ("accuracy", True)]
)
def test_greater_is_better_is_inferred_from_the_name(name, greater):
    assert make_args_only(metric_for_best_model=name).greater_is_better is greater
    assert make_args_only(metric_for_best_model=name).metric_key == f"eval_{name.removeprefix('eval_')}"


def test_load_best_model_defaults_to_the_loss_as_transformers():
    args = make_args_only(load_best_model_at_end=True)
    assert (args.metric_key, args.greater_is_better) == ("eval_loss", False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"early_stopping_patience": 2}, "early_stopping_patience=2 needs metric_for_best_model"),
        ({"early_stopping_patience": 2, "metric_for_best_model": "cer", "eval_steps": None}, "needs eval_steps"),
        ({"early_stopping_patience": 0, "metric_for_best_model": "cer"}, "early_stopping_patience must be >= 1"),
        ({"early_stopping_threshold": 0.1, "metric_for_best_model": "cer"}, "pass early_stopping_patience too"),
        ({"early_stopping_threshold": -1.0}, "early_stopping_threshold must be >= 0"),
        ({"early_stopping_min_steps": 10, "metric_for_best_model": "cer"}, "min_steps=10 is only used by early"),
        ({"early_stopping_min_steps": -1}, "early_stopping_min_steps must be >= 0"),
        ({"greater_is_better": True}, "greater_is_better has no effect without metric_for_best_model"),
        ({"load_best_model_at_end": True, "eval_steps": None}, "load_best_model_at_end needs eval_steps"),
        ({"metric_for_best_model": "eval_"}, "metric_for_best_model must name a metric"),
    ],
)
def test_invalid_combinations_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PretrainingArguments(output_dir="unused", **{"eval_steps": 1, **kwargs})


def test_a_metric_the_evaluation_does_not_return_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="returned no 'eval_cer'; it returned: eval_dist, eval_weight"):
        run(stopping_args(tmp_path, metric_for_best_model="cer"), eval_fn=WeightDistance())


def test_parameter_summary_counts_by_module_with_the_feature_encoder_frozen():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from hf_speech_cl.finetuning import format_count, parameter_groups, parameter_summary
    from hf_speech_cl.presets import encoder_preset

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**encoder_preset("tiny"), vocab_size=12))
    model.freeze_feature_encoder()
    trainable, frozen = parameter_groups(model)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert frozen == {"wav2vec2.feature_extractor": count(model.wav2vec2.feature_extractor)}
    expected = {
        "wav2vec2.feature_projection": count(model.wav2vec2.feature_projection),
        "wav2vec2.encoder": count(model.wav2vec2.encoder),
        "lm_head": count(model.lm_head),
    }
    if model.config.mask_time_prob > 0:  # a bare parameter of the mixed module is its own group
        expected["wav2vec2.masked_spec_embed"] = model.wav2vec2.masked_spec_embed.numel()
    assert trainable == expected
    line = parameter_summary(model)
    assert "\n" not in line and "feature_extractor.conv_layers" not in line  # modules, not parameter names
    assert f"frozen: wav2vec2.feature_extractor {format_count(frozen['wav2vec2.feature_extractor'])}" in line
    assert f"lm_head {format_count(count(model.lm_head))}" in line
    assert line.startswith(f"{format_count(sum(trainable.values()))} of {format_count(count(model))} parameters")
    assert (format_count(812), format_count(8_192), format_count(4_912_000), format_count(95_000_000)) == (
        "812",
        "8.2 k",
        "4.9 M",
        "95 M",
    )


def test_a_kill_while_replacing_best_model_keeps_a_complete_one(tmp_path):
    from hf_speech_cl.training.loop import _recover_best_model_dir

    # killed between moving the old folder aside and renaming the new one: the new one is complete
    (tmp_path / ".old-best_model").mkdir()
    (tmp_path / ".old-best_model" / "best_model_state.json").write_text('{"step": 4}')
    (tmp_path / ".tmp-best_model").mkdir()
    (tmp_path / ".tmp-best_model" / "best_model_state.json").write_text('{"step": 6}')
    _recover_best_model_dir(tmp_path)
    assert json.loads((tmp_path / BEST_MODEL_DIR / "best_model_state.json").read_text()) == {"step": 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_MODEL_DIR]
    # killed while writing the new one (no state file yet): the old one stays
    (tmp_path / ".tmp-best_model").mkdir()
    (tmp_path / ".tmp-best_model" / "model.safetensors").write_text("half")
    _recover_best_model_dir(tmp_path)
    assert json.loads((tmp_path / BEST_MODEL_DIR / "best_model_state.json").read_text()) == {"step": 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_MODEL_DIR]


def test_sigkill_during_a_finetuning_run_resumes_to_the_same_best_and_stopping_update(tmp_path, tiny_speech_commands):
    """The classification recipe (tiny model from scratch, evaluated every update) killed with SIGKILL in the update
    that stops it, after checkpoint-3; the rerun must stop at the same update and save and test the same model."""
    from safetensors.torch import load_file
    from test_fault_tolerance import run_recipe

    from hf_speech_cl.data.synthetic import TINY_PARAMS
    from hf_speech_cl.training import list_checkpoints

    def args(out):
        return [
            "--output_dir", str(out), "--model_size", "tiny", "--max_steps", "12", "--save_steps", "3", "--eval_steps", "1",
            "--logging_steps", "1", "--warmup_steps", "1", "--per_device_train_batch_size", "4",
            "--dataset_name", "synthetic-speech-commands", "--dataset_kwargs",
            json.dumps(TINY_PARAMS["synthetic-speech-commands"]), "--model_name_or_path", "none",
            "--max_eval_samples", "8", "--early_stopping_patience", "2", "--load_best_model_at_end",
        ]  # fmt: skip

    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    done = run_recipe("finetune_audio_classification", "none", args(reference_out))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads((reference_out / "train_results.json").read_text())
    stop = reference["global_step"]
    # what this test needs of the run (accuracy metric "accuracy" by default; 0, 0.125, 0, 0.125 on 8 clips)
    assert reference["stopped_early"] and reference["best_step"] < stop and stop > 3, reference
    assert reference["model_step"] == reference["best_step"]

    died = run_recipe("finetune_audio_classification", f"update:{stop - 1}", args(killed_out))
    assert died.returncode == -9, (died.returncode, died.stderr[-3000:])
    last = list_checkpoints(killed_out)[-1]
    assert last.name == "checkpoint-3" and not read_trainer_state(last)["stopped_early"]
    resumed = run_recipe("finetune_audio_classification", "none", args(killed_out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((killed_out / "train_results.json").read_text())
    assert after["resumed_from"].endswith("checkpoint-3")
    for key in ("global_step", "best_step", "best_metric", "stopped_early", "model_step"):
        assert after[key] == reference[key], key
    scores = [json.loads((out / "all_results.json").read_text()) for out in (reference_out, killed_out)]
    assert (
        scores[0]["test_accuracy"] == scores[1]["test_accuracy"] and scores[1]["model_step"] == reference["best_step"]
    )
    # the saved (and tested) model is the best one, in both runs the same
    final = [load_file(out / "model.safetensors") for out in (reference_out, killed_out)]
    best = load_file(reference_out / BEST_MODEL_DIR / "model.safetensors")
    for name, value in final[0].items():
        assert torch.equal(value, best[name]) and torch.allclose(value, final[1][name], rtol=1e-5, atol=1e-6), name
    assert f"update {reference['best_step']} of {stop} (the best)" in (killed_out / "README.md").read_text()
