"""The shared loop on two CPU processes (gloo): every objective with layer drop on, and a batch without audio.

Layer drop skips whole Transformer layers, whose parameters then get no gradient; DDP without
`find_unused_parameters` raises "Expected to have finished reduction in the prior iteration" at the next update.
The recipes turn that on whenever `layerdrop > 0`. After the run the two replicas must hold identical parameters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hf_speech_cl.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {"train_hours": 0.02, "eval_hours": 0.005, "train_speakers": 4, "eval_speakers": 2}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def corpus_env(corpus_cache_dir):
    from hf_speech_cl.data.synthetic import load_corpus

    load_corpus("synthetic-librispeech", cache_dir=corpus_cache_dir, **CORPUS)
    return corpus_cache_dir


RECIPES = {
    "pretrain_simclr": ["--layerdrop", "0.5"],
    "pretrain_wav2vec2": ["--config_overrides", "layerdrop=0.5", "--max_train_crop_s", "2.0"],
    "pretrain_hubert": [
        "--iterations", "1", "--num_clusters", "8", "--kmeans_sample_fraction", "1.0",
        "--config_overrides", "layerdrop=0.5",
    ],
}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_on_two_processes_with_layer_drop(recipe, tmp_path, corpus_env):
    out, dumps = tmp_path / "out", tmp_path / "params"
    dumps.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(ROOT / "tests" / "fault_driver.py"), recipe, "none", "--",
        "--output_dir", str(out), "--model_size", "tiny", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--warmup_steps", "1", "--per_device_train_batch_size", "2", "--max_train_crop_s", "1.5",
        "--dataset_kwargs", json.dumps(CORPUS), "--eval_split", "none", *RECIPES[recipe],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT_DRIVER_DUMP_PARAMS": str(dumps)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (torch.load(dumps / f"rank{rank}.pt") for rank in range(2))
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)


# -- a batch with no readable clip on one process -------------------------------------------------------------------


def _none_batch_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_training_loop import ToyModel, make_args, toy_loader

    from hf_speech_cl.training import make_accelerator, train

    args = make_args(Path(out_dir), max_steps=4, logging_steps=1, save_steps=4)
    accelerator = make_accelerator(args)
    loader = toy_loader()
    collate, calls = loader.collate_fn, [0]

    def collate_or_none(items):  # process 1's second batch: every clip unreadable
        calls[0] += 1
        return None if rank == 1 and calls[0] == 2 else collate(items)

    loader.collate_fn = collate_or_none
    torch.manual_seed(0)
    model = ToyModel()
    result = train(model, loader, args, accelerator=accelerator, sampling_rate=100)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"result": result.skipped_batches, "steps": result.global_step, "state": state}, f"{out_dir}/{rank}.pt")
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_a_batch_without_audio_on_one_process_is_skipped_by_both(tmp_path):
    mp.spawn(_none_batch_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert [r["result"] for r in results] == [1, 1]
    assert [r["steps"] for r in results] == [4, 4]
    for name in results[0]["state"]:
        torch.testing.assert_close(results[0]["state"][name], results[1]["state"][name], rtol=0, atol=0)
    records = [r for r in read_metrics(tmp_path / "run" / "logs") if "skipped_batches" in r]
    assert records[-1]["skipped_batches"] == 1


def test_streaming_pretraining_and_evaluation_on_two_processes(tmp_path, corpus_env):
    # accelerate's default for iterable datasets (process 0 reads and dispatches concatenated batches) cannot join
    # padded batches of different lengths; every process must read the stream and keep its own share of the batches
    out, dumps = tmp_path / "out", tmp_path / "params"
    dumps.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(ROOT / "tests" / "fault_driver.py"), "pretrain_simclr", "none", "--",
        "--output_dir", str(out), "--model_size", "tiny", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--warmup_steps", "1", "--per_device_train_batch_size", "2", "--dataset_kwargs", json.dumps(CORPUS),
        "--streaming", "--shuffle_buffer_size", "8", "--max_eval_samples", "6",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT_DRIVER_DUMP_PARAMS": str(dumps)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (torch.load(dumps / f"rank{rank}.pt") for rank in range(2))
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 3 and "eval_loss" in results["eval_metrics"]
