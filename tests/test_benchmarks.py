"""Smoke test of benchmarks/label_efficiency.py: the orchestration end to end on tiny corpora (seconds of audio)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_label_efficiency_smoke_reports_spread_and_target_and_resumes(tmp_path, corpus_cache_dir):
    bench = load_benchmark("label_efficiency")
    results = tmp_path / "results"
    argv = [
        "--preset", "cpu", "--smoke",  # the cpu preset's structure (early stopping, ...) at the smoke sizes
        "--objectives", "none,wav2vec2",
        "--tasks", "asr",
        "--label_minutes", "0.5",
        "--seeds", "0,1",
        "--torch_threads", "1",  # the test machine is shared; one thread is the faster there
        "--runs_dir", str(tmp_path / "runs"),
        "--results_dir", str(results),
    ]  # fmt: skip
    payload = bench.main([*argv, "--jobs", "2"])  # two child processes, a fine-tune waiting for its pretraining

    assert {p.name for p in results.iterdir()} >= {f"label_efficiency_smoke.{ext}" for ext in ("json", "md", "png")}
    data = json.loads((results / "label_efficiency_smoke.json").read_text())
    assert (
        data["preset"] == "cpu"
        and data["preset_settings"]["model_size"] == "tiny"
        and data["seeds"] == [0, 1]
        and data["hardware"]["torch"]
    )
    assert [r["name"] for r in data["runs"]] == [  # ASR in rounds: every objective at one seed, then the next
        "pretrain-wav2vec2",
        "asr-none-0.5min-seed0",
        "asr-wav2vec2-0.5min-seed0",
        "asr-none-0.5min-seed1",
        "asr-wav2vec2-0.5min-seed1",
    ]
    objectives = data["summary"]["objectives"]
    assert objectives["wav2vec2"]["pretraining"]["updates"] == bench.PRESETS["smoke"].pretrain_updates
    for objective in ("none", "wav2vec2"):
        for metric in ("wer", "cer", "lm_wer", "lm_cer"):  # greedy, and the beam search + word LM (--lm_decoding)
            spread = objectives[objective]["asr"]["0.5"][metric]
            assert set(spread["per_seed"]) == {"0", "1"} and spread["std"] is not None
            assert spread["min"] <= spread["mean"] <= spread["max"]
        # early stopping on validation CER: the updates trained and the (best) update scored are reported per seed
        asr = objectives[objective]["asr"]["0.5"]
        assert set(asr["updates"]["per_seed"]) == {"0", "1"}
        assert 1 <= asr["scored_update"]["min"] <= asr["updates"]["max"] <= bench.PRESETS["smoke"].asr_updates
    for run in data["runs"]:
        if run["kind"] == "asr":
            assert (
                "--early_stopping_patience" in run["argv"] and run["train"]["best_step"] == run["train"]["model_step"]
            )
    target = data["summary"]["target"]
    assert target["label_minutes"] == 0.5 and target["wer"]["best_objective"] == "wav2vec2"
    assert isinstance(target["wer"]["met"], bool)
    markdown = (results / "label_efficiency_smoke.md").read_text()
    assert "| `none` |" in markdown and "| `wav2vec2` | 2 / " in markdown and "Target" in markdown
    assert "LM WER 0.5 min" in markdown and "LM WER: best pretrained" in markdown
    assert "linear phone probe" in markdown and "updates trained / scored" in markdown

    assert data["jobs"] == 2 and data["threads_per_job"] == 1
    assert (tmp_path / "runs" / "cpu-smoke" / "asr-none-0.5min-seed0.log").is_file()  # each child's own log

    # A rerun (in this process) finds every sub-run finished and trains nothing.
    again = bench.main(argv)
    assert [r["finished_at"] for r in again["runs"]] == [r["finished_at"] for r in payload["runs"]]
    # the benchmark's wall time adds up over its invocations (a multi-session preset is killed and rerun)
    assert payload["timings"]["invocations"] == 1 and again["timings"]["invocations"] == 2
    assert again["timings"]["total_s"] >= payload["timings"]["total_s"] > 0
    assert all(r["attempts"] == 1 and r["wall_time_s"] > 0 for r in payload["runs"])
    # A finished sub-run made with other arguments is refused, not silently reused.
    run = bench.finetuning_run(bench.smoke_version(bench.PRESETS["cpu"]), "none", "asr", 0, 0.5)
    run = dataclasses.replace(run, argv=[*run.argv, "--learning_rate", "1e-4"])
    with pytest.raises(ValueError, match="other arguments"):
        bench.execute(run, tmp_path / "runs" / "cpu-smoke")


@pytest.mark.slow
def test_pretraining_curve_smoke_probes_every_checkpoint_and_resumes(tmp_path, corpus_cache_dir, monkeypatch):
    bench = load_benchmark("pretraining_curve")
    argv = ["--smoke", "--objective", "hubert", "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path)]
    payload = bench.main(argv)
    # a probe of each checkpoint (updates 2 and 4), with the updates' training metrics and both references
    assert [row["step"] for row in payload["curve"]] == [2, 4]
    assert all(0.0 < row["accuracy"] <= 1.0 and "accuracy_masked" in row["metrics"] for row in payload["curve"])
    assert set(payload["references"]) == {"mfcc", "random"}
    hours = [row["audio_hours"] for row in payload["curve"]]
    assert 0 < hours[0] < hours[1] <= 4 * 2 * 1.5 / 3600  # 4 updates of 2 crops of at most 1.5 s
    table = (tmp_path / "pretraining_curve_hubert_smoke.md").read_text()
    assert "| 4 |" in table and "MFCC" in table
    # rerun: the recipe finds its run finished and no checkpoint is probed again (the partial results are reused)
    from hf_speech_cl.finetuning import PhoneProbe

    def refuse(self, checkpoint):
        raise AssertionError(f"{checkpoint} probed again")

    monkeypatch.setattr(PhoneProbe, "__call__", refuse)
    again = bench.main(argv)
    assert again["curve"] == json.loads(json.dumps(payload["curve"], default=float))
    assert again["references"] == payload["references"]


def test_cpu_long_plan_checkpoints_often_and_gives_every_objective_the_same_audio():
    """The multi-session preset: every sub-run checkpoints every `save_every` updates (a killed session loses at most
    that much per sub-run), HuBERT's updates are split 3:1 over its 2 iterations, and fine-tunes early-stop under the
    cap. Fails if the interval is not passed on (the default, a quarter of 4000 updates, would lose up to 1000)."""
    bench = load_benchmark("label_efficiency")
    preset = bench.PRESETS["cpu-long"]
    runs = bench.plan_runs(preset, list(bench.OBJECTIVES), ["asr"], list(preset.seeds))

    def flag(run, name):
        return run.argv[run.argv.index(name) + 1]

    assert {flag(r, "--save_steps") for r in runs} == {str(preset.save_every)}
    pretraining = {r.objective: r for r in runs if r.kind == "pretrain"}
    assert set(pretraining) == set(bench.OBJECTIVES) - {"none"}
    for objective, run in pretraining.items():
        if objective == "hubert":  # 3000 updates on MFCC labels (enough to pass them on the phone probe), then 1000
            assert flag(run, "--iteration_max_steps") == "3000,1000" and flag(run, "--max_steps") == "3000"
            assert "--continue_iterations" in run.argv  # the 1000 continue iteration 1's encoder
            continue
        assert int(flag(run, "--max_steps")) == preset.pretrain_updates
        assert flag(run, "--per_device_train_batch_size") == str(preset.pretrain_batch_size)
        assert float(flag(run, "--max_train_crop_s")) == preset.pretrain_crop_s
        assert flag(run, "--dataset_config") == "large"
    asr = [r for r in runs if r.kind == "asr"]
    # 10 min x 2 seeds and 60 min x 1 seed, for every objective
    assert len(asr) == 3 * len(bench.OBJECTIVES)
    assert {flag(r, "--max_steps") for r in asr} == {"3000"}
    assert {flag(r, "--early_stopping_min_steps") for r in asr} == {"1000"}
    # --smoke keeps the structure at the smoke sizes, its own checkpoint interval included
    smoke = bench.smoke_version(preset)
    assert smoke.save_every is None and smoke.pretrain_updates == bench.PRESETS["smoke"].pretrain_updates
    assert smoke.hubert_continue_iterations  # the structure, not a size: the smoke run takes the same path
    # the cpu preset trains iteration 2 from scratch (the paper), also under --smoke
    cpu_hubert = bench.pretraining_run(bench.smoke_version(bench.PRESETS["cpu"]), "hubert")
    assert "--continue_iterations" not in cpu_hubert.argv


def test_attempt_clock_counts_a_sigkilled_attempt_and_continues(tmp_path):
    """A multi-session benchmark is killed with its session: the wall time of the killed attempt (up to its last
    heartbeat) must survive into the next attempt's total, and the file must stay readable (atomic writes)."""
    import signal
    import subprocess
    import time

    path = tmp_path / "run.wall_time.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from benchmarks.label_efficiency import AttemptClock;"
            "clock = AttemptClock(__import__('pathlib').Path(sys.argv[2]), every_s=0.05).__enter__();"
            "time.sleep(60)",
            str(ROOT),
            str(path),
        ]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not path.is_file() or json.loads(path.read_text())["total_s"] < 1.0):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = json.loads(path.read_text())
    assert killed["attempts"] == 1 and killed["total_s"] >= 1.0

    bench = load_benchmark("label_efficiency")
    with bench.AttemptClock(path, every_s=60) as clock:
        assert clock.attempts == 2 and clock.before_s == killed["total_s"]
        time.sleep(0.2)
    resumed = json.loads(path.read_text())
    assert resumed["attempts"] == 2
    assert killed["total_s"] + 0.2 <= resumed["total_s"] < killed["total_s"] + 5


