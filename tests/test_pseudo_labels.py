"""hf_speech_cl.pseudo_labels: MFCC features, feature store, k-means backends, label metrics, resumable stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torchaudio

from hf_speech_cl.models.hubert_pretraining import (
    HubertForPreTraining,
    HubertPretrainingConfig,
    HubertPseudoLabeler,
    hubert_layer_features,
)
from hf_speech_cl.pseudo_labels import (
    PseudoLabelArguments,
    alignment_to_frames,
    assign_clusters,
    attach_labels,
    build_labeler,
    cluster_purity,
    crop_labels,
    dump_features,
    fit_kmeans,
    label_quality,
    label_split,
    load_label_info,
    mfcc_features,
    phone_inventory,
    phone_normalized_mutual_information,
    phone_purity,
    run_pseudo_label_iteration,
    run_stage,
)
from hf_speech_cl.pseudo_labels import stages as stages_module

SR = 16000
# "phones" a 39-d MFCC k-means can separate: silence, two vowels (harmonic tones), a fricative (high-passed noise)
PHONES = ("sil", "aa", "iy", "s")


def synthesize(phones: list[str], durations: list[float], rng: np.random.Generator) -> np.ndarray:
    parts = []
    for phone, duration in zip(phones, durations, strict=True):
        n = int(round(duration * SR))
        t = np.arange(n) / SR
        if phone == "sil":
            part = 1e-3 * rng.standard_normal(n)
        elif phone == "aa":
            part = 0.3 * np.sin(2 * np.pi * 150 * t) + 0.2 * np.sin(2 * np.pi * 750 * t)
        elif phone == "iy":
            part = 0.3 * np.sin(2 * np.pi * 250 * t) + 0.2 * np.sin(2 * np.pi * 2300 * t)
        else:
            noise = rng.standard_normal(n + 1)
            part = 0.2 * np.diff(noise)  # first difference: high-pass noise
        parts.append(part)
    return np.concatenate(parts).astype(np.float32)


def make_corpus(num_utterances: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    rows = {"audio": [], "id": [], "phone_alignment": []}
    for index in range(num_utterances):
        phones = ["sil"] + list(rng.choice(PHONES[1:], size=5)) + ["sil"]
        durations = list(np.round(rng.uniform(0.12, 0.3, size=len(phones)), 2))
        starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        rows["audio"].append({"array": synthesize(phones, durations, rng), "sampling_rate": SR})
        rows["id"].append(f"utt-{seed}-{index}")
        rows["phone_alignment"].append(
            [
                {"phone": p, "start": float(s), "end": float(s + d)}
                for p, s, d in zip(phones, starts, durations, strict=True)
            ]
        )
    return datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(sampling_rate=SR))


@pytest.fixture(scope="module")
def corpus() -> dict[str, datasets.Dataset]:
    return {"train": make_corpus(8, seed=0), "validation": make_corpus(3, seed=1)}


# -- features ---------------------------------------------------------------------------------------------------------


# fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py (MfccFeatureReader.get_feats) on the waveform of
# `_fairseq_mfcc_input()`, computed once with torch/torchaudio 2.11.0 and frozen here: frames 0, 24 and 47 of 48.
FAIRSEQ_MFCC_ROWS = {
    0: [
        3.74886,
        -21.91770,
        -1.58627,
        5.00577,
        24.18445,
        24.74309,
        -1.56084,
        -31.70920,
        -27.19751,
        -14.02860,
        -5.83610,
        -31.70337,
        -37.94101,
        0.36286,
        0.74912,
        0.82204,
        -2.83257,
        -3.20330,
        -1.51973,
        1.38645,
        2.05835,
        0.71614,
        0.66314,
        -2.04579,
        1.99599,
        0.19445,
        -0.09272,
        -0.23880,
        -0.10079,
        0.50691,
        0.82595,
        0.65732,
        0.22695,
        -0.10203,
        -0.36734,
        -0.49772,
        0.37839,
        -0.62124,
        -0.34956,
    ],
    24: [
        3.98646,
        -19.29198,
        2.45418,
        -1.05664,
        13.19635,
        21.64136,
        2.72876,
        -22.66792,
        -30.70440,
        -12.22052,
        -1.56052,
        -25.34765,
        -50.37148,
        0.07177,
        -0.21008,
        0.57708,
        -0.76158,
        -0.06758,
        0.98729,
        -2.14848,
        0.01220,
        2.58787,
        0.65777,
        -1.27736,
        -2.11281,
        0.61575,
        0.08098,
        -0.24988,
        -0.27267,
        0.32463,
        0.54961,
        -0.32710,
        0.08509,
        0.37012,
        0.08304,
        0.45819,
        -0.78372,
        -0.11157,
        0.54519,
    ],
    47: [
        3.54900,
        -21.89364,
        3.65522,
        0.97855,
        15.74134,
        30.34942,
        6.85484,
        -29.98803,
        -27.87567,
        -5.73009,
        -10.05128,
        -33.70622,
        -42.47189,
        -0.43980,
        0.00753,
        1.24237,
        0.27300,
        0.07891,
        1.02007,
        0.58411,
        -3.14062,
        -1.55438,
        0.84673,
        1.76108,
        -0.62582,
        0.90792,
        -0.05896,
        0.08414,
        0.14225,
        -0.14786,
        -0.01235,
        0.02639,
        -0.10152,
        -0.39023,
        -0.73174,
        -0.32188,
        0.19215,
        0.41047,
        0.46263,
    ],
}


def _fairseq_mfcc_input() -> torch.Tensor:
    rng = np.random.default_rng(1234)
    t = np.arange(8000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t) + 0.05 * rng.standard_normal(8000)
    return torch.from_numpy(audio.astype(np.float32))


def test_mfcc_equals_frozen_fairseq_values():
    """Iteration-1 labels are only fairseq's if the MFCC is: a new torchaudio (or a DSP library swapped in for it)
    that changes the window, mel bank, lifter or deltas moves these numbers."""
    features = mfcc_features(_fairseq_mfcc_input(), 16000)
    assert features.shape == (48, 39)
    for frame, values in FAIRSEQ_MFCC_ROWS.items():
        # float32 FFTs of different builds agree to ~1e-5 relative on values up to 50; rounding to 5 decimals adds 5e-6
        torch.testing.assert_close(features[frame], torch.tensor(values), atol=2e-3, rtol=1e-4)


def test_mfcc_matches_torchaudio_kaldi_with_deltas():
    waveform = torch.from_numpy(synthesize(["aa", "s", "iy"], [0.2, 0.15, 0.3], np.random.default_rng(0)))
    features = mfcc_features(waveform, SR)
    reference = torchaudio.compliance.kaldi.mfcc(waveform[None], sample_frequency=SR, use_energy=False).T
    deltas = torchaudio.functional.compute_deltas(reference)
    expected = torch.cat([reference, deltas, torchaudio.functional.compute_deltas(deltas)]).T
    assert features.shape == (1 + (len(waveform) - 400) // 160, 39)  # 25 ms window, 10 ms hop at 16 kHz
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    # computed on the raw [-1, 1] scale: normalising the waveform changes c0 (log energy), not just nothing
    normalised = (waveform - waveform.mean()) / waveform.std()
    assert not torch.allclose(mfcc_features(normalised, SR)[:, 0], features[:, 0], atol=1e-2)
    assert mfcc_features(torch.zeros(100), SR).shape == (0, 39)


def test_feature_store_round_trip_memory_map_and_utterance_sampling(corpus, tmp_path):
    labeler = HubertPseudoLabeler.for_mfcc(4)
    store = dump_features(corpus["train"], labeler, tmp_path, progress=False)
    assert isinstance(store.features, np.memmap) and store.dim == 39 and len(store) == 8
    audio = corpus["train"][3]["audio"]["array"]
    expected = mfcc_features(torch.from_numpy(audio), SR).numpy()
    np.testing.assert_array_equal(store[3], expected)
    assert store.num_frames == int(store.lengths.sum()) == store.info["num_frames"]
    picked = store.sample_utterances(0.25, seed=1)
    assert len(picked) == 2 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(store.gather(picked), np.concatenate([store[i] for i in picked]))
    blocks = list(store.iter_blocks(max_frames=300))
    assert [first for first, _, _ in blocks][0] == 0 and blocks[-1][1] == len(store)
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in blocks]), np.asarray(store.features))


# -- k-means ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_backends_fit_and_label(backend):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 39)) * 3
    frames = (centers[rng.integers(0, 6, 4000)] + rng.normal(size=(4000, 39))).astype(np.float32)
    result = fit_kmeans(frames, 6, backend=backend, sample_fraction=0.5, seed=0)
    assert result.centroids.shape == (6, 39) and result.centroids.dtype == np.float32
    assert result.num_frames == 2000 and result.fit_seconds > 0 and result.backend == backend
    total_variance = float(((frames - frames.mean(0)) ** 2).sum(1).mean())
    assert result.inertia < 0.5 * total_variance  # the clusters explain most of the spread
    ids = assign_clusters(frames, result.centroids, batch_size=777)
    brute_force = ((frames[:, None] - result.centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(ids, brute_force)
    if backend == "sklearn":  # fairseq learn_kmeans.py settings
        assert result.params == {
            "init": "k-means++",
            "max_iter": 100,
            "batch_size": 10000,
            "tol": 0.0,
            "max_no_improvement": 100,
            "n_init": 20,
            "reassignment_ratio": 0.0,
        }
    with pytest.raises(ValueError, match="fewer than n_clusters"):
        fit_kmeans(frames[:5], 6, backend=backend, sample_fraction=1.0)


# -- metrics ----------------------------------------------------------------------------------------------------------


def test_alignment_to_frames_at_a_frame_rate():
    alignment = [{"phone": "sil", "start": 0.0, "end": 0.03}, {"phone": "aa", "start": 0.03, "end": 0.075}]
    inventory = phone_inventory([alignment])
    assert inventory == {"aa": 0, "sil": 1}
    # frames at 100 Hz stand for 5, 15, 25, ... ms; by default up to the last phone end (75 ms excluded)
    np.testing.assert_array_equal(alignment_to_frames(alignment, 100, inventory), [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(alignment_to_frames(alignment, 50, inventory, 5), [1, 0, 0, 0, -1])
    np.testing.assert_array_equal(alignment_to_frames(alignment, 50, inventory, 3, frame_offset=0.0125), [1, 0, 0])


def test_purities_on_a_hand_example():
    phones = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([3, 3, 3, 3, 3, 4])
    # cluster 3 holds phones {0: 3, 1: 2}, cluster 4 holds {1: 1}: phone purity (3 + 1) / 6
    assert phone_purity(phones, labels) == pytest.approx(4 / 6)
    # phone 0 lies in {3: 3}, phone 1 in {3: 2, 4: 1}: cluster purity (3 + 2) / 6
    assert cluster_purity(phones, labels) == pytest.approx(5 / 6)
    # I = H(phone) - H(phone | label) = ln 2 - (5/6) H(3/5, 2/5)
    h_cond = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    assert phone_normalized_mutual_information(phones, labels) == pytest.approx(1 - 5 / 6 * h_cond / math.log(2))
    # ignored frames (unaligned phone -1, label -100) do not count
    with_ignored = label_quality(np.append(phones, [-1, 0]), np.append(labels, [3, -100]))
    assert with_ignored["num_frames"] == 6 and with_ignored["phone_purity"] == pytest.approx(4 / 6)


def test_pnmi_is_one_for_labels_equal_to_phones_and_near_zero_for_random_labels():
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 40, size=200_000)
    assert phone_normalized_mutual_information(phones, phones) == pytest.approx(1.0)
    assert phone_normalized_mutual_information(phones, (phones * 7 + 3) % 40) == pytest.approx(1.0)  # renamed
    assert phone_normalized_mutual_information(phones, rng.integers(0, 100, size=phones.size)) < 0.01


# -- stages -----------------------------------------------------------------------------------------------------------


def test_labels_from_dumped_features_equal_the_labelers_own(corpus, tmp_path):
    dataset = corpus["validation"]
    labeler = HubertPseudoLabeler.for_mfcc(5, centroids=np.random.default_rng(0).normal(size=(5, 39)) * 10)
    store = dump_features(dataset, labeler, tmp_path / "features", progress=False)
    from_features = label_split(dataset, labeler, tmp_path / "a", features=store, progress=False)
    from_audio = label_split(dataset, labeler, tmp_path / "b", progress=False)
    assert load_label_info(tmp_path / "a")["labelled_from"] == "features"
    assert load_label_info(tmp_path / "b")["labelled_from"] == "audio"
    assert from_features["labels"] == from_audio["labels"] and from_features["id"] == dataset["id"]
    audio = torch.from_numpy(dataset[1]["audio"]["array"])
    assert from_audio[1]["labels"] == labeler(audio[None]).cluster_ids[0].tolist()


def test_interrupted_stage_leaves_no_partial_output(tmp_path):
    target = tmp_path / "stage"

    def crash(folder: Path):
        (folder / "half-written.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("crash", target, crash)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    (tmp_path / ".stage.incomplete").mkdir()  # as if a killed run left it behind
    (tmp_path / ".stage.incomplete" / "junk").write_text("x")
    result = run_stage("ok", target, lambda folder: (folder / "out.txt").write_text("done"))
    assert not result.skipped and (target / "out.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    assert run_stage("ok", target, lambda folder: pytest.fail("must not rerun")).skipped


def test_iteration_stages_resume_and_skip_what_is_done(corpus, tmp_path, monkeypatch):
    args = PseudoLabelArguments(output_dir=str(tmp_path), num_clusters=4, sample_fraction=1.0, seed=0)
    calls = {"dump_features": 0, "fit_labeler": 0, "label_split": 0}
    for name in calls:
        original = getattr(stages_module, name)

        def counted(*a, _original=original, _name=name, **k):
            calls[_name] += 1
            return _original(*a, **k)

        monkeypatch.setattr(stages_module, name, counted)

    # first run: the validation labelling is interrupted after the train labels are published
    real_label_split = stages_module.label_split

    def flaky_label_split(dataset, *a, **k):
        if len(dataset) == 3:
            raise RuntimeError("simulated crash while labelling validation")
        return real_label_split(dataset, *a, **k)

    monkeypatch.setattr(stages_module, "label_split", flaky_label_split)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pseudo_label_iteration(corpus, args, kmeans_kwargs={"nredo": 3}, progress=False)
    assert (tmp_path / "labels" / "train" / "stage_complete.json").exists()
    assert not (tmp_path / "labels" / "validation").exists()
    assert not any(p.name.startswith(".") for p in (tmp_path / "labels").iterdir())

    # second run: only the missing stages run
    monkeypatch.setattr(stages_module, "label_split", real_label_split)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    calls.update(dump_features=0, fit_labeler=0, label_split=0)
    result = run_pseudo_label_iteration(corpus, args, kmeans_kwargs={"nredo": 3}, progress=False)
    assert calls == {"dump_features": 0, "fit_labeler": 0, "label_split": 1}
    assert [s.skipped for s in result.stages] == [True, True, True, True, False, False]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())

    # third run: nothing to do
    calls.update(label_split=0)
    assert all(s.skipped for s in run_pseudo_label_iteration(corpus, args, progress=False).stages)
    assert calls["label_split"] == 0

    # outputs: labeler + metadata, labels beside the dataset, metrics against the phone alignments
    info = load_label_info(result.labeler_dir)
    assert (info["iteration"], info["feature_type"], info["num_clusters"], info["label_rate"]) == (1, "mfcc", 4, 100.0)
    assert info["kmeans"]["backend"] == "faiss" and info["kmeans"]["fit_seconds"] > 0
    labeled = attach_labels(corpus["validation"], result.label_dirs["validation"])
    labeler = HubertPseudoLabeler.from_pretrained(result.labeler_dir)
    audio = torch.from_numpy(labeled[0]["audio"]["array"])
    assert labeled[0]["labels"] == labeler(audio[None]).cluster_ids[0].tolist()
    metrics = json.loads((tmp_path / "metrics" / "validation" / "metrics.json").read_text())
    assert metrics == result.metrics["validation"]
    # 4 MFCC clusters of 4 tone/noise "phones" carry most of the phone information; random labels carry none
    assert metrics["pnmi"] > 0.5 and metrics["phone_purity"] > 0.6, metrics
    with pytest.raises(ValueError, match="not in the order"):
        attach_labels(corpus["validation"].select([2, 1, 0]), result.label_dirs["validation"])


def test_crop_labels_follows_the_audio_crop():
    labels = np.arange(100)  # 1 s at 100 Hz
    np.testing.assert_array_equal(crop_labels(labels, 1600, 3200, SR, 100), np.arange(10, 30))
    np.testing.assert_array_equal(crop_labels(labels[:50], 8000, 3200, SR, 50), np.arange(25, 35))
    assert len(crop_labels(labels, 15000, 3200, SR, 100)) == 6  # cut at the end of the labels


def test_build_labeler_from_a_pretraining_checkpoint(tmp_path):
    """Iteration 2: layer features of the iteration-1 checkpoint (a saved HubertForPreTraining)."""
    config = HubertPretrainingConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_clusters=4,
    )
    model = HubertForPreTraining(config).eval()
    model.save_pretrained(tmp_path / "iteration1")
    args = PseudoLabelArguments(
        output_dir=str(tmp_path / "iteration2"),
        iteration=2,
        feature_type="hubert",
        encoder_name_or_path=str(tmp_path / "iteration1"),
        layer=1,
        num_clusters=7,
    )
    labeler = build_labeler(args)
    assert (labeler.config.iteration, labeler.config.layer, labeler.config.num_clusters) == (2, 1, 7)
    assert labeler.config.label_rate == 50.0 and labeler.config.normalize_input
    assert labeler.config.source_model == str(tmp_path / "iteration1")
    waveform = torch.from_numpy(synthesize(["aa", "iy"], [0.3, 0.3], np.random.default_rng(0)))
    features, _ = labeler.extract_features(waveform)
    expected = hubert_layer_features(model.hubert, waveform, 1, normalize_input=True)
    torch.testing.assert_close(features[0], expected)
    with pytest.raises(ValueError, match="needs `layer`"):
        build_labeler(PseudoLabelArguments(output_dir=str(tmp_path), feature_type="hubert"))
