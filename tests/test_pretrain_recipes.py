"""End-to-end runs of the SimCLR and wav2vec 2.0 pretraining recipes on a tiny offline corpus."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification

import hf_speech_cl  # noqa: F401  (registers the Auto classes)
from hf_speech_cl.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_corpus_kwargs(corpus_cache_dir):
    """A tiny synthetic-librispeech in the session's corpus cache (conftest points HF_SPEECH_CL_CACHE at it)."""
    return {"train_hours": 0.02, "eval_hours": 0.005, "train_speakers": 4, "eval_speakers": 2}


@pytest.fixture(scope="module")
def tiny_corpus_args(tiny_corpus_kwargs):
    return ["--dataset_kwargs", json.dumps(tiny_corpus_kwargs), "--max_eval_samples", "4"]


def common(out, steps, *extra):
    return [
        "--output_dir",
        str(out),
        "--model_size",
        "tiny",
        "--max_steps",
        str(steps),
        "--logging_steps",
        "2",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--max_train_crop_s",
        "1.5",
        "--warmup_steps",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, tiny_corpus_args):
    out = tmp_path_factory.mktemp("simclr") / "out"
    recipe = load_recipe("pretrain_simclr")
    recipe.main(common(out, 4, *tiny_corpus_args))
    return recipe, out


def test_simclr_recipe_writes_a_loadable_model_with_card(simclr_run):
    _, out = simclr_run
    model = AutoModel.from_pretrained(out)
    assert model.config.model_type == "simclr_audio"
    # every checkpoint loads with from_pretrained (its config.json beside the weights), here the last one = the model
    last = AutoModel.from_pretrained(out / "checkpoint-4")
    for name, value in model.state_dict().items():
        assert torch.equal(last.state_dict()[name], value), name
    card = (out / "README.md").read_text()
    assert "NT-Xent" in card and "speed perturbation" in card and "retrieval_accuracy" in card
    assert "synthetic" in card  # the data note
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 4
    # the phone probe of the final model, beside MFCC and a random encoder of its config, in the card too
    probe = json.loads((out / "phone_probe.json").read_text())
    assert [r["name"] for r in probe["results"]] == ["checkpoint", "mfcc", "random"] and not probe["skipped"]
    assert all(0.0 < r["accuracy"] <= 1.0 for r in probe["results"])
    assert "## Phone probe" in card and "39-d Kaldi MFCC" in card
    records = read_metrics(out / "logs")
    train_records = [r for r in records if "lr" in r]
    assert {"loss", "retrieval_accuracy", "lr", "audio_seconds_per_second"} <= set(train_records[-1])
    assert {"eval_loss", "eval_retrieval_accuracy"} <= set(records[-1])
    # the exported encoder is a stock wav2vec 2.0 checkpoint with identical hidden states
    ctc = Wav2Vec2ForCTC.from_pretrained(out / "encoder", vocab_size=8)
    Wav2Vec2ForSequenceClassification.from_pretrained(out / "encoder", num_labels=3)
    x = torch.randn(1, 8000)
    model.eval()
    ctc.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).last_hidden_state, ctc.wav2vec2(x).last_hidden_state)


def test_simclr_recipe_resumes_from_its_last_checkpoint(simclr_run, tiny_corpus_args):
    recipe, out = simclr_run
    recipe.main(common(out, 6, *tiny_corpus_args))
    results = json.loads((out / "train_results.json").read_text())
    assert results["resumed_from"].endswith("checkpoint-4")
    assert results["global_step"] == 6
    steps = [r["step"] for r in read_metrics(out / "logs") if "loss" in r]
    assert steps == [2, 4, 6]  # one history across the two runs, no update repeated


def test_simclr_recipe_continues_a_checkpoint_under_its_own_preset_name(simclr_run, tmp_path, tiny_corpus_args):
    recipe, out = simclr_run
    argv = common(tmp_path / "more", 2, *tiny_corpus_args, "--model_name_or_path", str(out), "--eval_split", "none")
    del argv[2:4]  # no --model_size: the card must name the checkpoint's preset, not the machine's default
    recipe.main([*argv, "--phone_probe", "false"])
    card = (tmp_path / "more" / "README.md").read_text()
    assert "wav2vec 2.0 encoder (`tiny`)" in card
    with pytest.raises(ValueError, match="--model_size cpu does not fit"):
        recipe.main([*argv, "--model_size", "cpu", "--output_dir", str(tmp_path / "other")])