def test_asr_topline_smoke_reports_greedy_and_lm_scores_and_reuses_finished_steps(tmp_path, corpus_cache_dir):
    """benchmarks/asr_topline.py end to end on the tiny corpus: the fine-tune, its LM decoding and the report; a
    rerun finds both outputs and only rewrites the report. Fails if the curve, the test scores or the LM scores
    are not carried into the JSON, if a rerun trains again or loses the wall times."""
    bench = load_benchmark("asr_topline")
    argv = ["--smoke", "--threads", "1", "--output_dir", str(tmp_path / "topline"), "--results_dir", str(tmp_path)]
    argv += ["--lm_flags", "--lexicon_word_list none --lm_weights 1 --word_scores 0,1 --beam_size 8"]
    payload = bench.main(argv)
    assert [r["step"] for r in payload["validation_curve"]] == [2, 4]
    assert payload["train"]["model_step"] == payload["train"]["best_step"] in (2, 4)
    assert payload["test_greedy"]["test_num_utterances"] == 4
    decoded = payload["lm_decoding"]
    assert decoded["test_greedy_cer"] == pytest.approx(payload["test_greedy"]["test_cer"])  # the same model
    assert 0 <= decoded["test_lm_wer"] and len(decoded["grid"]) == 2 and decoded["beam_size"] == 8
    assert set(payload["timings"]) == {"finetune_wall_s", "decode_wall_s"}
    saved = json.loads((tmp_path / "asr_topline_smoke.json").read_text())
    assert saved["lm_decoding"]["test_lm_cer"] == decoded["test_lm_cer"]
    assert "| greedy (no LM) |" in (tmp_path / "asr_topline_smoke.md").read_text()
    again = bench.main(argv)  # nothing rerun; the wall times of the first call are kept
    assert again["timings"] == payload["timings"] and again["lm_decoding"] == decoded
