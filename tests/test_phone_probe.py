"""The linear frame-level phone probe: the classifier, the frame timing, the alignment of frames to phones, and the
report on the tiny offline corpus (checkpoint, MFCC and random-encoder references)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from hf_speech_cl.data import DataArguments
from hf_speech_cl.data.synthetic import TINY_PARAMS
from hf_speech_cl.finetuning import PhoneProbe, PhoneProbeArguments, linear_probe_accuracy, run_phone_probe
from hf_speech_cl.finetuning.phone_probe import (
    FeatureSource,
    FrameTiming,
    ProbeUtterance,
    collect_probe_frames,
    encoder_frame_timing,
    mfcc_frame_timing,
    random_encoder_like,
    resolve_layers,
)
from hf_speech_cl.presets import encoder_preset


def test_linear_probe_separates_separable_frames_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    features = centres[labels] + rng.normal(0, 0.3, (600, 2))
    scores = linear_probe_accuracy(features[:400], labels[:400], features[400:], labels[400:])
    assert scores["accuracy"] == 1.0 and scores["converged"]
    noise = rng.normal(0, 1, (600, 2))
    chance = linear_probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:])["accuracy"]
    assert chance < 0.5  # three balanced classes: about 1/3
    with pytest.raises(ValueError, match="train_features"):
        linear_probe_accuracy(features[:10], labels[:9], features, labels)
    with pytest.raises(ValueError, match="needs frames"):
        linear_probe_accuracy(features[:0], labels[:0], features, labels)


def test_frame_timing_is_the_centre_of_each_frames_window():
    timing = encoder_frame_timing(Wav2Vec2Config(), 16000)  # 400-sample receptive field, 320-sample hop
    assert timing == FrameTiming(rate=50.0, offset=0.0125)
    assert mfcc_frame_timing(16000) == FrameTiming(rate=100.0, offset=0.0125)
    assert resolve_layers("all", 2) == [0, 1, 2] and resolve_layers("middle", 12) == [6]
    # the default mixes an index with names; repeats collapse (a 2-layer encoder's middle is 1)
    assert resolve_layers("0,middle,last", 6) == [0, 3, 6] and resolve_layers("0,middle,last", 1) == [0, 1]
    assert resolve_layers("last, 2 ,all", 3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside 0..2"):
        resolve_layers("3", 2)
    with pytest.raises(ValueError, match="all, last, middle or integers"):
        resolve_layers("0,mid", 2)


def test_frames_take_the_phone_at_their_centre():
    # 10 frames at 10 Hz whose centres are 0.05, 0.15, ..., 0.95 s; feature = frame index
    source = FeatureSource(
        "fake", "frame index", FrameTiming(rate=10.0, offset=0.05), [None], lambda w: [np.arange(10.0)[:, None]]
    )
    alignment = [{"phone": "A", "start": 0.0, "end": 0.3}, {"phone": "B", "start": 0.3, "end": 0.8}]
    frames = collect_probe_frames(source, [ProbeUtterance(np.zeros(16000, np.float32), alignment)], {"A": 0, "B": 1})
    # frames 8 and 9 (0.85 s, 0.95 s) lie outside every segment: left out
    assert frames.features[0][:, 0].tolist() == list(range(8))
    assert frames.phones.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


def _tiny_encoder(seed):
    config = Wav2Vec2Config(**encoder_preset("tiny"))
    return random_encoder_like(config, seed), config


def test_probe_report_on_the_tiny_corpus(tiny_librispeech):
    encoder, _ = _tiny_encoder(seed=3)
    kwargs = {"max_train_utterances": 12, "max_test_utterances": 4, "max_iter": 50, "seed": 3}
    report = run_phone_probe(encoder, tiny_librispeech["train"], tiny_librispeech["test"], **kwargs)
    assert [r.name for r in report.results] == ["checkpoint", "mfcc", "random"]
    assert report.num_train_utterances == 12 and report.num_test_utterances == 4 and report.num_phones > 20
    checkpoint, mfcc, random = report.results
    assert set(checkpoint.layer_accuracy) == {"0", "1", "2"} and checkpoint.num_test_frames > 100
    # MFCC holds phone identity: well above always answering the most frequent phone
    assert mfcc.accuracy > mfcc.majority_accuracy + 0.1
    # the checkpoint *is* the seeded random encoder of its config: the same frames, the same accuracy
    assert checkpoint.layer_accuracy == random.layer_accuracy
    again = run_phone_probe(encoder, tiny_librispeech["train"], tiny_librispeech["test"], **kwargs)
    assert again.to_dict()["results"] == report.to_dict()["results"]  # deterministic
    assert "| 39-d Kaldi MFCC" in report.markdown() and "majority phone" in report.summary()
    json.dumps(report.to_dict())  # what phone_probe.json holds


def test_phone_probe_skips_data_without_alignments_and_can_be_switched_off(corpus_cache_dir):
    data_args = DataArguments(
        dataset_name="synthetic-speech-commands", dataset_kwargs=json.dumps(TINY_PARAMS["synthetic-speech-commands"])
    )
    report = PhoneProbe(PhoneProbeArguments(), data_args)(None)
    assert report.skipped and "phone_alignment" in report.skipped
    assert report.markdown().startswith("Not measured")
    assert PhoneProbe(PhoneProbeArguments(phone_probe=False), data_args)(None) is None
    with pytest.raises(ValueError, match="unknown"):
        PhoneProbeArguments(phone_probe_references="mfcc,fbank")


def test_a_trained_checkpoint_folder_is_probed_with_its_feature_extractor(tmp_path, tiny_librispeech):
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**encoder_preset("tiny")))
    model.save_pretrained(tmp_path / "ckpt")
    report = run_phone_probe(
        str(tmp_path / "ckpt"),
        tiny_librispeech["train"],
        tiny_librispeech["test"],
        references=(),
        max_train_utterances=6,
        max_test_utterances=2,
        max_iter=20,
    )
    assert [r.name for r in report.results] == ["checkpoint"] and 0.0 <= report.accuracy <= 1.0


def test_a_failing_probe_never_costs_the_run_its_card(monkeypatch, tiny_librispeech, corpus_cache_dir):
    import hf_speech_cl.finetuning.phone_probe as module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(module, "run_phone_probe", broken)
    data_args = DataArguments(dataset_kwargs=json.dumps(TINY_PARAMS["synthetic-librispeech"]))
    report = PhoneProbe(PhoneProbeArguments(), data_args)(None)
    assert report.skipped == "the probe failed (RuntimeError: out of memory)"


def test_unreadable_and_nan_utterances_are_left_out_of_the_probe(tiny_librispeech):
    import datasets

    from hf_speech_cl.finetuning.phone_probe import load_probe_utterances

    rows = tiny_librispeech["test"].cast_column("audio", datasets.Audio(decode=False)).select(range(3)).to_list()
    rows[0]["audio"] = {"bytes": b"not audio", "path": "bad.wav"}
    rows[1]["audio"] = {"bytes": None, "path": None}
    table = datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio(decode=False))
    assert len(load_probe_utterances(table, sampling_rate=16000)) == 1
