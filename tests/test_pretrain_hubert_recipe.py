"""recipes/pretrain_hubert.py end to end on a tiny synthetic-librispeech build, and the pseudo-label collator."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForPreTraining, HfArgumentParser, HubertForCTC, Wav2Vec2FeatureExtractor

import hf_speech_cl  # noqa: F401  (registers the Auto classes)
from hf_speech_cl.data import SpeechDataset
from hf_speech_cl.data.synthetic import load_corpus
from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPseudoLabeler
from hf_speech_cl.pseudo_labels import (
    CROP_OFFSET_COLUMN,
    DataCollatorForHubertPretraining,
    crop_labels,
    iter_waveforms,
    label_split,
    load_label_info,
)

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# A few utterances of the offline corpus (the size test_data_loading builds); built once per module.
CORPUS = {"train_hours": 0.01, "eval_hours": 0.003, "train_speakers": 3, "eval_speakers": 1}


def load_recipe():
    spec = importlib.util.spec_from_file_location("pretrain_hubert", ROOT / "recipes" / "pretrain_hubert.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_hubert"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("corpora")
    load_corpus("synthetic-librispeech", cache_dir=cache, **CORPUS)
    return cache


@pytest.fixture(scope="module")
def corpus(corpus_cache) -> datasets.DatasetDict:
    return load_corpus("synthetic-librispeech", cache_dir=corpus_cache, **CORPUS)


@pytest.fixture(scope="module")
def feature_extractor() -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True)


def recipe_args(out: Path, corpus_cache: Path, iterations: int, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--model_size", "tiny", "--iterations", str(iterations), "--num_clusters", "8,10",
        "--kmeans_sample_fraction", "1.0", "--dataset_kwargs", json.dumps(CORPUS), "--cache_dir", str(corpus_cache),
        "--max_eval_samples", "3", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--warmup_steps", "1", "--per_device_train_batch_size", "4", "--max_train_crop_s", "1.5", *extra,
    ]  # fmt: skip


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# -- the collator: labels follow the audio through crops --------------------------------------------------------------


def test_collator_labels_follow_random_crops_and_match_the_encoder_frames(corpus, feature_extractor, tmp_path):
    dataset = corpus["train"]
    labeler = HubertPseudoLabeler.for_mfcc(6)
    first = next(iter_waveforms(dataset, SR))
    frames, _ = labeler.extract_features(torch.from_numpy(first))
    labeler.set_centroids(frames[0, :: max(1, frames.shape[1] // 6)][:6])  # 6 real frames: non-trivial labels
    labels = label_split(dataset, labeler, tmp_path / "labels", progress=False)
    collator = DataCollatorForHubertPretraining(feature_extractor, [tmp_path / "labels"])
    assert collator.label_rate == 100.0  # read from label_info.json

    crops = SpeechDataset(dataset, max_crop_s=1.0, keep_columns=["id", CROP_OFFSET_COLUMN], seed=3)
    items = [crops[i] for i in range(len(crops))]
    assert {"id", CROP_OFFSET_COLUMN} <= set(items[0]) and any(item[CROP_OFFSET_COLUMN] > 0 for item in items)
    full_audio = dict(zip(dataset["id"], iter_waveforms(dataset, SR), strict=True))
    full_labels = dict(zip(labels["id"], labels["labels"], strict=True))
    for item in items:  # the crop is the stretch of audio its offset says
        offset, audio = item[CROP_OFFSET_COLUMN], item["input_values"]
        np.testing.assert_allclose(audio, full_audio[item["id"]][offset : offset + len(audio)], atol=1e-6)

    batch = collator(items[:4])
    assert set(batch) == {"input_values", "attention_mask", "labels"} and batch["labels"].dtype == torch.int64
    for row, item in enumerate(items[:4]):
        offset, samples = item[CROP_OFFSET_COLUMN], len(item["input_values"])
        start = round(offset * 100 / SR)  # fairseq collater_frm_label: round(offset · label_rate / sampling_rate)
        expected = np.asarray(full_labels[item["id"]][start : start + round(samples * 100 / SR)])
        got = batch["labels"][row]
        np.testing.assert_array_equal(got[: len(expected)].numpy(), expected)
        assert (got[len(expected) :] == -100).all()
        # 2 labels per 20 ms encoder frame: lengths agree within the model's one-frame tolerance
        encoder_frames = 1 + (samples - 400) // 320
        assert abs(len(expected) / 2 - encoder_frames) <= 1

    # at a crop offset on the MFCC hop, the labels of the cropped audio ARE the cut labels (away from the Δ/ΔΔ edges)
    uid = dataset[int(np.argmax(dataset["duration"]))]["id"]
    offset, samples = 160 * 37, SR
    cropped = torch.from_numpy(full_audio[uid][offset : offset + samples])
    own = labeler(cropped[None]).cluster_ids[0].numpy()
    cut = collator.item_labels({"id": uid, "input_values": cropped.numpy(), CROP_OFFSET_COLUMN: offset})
    np.testing.assert_array_equal(cut[4 : len(own) - 4], own[4:-4])
    np.testing.assert_array_equal(cut, crop_labels(np.asarray(full_labels[uid]), offset, samples, SR, 100.0))


def test_collator_refuses_what_it_cannot_align(corpus, feature_extractor):
    ids = corpus["validation"]["id"]
    labels = datasets.Dataset.from_dict({"labels": [list(range(300))] * len(ids), "id": ids})
    collator = DataCollatorForHubertPretraining(feature_extractor, [labels], label_rate=100.0)
    audio = np.zeros(SR, dtype=np.float32)  # 1 s: 100 label slots, but the utterance has 300 labels
    with pytest.raises(ValueError, match="no 'crop_offset'"):
        collator([{"id": ids[0], "input_values": audio}])
    with pytest.raises(ValueError, match="No pseudo-labels for id='nope'"):
        collator([{"id": "nope", "input_values": audio, CROP_OFFSET_COLUMN: 0}])
    with pytest.raises(ValueError, match="occurs more than once"):
        DataCollatorForHubertPretraining(feature_extractor, [labels, labels], label_rate=100.0)
    with pytest.raises(ValueError, match="pass `label_rate`"):
        DataCollatorForHubertPretraining(feature_extractor, ["/nonexistent"])
    batch = collator([{"id": ids[1], "input_values": audio, CROP_OFFSET_COLUMN: 1600}, None])
    np.testing.assert_array_equal(batch["labels"][0].numpy(), np.arange(10, 110))


# -- the recipe -------------------------------------------------------------------------------------------------------


def test_every_flag_has_help_and_bad_values_are_refused():
    recipe = load_recipe()
    for f in dataclasses.fields(recipe.HubertArguments):
        assert f.metadata.get("help"), f.name
    assert recipe.HubertArguments(iterations=3, num_clusters="100,500").clusters_per_iteration == [100, 500, 500]
    for bad, message in [
        ({"num_clusters": "100,x"}, "comma-separated integers"),
        ({"kmeans_backend": "scipy"}, "faiss or sklearn"),
        ({"iterations": 0}, "iterations"),
    ]:
        with pytest.raises(ValueError, match=message):
            recipe.HubertArguments(**bad)
    HfArgumentParser(recipe.HubertArguments).format_help()


def test_two_iterations_end_to_end_then_a_rerun_skips_every_stage(corpus, corpus_cache, tmp_path, monkeypatch):
    recipe = load_recipe()
    out = tmp_path / "hubert"
    stage_log = []
    real_run = recipe.run_pseudo_label_iteration

    def spy(splits, args, **kwargs):
        result = real_run(splits, args, **kwargs)
        stage_log.append((args.iteration, [(s.name, s.skipped) for s in result.stages]))
        return result

    monkeypatch.setattr(recipe, "run_pseudo_label_iteration", spy)

    # run 1: iteration 1 only; its model is the final one for now
    recipe.main(recipe_args(out, corpus_cache, 1))
    assert AutoModelForPreTraining.from_pretrained(out).config.num_clusters == 8
    iteration_1 = mtimes(out / "iteration-1")

    # run 2: two iterations; iteration 1 is found complete (no stage, no training redone)
    recipe.main(recipe_args(out, corpus_cache, 2))
    assert [skipped for _, skipped in stage_log[1][1]] == [True] * 6 and stage_log[1][0] == 1
    assert not any(skipped for _, skipped in stage_log[2][1])
    assert all(mtimes(out / "iteration-1")[p] == t for p, t in iteration_1.items())

    # the files of every stage, with their metadata
    for i, (k, feature_type, layer, rate) in enumerate([(8, "mfcc", None, 100.0), (10, "hubert", 1, 50.0)], start=1):
        folder = out / f"iteration-{i}"
        for name in (
            "iteration.json",
            "features/train/features.json",
            "labeler/centroids.npy",
            "labeler/kmeans.json",
            "model/config.json",
            "model/README.md",
            "model/stage_complete.json",
        ):
            assert (folder / name).is_file(), name  # fmt: skip
        info = load_label_info(folder / "labeler")
        assert (info["iteration"], info["feature_type"], info["layer"], info["num_clusters"], info["label_rate"]) == (
            i,
            feature_type,
            layer,
            k,
            rate,
        )
        for split in ("train", "validation"):
            assert load_label_info(folder / "labels" / split)["num_clusters"] == k
            assert (folder / "metrics" / split / "metrics.json").is_file()
        # the labeler checkpoint reproduces the stored labels
        labeler = HubertPseudoLabeler.from_pretrained(folder / "labeler")
        stored = datasets.load_from_disk(str(folder / "labels" / "validation"))
        audio = torch.from_numpy(next(iter_waveforms(corpus["validation"], SR)))
        assert labeler(audio[None]).cluster_ids[0].tolist() == stored[0]["labels"]
        assert json.loads((folder / "model" / "train_results.json").read_text())["global_step"] == 3
    assert load_label_info(out / "iteration-2" / "labeler")["source_model"] == str(out / "iteration-1" / "model")

    # the final folder: iteration 2's model, loadable by the Auto class and by stock HubertForCTC
    model = AutoModelForPreTraining.from_pretrained(out).eval()
    assert isinstance(model, HubertForPreTraining) and model.config.num_clusters == 10
    assert model.config.label_rate == 50.0
    ctc = HubertForCTC.from_pretrained(out, vocab_size=8).eval()
    x = torch.randn(1, SR)
    with torch.no_grad():
        torch.testing.assert_close(ctc.hubert(x).last_hidden_state, model.hubert(x).last_hidden_state)

    # label quality of both iterations in the card, as measured
    card = (out / "README.md").read_text()
    assert "### Label quality" in card and "iteration 2" in card
    for i in (1, 2):
        metrics = json.loads((out / f"iteration-{i}" / "metrics" / "validation" / "metrics.json").read_text())
        assert 0 < metrics["pnmi"] < 1 and 0 < metrics["phone_purity"] <= 1
        row = f"| {metrics['phone_purity']:.3f} | {metrics['cluster_purity']:.3f} | {metrics['pnmi']:.3f} |"
        assert row in card, row

    # run 3: the same command again (now also pushing): nothing is recomputed, nothing rewritten
    def no_training(*args, **kwargs):
        raise AssertionError("a finished iteration was trained again")

    uploads = []
    monkeypatch.setattr(recipe, "train", no_training)
    monkeypatch.setattr(
        recipe, "push_folder_to_hub",
        lambda folder, repo, **kw: uploads.append((repo, sorted(str(p.relative_to(folder)) for p in folder.rglob("*")))),
    )  # fmt: skip
    before = mtimes(out)
    recipe.main(recipe_args(out, corpus_cache, 2, "--push_to_hub", "--hub_model_id", "user/hubert-tiny"))
    assert all(skipped for _, stages in stage_log[3:] for _, skipped in stages) and len(stage_log) == 5
    assert mtimes(out) == before
    [(repo, pushed)] = uploads
    assert repo == "user/hubert-tiny" and "config.json" in pushed and "iteration-2/labeler/centroids.npy" in pushed
    assert "iteration-1/metrics/validation/metrics.json" in pushed
    assert not any(p.startswith(("iteration-1/features", "iteration-2/labels", "iteration-2/model")) for p in pushed)

    # another K for an iteration that exists is refused, not mixed in
    with pytest.raises(ValueError, match="num_clusters: 10 then, 12 now"):
        recipe.main(recipe_args(out, corpus_cache, 2) + ["--num_clusters", "8,12"])
