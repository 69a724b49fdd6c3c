"""`hf_speech_cl.hubert_iteration.HubertIterator` from a notebook: one stage at a time, each resumable.

Tiny settings of tests/test_pretrain_hubert_recipe.py (a few utterances of the offline corpus, K=8 then 10, 2 updates
of 4 crops of 1.5 s per iteration, no phone probe): about 10 s on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

import hf_speech_cl
from hf_speech_cl.data import DataArguments
from hf_speech_cl.finetuning import PhoneProbeArguments
from hf_speech_cl.hubert_iteration import HubertArguments, HubertIterator
from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining
from hf_speech_cl.pseudo_labels import iter_waveforms, run_pseudo_label_iteration
from hf_speech_cl.training import PretrainingArguments

SR = 16000
# The few utterances test_pretrain_hubert_recipe uses; built once per session in conftest's corpus cache.
CORPUS = {"train_hours": 0.01, "eval_hours": 0.003, "train_speakers": 3, "eval_speakers": 1}


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def make_iterator(out: Path, calls: list) -> HubertIterator:
    def spy(splits, args, **kwargs):
        result = run_pseudo_label_iteration(splits, args, **kwargs)
        calls.append((args.iteration, [s.skipped for s in result.stages]))
        return result

    return HubertIterator(
        HubertArguments(
            iterations=2,
            num_clusters="8,10",
            kmeans_sample_fraction=1.0,
            model_size="tiny",
            iteration_max_steps="2,3",  # uneven: iteration 2 trains 3 updates, --max_steps (2) is overridden
        ),
        DataArguments(dataset_kwargs=json.dumps(CORPUS), max_eval_samples=3, max_train_crop_s=1.5),
        PretrainingArguments(
            output_dir=str(out),
            max_steps=2,
            save_steps=2,
            logging_steps=1,
            warmup_steps=1,
            per_device_train_batch_size=4,
        ),
        PhoneProbeArguments(phone_probe=False),
        label_fn=spy,
    )


def test_one_stage_at_a_time_each_resumable(tmp_path, corpus_cache_dir):
    assert hf_speech_cl.HubertIterator is HubertIterator  # the package exports it (imported on first use)
    out = tmp_path / "hubert"
    calls: list = []
    iterator = make_iterator(out, calls)

    # label(1): MFCC features -> k-means -> labels of every split -> quality, nothing trained
    labels = iterator.label(1)
    assert calls == [(1, [False] * len(labels.stages))] and len(labels.stages) >= 4
    assert not (out / "iteration-1" / "model").exists()
    assert set(labels.label_dirs) == {"train", "validation"}
    for split, dataset in iterator.splits.items():
        stored = datasets.load_from_disk(str(labels.label_dirs[split]))
        by_id = dict(zip(stored["id"], stored["labels"], strict=True))
        assert sorted(by_id) == sorted(dataset["id"]), split  # one row per utterance
        for uid, audio in zip(dataset["id"], iter_waveforms(dataset, SR), strict=True):
            # Kaldi MFCC frames: 25 ms window, 10 ms hop (fairseq dump_mfcc_feature.py), labels in 0..K-1
            assert len(by_id[uid]) == 1 + (len(audio) - 400) // 160, (split, uid)
            assert 0 <= min(by_id[uid]) and max(by_id[uid]) < 8
        assert 0 < labels.metrics[split]["pnmi"] < 1  # the corpus has phone alignments
    [record] = iterator.history
    assert (record["iteration"], record["num_clusters"], record["label_rate"]) == (1, 8, 100.0)
    assert record["source"].startswith("39-d MFCC")

    # label(1) again: every stage found complete, nothing rewritten
    before = mtimes(out / "iteration-1")
    again = iterator.label(1)
    assert calls[1] == (1, [True] * len(again.stages))
    assert mtimes(out / "iteration-1") == before

    # a fresh iterator (a restarted notebook): train(1) labels first (all stages skipped), then trains
    calls.clear()
    fresh = make_iterator(out, calls)
    result = fresh.train(1)
    assert calls == [(1, [True] * len(again.stages))]
    assert result.global_step == 2
    model = HubertForPreTraining.from_pretrained(out / "iteration-1" / "model")
    assert model.config.num_clusters == 8 and model.config.label_rate == 100.0
    assert not (out / "config.json").exists()  # the output root is written by finalize_output / run only

    # train(1) again: skipped, the same result read back, nothing rewritten, no labelling
    before = mtimes(out)
    assert fresh.train(1).global_step == 2 and mtimes(out) == before and len(calls) == 1
    before_iteration_1 = mtimes(out / "iteration-1")

    # another fresh one: train(2) labels iteration 2 from iteration 1's model, which it finds trained (its labels
    # resumed for the history), then trains iteration 2 on the new labels
    calls.clear()
    second = make_iterator(out, calls)
    assert second.train(2).global_step == 3 and len(mtimes(out / "iteration-1")) == len(before_iteration_1)
    assert calls == [(1, [True] * len(again.stages)), (2, [False] * len(again.stages))]
    assert all(mtimes(out / "iteration-1")[p] == t for p, t in before_iteration_1.items())
    assert [(r["iteration"], r["num_clusters"], r["label_rate"]) for r in second.history] == [
        (1, 8, 100.0),
        (2, 10, 50.0),
    ]
    assert second.history[1]["source"] == "layer 1 of the iteration-1 model"  # tiny: 2 layers, N // 2
    model = HubertForPreTraining.from_pretrained(out / "iteration-2" / "model")
    assert model.config.num_clusters == 10 and model.config.label_rate == 50.0
    card = (out / "iteration-2" / "model" / "README.md").read_text()
    assert "| 1 | 39-d MFCC (13 + Δ + ΔΔ) | 8 | 100 | validation |" in card  # iteration 1's quality in its table

    # an iteration this run does not make is refused, naming the flag
    with pytest.raises(ValueError, match="--iterations"):
        second.label(3)


def test_iteration_max_steps_parsing():
    args = HubertArguments(iterations=3, iteration_max_steps="3000, 1000")
    assert args.steps_per_iteration(400) == [3000, 1000, 1000]
    assert HubertArguments(iterations=2).steps_per_iteration(400) == [400, 400]
    for bad in ("3000,x", "0,10"):
        with pytest.raises(ValueError, match="iteration_max_steps"):
            HubertArguments(iteration_max_steps=bad)


@pytest.mark.parametrize("continue_iterations", [True, False])
def test_continue_iterations_starts_iteration_2_from_iteration_1s_encoder(
    tmp_path, corpus_cache_dir, continue_iterations
):
    """`continue_iterations`: iteration 2 trains from iteration 1's encoder weights with a new head (K 8 -> 10);
    without it a fresh model (the paper). A bug that ignored the flag, or loaded the head too, fails here."""
    from hf_speech_cl.training import train as train_model

    started: dict[int, dict] = {}

    def spy_train(model, *args, **kwargs):
        step = len(started) + 1
        started[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return train_model(model, *args, **kwargs)

    out = tmp_path / "hubert"
    iterator = make_iterator(out, [])
    iterator.hubert_args.continue_iterations = continue_iterations
    iterator._train_fn = spy_train
    iterator.train(2)  # trains iteration 1 first
    assert sorted(started) == [1, 2]
    trained_1 = HubertForPreTraining.from_pretrained(out / "iteration-1" / "model").state_dict()
    encoder = [k for k in trained_1 if k.startswith("hubert.") and "masked_spec_embed" not in k]
    assert len(encoder) > 10
    encoder.append("hubert.masked_spec_embed")  # trained in iteration 1 (masked frames), so carried over too
    same = [k for k in encoder if torch.equal(started[2][k], trained_1[k])]
    config_1 = HubertForPreTraining.config_class.from_pretrained(out / "iteration-1" / "model").to_dict()
    config_2 = HubertForPreTraining.config_class.from_pretrained(out / "iteration-2" / "model").to_dict()
    # the run's own settings in both iterations: only K and the label rate change (nothing read back from the
    # previous model's config, such as the objective's loss weights)
    changed = {k for k in config_1 if config_1[k] != config_2.get(k)} - {"transformers_version"}
    assert changed == {"num_clusters", "label_rate"}, changed
    if continue_iterations:
        assert same == encoder  # every encoder weight is iteration 1's trained one
        assert started[2]["label_embs_concat"].shape[0] == 10 != trained_1["label_embs_concat"].shape[0]
        assert not torch.equal(started[2]["final_proj.weight"], trained_1["final_proj.weight"])  # a new head
        assert iterator.history[1]["started_from"] == str(out / "iteration-1" / "model")
        card = (out / "iteration-2" / "model" / "README.md").read_text()
        assert "encoder weights of the iteration-1 model of this run (`--continue_iterations`)" in card
    else:
        assert not same  # a fresh model
        assert iterator.history[1]["started_from"] is None
