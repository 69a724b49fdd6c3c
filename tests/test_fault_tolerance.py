"""Hard kills (SIGKILL) and resume for every pretraining recipe: a resumed run logs the uninterrupted run's losses.

Each recipe runs three times in a subprocess (one thread): uninterrupted; killed by SIGKILL as a random update
between two checkpoints starts (`tests/fault_driver.py`); the same command again, which resumes from the newest
complete checkpoint. Every logged loss must equal the uninterrupted run's, and `logs/metrics.jsonl` must hold one row
per update (the killed run's rows after the checkpoint are dropped).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_speech_cl.training import list_checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {"train_hours": 0.02, "eval_hours": 0.005, "train_speakers": 4, "eval_speakers": 2}
MAX_STEPS, SAVE_STEPS = 7, 3


def run_recipe(recipe: str, kill: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tests" / "fault_driver.py"), recipe, kill, "--", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def recipe_args(out: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS),
        "--logging_steps", "1", "--warmup_steps", "1", "--per_device_train_batch_size", "4",
        "--max_train_crop_s", "1.5", "--dataset_kwargs", json.dumps(CORPUS), "--eval_split", "none", *extra,
    ]  # fmt: skip


def losses(logging_dir: Path, key: str = "loss") -> dict[int, float]:
    rows = [r for r in read_metrics(logging_dir) if key in r and "lr" in r]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"one row per update expected, got steps {steps}"
    return {r["step"]: r[key] for r in rows}


def assert_same_losses(reference: dict[int, float], resumed: dict[int, float]) -> None:
    assert sorted(resumed) == sorted(reference) == list(range(1, MAX_STEPS + 1))
    for step in reference:
        torch.testing.assert_close(resumed[step], reference[step], rtol=1e-5, atol=1e-6, msg=f"update {step}")


@pytest.fixture(scope="module")
def corpus_env(corpus_cache_dir):
    from hf_speech_cl.data.synthetic import load_corpus

    load_corpus("synthetic-librispeech", cache_dir=corpus_cache_dir, **CORPUS)  # built once, before the subprocesses
    return corpus_cache_dir


def kill_and_resume(tmp_path: Path, recipe: str, extra: list[str], logs: str = "logs", key: str = "loss"):
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    done = run_recipe(recipe, "none", recipe_args(reference_out, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    kill_at = random.Random(recipe).randint(SAVE_STEPS + 1, 2 * SAVE_STEPS - 1)  # after checkpoint-3, before -6
    died = run_recipe(recipe, f"update:{kill_at}", recipe_args(killed_out, *extra))
    assert died.returncode == -9, (died.returncode, died.stderr[-3000:])
    model_dir = killed_out / logs.rsplit("/", 1)[0] if "/" in logs else killed_out
    assert [p.name for p in list_checkpoints(model_dir)][-1] == f"checkpoint-{SAVE_STEPS}"
    assert max(r["step"] for r in read_metrics(killed_out / logs) if "lr" in r) == kill_at
    resumed = run_recipe(recipe, "none", recipe_args(killed_out, *extra))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{SAVE_STEPS}" in resumed.stdout + resumed.stderr  # "Resuming from ..."
    reference, after = losses(reference_out / logs, key), losses(killed_out / logs, key)
    assert_same_losses(reference, after)
    return reference, after, kill_at


def test_simclr_resumes_exactly_after_sigkill(tmp_path, corpus_env):
    kill_and_resume(tmp_path, "pretrain_simclr", [])


def test_wav2vec2_resumes_exactly_after_sigkill(tmp_path, corpus_env):
    kill_and_resume(tmp_path, "pretrain_wav2vec2", ["--max_train_crop_s", "2.0"], key="contrastive_loss")


def test_hubert_resumes_exactly_after_sigkill(tmp_path, corpus_env):
    extra = ["--iterations", "1", "--num_clusters", "8", "--kmeans_sample_fraction", "1.0"]
    kill_and_resume(tmp_path, "pretrain_hubert", extra, logs="iteration-1/model/logs")


def test_kill_during_checkpoint_write_uses_the_previous_checkpoint(tmp_path, corpus_env):
    out = tmp_path / "out"
    died = run_recipe("pretrain_simclr", f"save:{2 * SAVE_STEPS}", recipe_args(out))
    assert died.returncode == -9, died.stderr[-3000:]
    assert (out / f".tmp-checkpoint-{2 * SAVE_STEPS}").is_dir()  # half-written: never renamed
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{SAVE_STEPS}"]
    resumed = run_recipe("pretrain_simclr", "none", recipe_args(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "train_results.json").read_text())
    assert results["resumed_from"].endswith(f"checkpoint-{SAVE_STEPS}") and results["global_step"] == MAX_STEPS
    assert not (out / f".tmp-checkpoint-{2 * SAVE_STEPS}").exists()
    assert sorted(losses(out / "logs")) == list(range(1, MAX_STEPS + 1))


def test_audio_classification_finetuning_resumes_exactly_after_sigkill(tmp_path, tiny_speech_commands):
    from hf_speech_cl.data.synthetic import TINY_PARAMS

    extra = [
        "--dataset_name", "synthetic-speech-commands", "--dataset_kwargs",
        json.dumps(TINY_PARAMS["synthetic-speech-commands"]), "--model_name_or_path", "none",
        "--test_split", "none", "--eval_steps", "100", "--max_eval_samples", "4",
    ]  # fmt: skip

    def args(out: Path) -> list[str]:
        common = recipe_args(out, *extra)
        index = common.index("--max_train_crop_s")
        return common[:index] + common[index + 2 :]

    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    done = run_recipe("finetune_audio_classification", "none", args(reference_out))
    assert done.returncode == 0, done.stderr[-3000:]
    kill_at = random.Random("finetune").randint(SAVE_STEPS + 1, 2 * SAVE_STEPS - 1)
    died = run_recipe("finetune_audio_classification", f"update:{kill_at}", args(killed_out))
    assert died.returncode == -9, (died.returncode, died.stderr[-3000:])
    resumed = run_recipe("finetune_audio_classification", "none", args(killed_out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_losses(losses(reference_out / "logs"), losses(killed_out / "logs"))