def test_simclr_recipe_pushes_the_final_folder(tmp_path, monkeypatch, tiny_corpus_args):
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            uploads.append(("create", repo_id))

        def upload_folder(self, **kwargs):
            uploads.append(
                ("upload", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir()))
            )
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr("hf_speech_cl.training.export.HfApi", FakeApi)
    recipe = load_recipe("pretrain_simclr")
    recipe.main(
        common(
            tmp_path / "out",
            2,
            *tiny_corpus_args,
            "--push_to_hub",
            "--hub_model_id",
            "user/simclr-tiny",
            "--eval_split",
            "none",
        )
    )
    assert uploads[0] == ("create", "user/simclr-tiny")
    kind, repo, files = uploads[1]
    assert repo == "user/simclr-tiny" and {"README.md", "config.json", "model.safetensors"} <= set(files)


def test_wav2vec2_recipe_learns_and_exports_to_ctc(tmp_path, tiny_corpus_args):
    out = tmp_path / "w2v2"
    recipe = load_recipe("pretrain_wav2vec2")
    recipe.main(common(out, 12, *tiny_corpus_args, "--learning_rate", "2e-3", "--max_train_crop_s", "2.0"))
    records = [r for r in read_metrics(out / "logs") if "contrastive_loss" in r]
    assert records[-1]["contrastive_loss"] < records[0]["contrastive_loss"]
    assert records[-1]["codevector_perplexity"] > 2 * 2  # above collapse (2 groups)
    assert 0 < records[-1]["masked_fraction"] < 1
    model = Wav2Vec2ForCTC.from_pretrained(out, vocab_size=8)
    assert model.config.model_type == "wav2vec2"
    assert "wav2vec 2.0" in (out / "README.md").read_text()


def test_wav2vec2_recipe_trains_the_group_norm_base_variant(tmp_path, tiny_corpus_args):
    out = tmp_path / "w2v2-group"
    recipe = load_recipe("pretrain_wav2vec2")
    recipe.main(common(out, 2, *tiny_corpus_args, "--feat_extract_norm", "group", "--eval_split", "none"))
    config = json.loads((out / "config.json").read_text())
    assert config["feat_extract_norm"] == "group" and config["do_stable_layer_norm"] is False
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 2


def test_simclr_recipe_runs_on_two_cpu_processes(tmp_path, tiny_corpus_args):
    """torchrun, 2 processes, gloo: the run finishes, every process saved its RNG state, negatives are gathered."""
    import os
    import socket
    import subprocess

    out = tmp_path / "ddp"
    with socket.socket() as probe:  # torchrun's `--master_port 0` waits forever for its workers: pick a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(ROOT / "recipes" / "pretrain_simclr.py"),
        *common(out, 2, *tiny_corpus_args, "--eval_split", "none"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoint-2" / "random_states_0.pkl").exists()
    assert (out / "checkpoint-2" / "random_states_1.pkl").exists()
    card = (out / "README.md").read_text()
    assert "gathered from every process" in card and "| processes | 2 |" in card
    # 2 processes x 4 clips: each anchor has 2*8-2 = 14 negatives, so the loss starts near log(15), not log(7)
    first = [r for r in read_metrics(out / "logs") if "loss" in r][0]
    assert first["loss"] > 2.3, first


def test_the_cpu_and_gpu_presets_get_objective_settings_sized_for_them():
    # A preset missing from the tables silently fell back to BASE's objective (wav2vec 2.0: K=100 and 2 x 320 codes
    # of 256 dimensions on a 6 x 256 encoder) and HuBERT's `auto` to the paper's loss, which learned nothing on CPU.
    from hf_speech_cl.hubert_iteration import HubertArguments, build_config

    w2v = load_recipe("pretrain_wav2vec2")
    cpu = w2v.build_config(w2v.Wav2Vec2Arguments(model_size="cpu"))
    assert (cpu.num_negatives, cpu.num_codevectors_per_group, cpu.codevector_dim) == (50, 160, 128)
    assert w2v.build_config(w2v.Wav2Vec2Arguments(model_size="gpu")).num_negatives == 100
    hubert = {size: build_config(HubertArguments(model_size=size), 100, 100.0, 16000) for size in ("cpu", "gpu")}
    assert hubert["cpu"].pred_nomask_weight == 1.0 and hubert["cpu"].feature_penalty_weight == 0.0
    assert hubert["gpu"].pred_nomask_weight == 0.0 and hubert["gpu"].feature_penalty_weight == 10.0
