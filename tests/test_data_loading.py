"""The data pipeline: spec → datasets, decoding/resampling, filters and counters, crops, length grouping, subsets."""

from __future__ import annotations

import itertools
import json
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate.data_loader import skip_first_batches
from transformers import HfArgumentParser, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2PreTrainedModel

import hf_speech_cl.data as data
from hf_speech_cl.data import (
    AudioCollator,
    DataArguments,
    LengthGroupedIterable,
    SeededLengthGroupedSampler,
    SpeechDataset,
    SpeechIterableDataset,
    build_pretraining_dataloaders,
    decode_audio,
    load_speech_dataset,
    make_dataloader,
    min_input_samples,
    receptive_field_samples,
    select_subset_by_duration,
)

SR = data.DEFAULT_SAMPLING_RATE
_SETS = itertools.count()
TINY_CONV = {"conv_dim": (32, 32, 32), "conv_kernel": (8, 4, 4), "conv_stride": (4, 4, 4)}


def tone(seconds: float, sampling_rate: int = SR, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, seconds: float, sampling_rate: int = SR, freq: float = 440.0) -> str:
    sf.write(path, tone(seconds, sampling_rate, freq), sampling_rate)
    return str(path)


def peak_hz(waveform: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / sampling_rate)[spectrum.argmax()])


def make_dataset(folder: Path, seconds: list[float]) -> datasets.Dataset:
    """One 16 kHz file per clip in a new subfolder `set<n>/clip<i>.wav`; columns audio, text, speaker_id, duration."""
    folder = folder / f"set{next(_SETS)}"
    folder.mkdir()
    paths = [write_wav(folder / f"clip{i}.wav", s, freq=200 + 50 * i) for i, s in enumerate(seconds)]
    ds = datasets.Dataset.from_dict(
        {
            "audio": paths,
            "text": [f"CLIP {i}" for i in range(len(paths))],
            "speaker_id": list(range(len(paths))),
            "duration": seconds,
        }
    )
    return ds.cast_column("audio", datasets.Audio())


# ------------------------------------------------------------------------------------------------ audio utilities


def test_receptive_field_matches_the_models_length_formula():
    for config in (Wav2Vec2Config(), Wav2Vec2Config(**TINY_CONV)):
        model = types.SimpleNamespace(config=config)

        def frames(n, model=model):
            return int(Wav2Vec2PreTrainedModel._get_feat_extract_output_lengths(model, torch.tensor(n)))

        field = receptive_field_samples(config.conv_kernel, config.conv_stride)
        assert frames(field) == 1 and frames(field - 1) == 0
        assert min_input_samples(config) == field
        for n in (2, 10, 37):
            needed = min_input_samples(config, n)
            assert frames(needed) == n and frames(needed - 1) == n - 1
    # 25 ms at 16 kHz for the wav2vec 2.0 feature encoder (Baevski et al. 2020 §2)
    assert receptive_field_samples(Wav2Vec2Config().conv_kernel, Wav2Vec2Config().conv_stride) / SR == 0.025
    with pytest.raises(ValueError, match="conv_kernel"):
        receptive_field_samples((10, 3), (5,))


@pytest.mark.parametrize("native", [8000, 44100])
def test_decode_resamples_to_the_target_rate_and_keeps_the_pitch(tmp_path, native):
    path = write_wav(tmp_path / "x.wav", 1.5, native, freq=440.0)
    waveform, rate = decode_audio({"path": path, "bytes": None}, SR)
    assert rate == native and waveform.dtype == np.float32
    assert abs(len(waveform) - 1.5 * SR) <= 1
    assert abs(peak_hz(waveform, SR) - 440.0) < 2.0
    same, _ = decode_audio({"bytes": Path(path).read_bytes(), "path": None}, SR)
    np.testing.assert_allclose(same, waveform)


# ------------------------------------------------------------------------------------------------ the four spec kinds


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    train = make_dataset(tmp_path, [1.0, 1.2, 1.4])
    validation = make_dataset(tmp_path, [2.0])
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(tmp_path / "dict")
    train.save_to_disk(tmp_path / "single")

    loaded = load_speech_dataset(str(tmp_path / "dict"), split="validation")
    assert len(loaded) == 1 and loaded.features["audio"].sampling_rate == SR
    assert len(load_speech_dataset(str(tmp_path / "single"), split="ignored-for-a-dataset")) == 3
    with pytest.raises(ValueError, match=r"'test'.*\['train', 'validation'\]"):
        load_speech_dataset(str(tmp_path / "dict"), split="test")
    stream = load_speech_dataset(str(tmp_path / "dict"), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and len(list(stream)) == 3


def test_audiofolder_resamples_8k_and_44k_files_to_16k(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    rates = {"a.wav": SR, "b.wav": 8000, "c.wav": 44100}
    for name, rate in rates.items():
        write_wav(folder / name, 1.25, rate, freq=300.0)
    (folder / "metadata.csv").write_text("file_name,text\n" + "".join(f"{n},WORD {n[0]}\n" for n in rates))

    raw = load_speech_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(raw["text"]) == ["WORD a", "WORD b", "WORD c"]
    dataset = SpeechDataset(raw, sampling_rate=SR, keep_columns=["text"])
    assert dataset.lengths == [int(1.25 * SR)] * 3  # durations read from the headers, at the target rate
    items = [dataset[i] for i in range(3)]
    for item in items:
        assert abs(len(item["input_values"]) - 1.25 * SR) <= 1
        assert abs(peak_hz(item["input_values"], SR) - 300.0) < 2.0
    assert dataset.stats.resampled == 2 and dataset.stats.skipped == 0


def test_hub_name_calls_load_dataset_with_the_spec(tmp_path, monkeypatch):
    rows = make_dataset(tmp_path, [1.0, 3.0, 2.0])
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return rows.to_iterable_dataset() if kwargs.get("streaming") else rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stream = load_speech_dataset(
        "openslr/librispeech_asr", config="clean", split="train.100", streaming=True, cache_dir="/c", revision="main"
    )
    assert calls == [
        (
            "openslr/librispeech_asr",
            "clean",
            {"split": "train.100", "streaming": True, "cache_dir": "/c", "revision": "main"},
        )
    ]
    clips = list(SpeechIterableDataset(stream, sampling_rate=SR, keep_columns=["text"]))
    assert [c["text"] for c in clips] == ["CLIP 0", "CLIP 1", "CLIP 2"]
    assert [len(c["input_values"]) for c in clips] == [SR, 3 * SR, 2 * SR]

    load_speech_dataset("someone/speech", split="test")
    assert calls[-1] == ("someone/speech", None, {"split": "test", "streaming": False, "cache_dir": None})


def test_offline_names_route_to_load_corpus(tmp_path, monkeypatch):
    import hf_speech_cl.data.synthetic as synthetic

    corpus = datasets.DatasetDict({"train": make_dataset(tmp_path, [1.0, 2.0]), "test": make_dataset(tmp_path, [1.0])})
    calls = []

    def fake_load_corpus(name, *, cache_dir=None, **kwargs):
        calls.append((name, cache_dir, kwargs))
        return corpus

    monkeypatch.setattr(synthetic, "load_corpus", fake_load_corpus)
    for name in synthetic.CORPORA:
        assert data.is_offline_corpus(name)
        assert len(load_speech_dataset(name, split="train", cache_dir="/cache", seed=3, num_utterances=9)) == 2
        assert calls[-1] == (name, "/cache", {"config": None, "seed": 3, "num_utterances": 9})
        load_speech_dataset(name, config="tiny", split="train", cache_dir="/cache")  # --dataset_config: a named size
        assert calls[-1] == (name, "/cache", {"config": "tiny"})
    assert not data.is_offline_corpus("openslr/librispeech_asr")
    with pytest.raises(ValueError, match="available splits"):
        load_speech_dataset(synthetic.CORPORA[0], split="validation")


# ------------------------------------------------------------------------------------------------ filters, bad input


def test_duration_filters_and_bad_files_are_counted_not_raised(tmp_path):
    paths = [
        write_wav(tmp_path / "ok1.wav", 1.0),
        write_wav(tmp_path / "ok2.wav", 2.0),
        write_wav(tmp_path / "short.wav", 0.2),
        write_wav(tmp_path / "tiny.wav", 0.01),  # below the receptive field
        write_wav(tmp_path / "long.wav", 4.0),
        write_wav(tmp_path / "empty.wav", 0.0),
    ]
    (tmp_path / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    paths.append(str(tmp_path / "garbage.wav"))
    raw = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio())
    field = min_input_samples(Wav2Vec2Config())

    dataset = SpeechDataset(raw, min_duration_s=0.0, max_duration_s=3.0, min_input_samples=field)
    assert dataset.stats.as_dict() == {
        "corrupt": 1,
        "empty": 1,
        "too_short": 1,
        "too_long": 1,
        "resampled": 0,
        "cropped": 0,
        "non_finite": 0,
        "padded": 0,
    }
    assert sorted(dataset.lengths) == [int(0.2 * SR), SR, 2 * SR]

    stricter = SpeechDataset(raw, min_duration_s=0.5, max_duration_s=3.0, min_input_samples=field)
    assert stricter.stats.too_short == 2 and len(stricter) == 2


def test_corrupt_file_behind_a_duration_column_is_skipped_mid_epoch(tmp_path):
    """A `duration` column can hide a corrupt file or an empty clip until they are decoded: skip, count, go on."""
    raw = make_dataset(tmp_path, [1.0, 1.5, 2.0, 1.2])
    folder = Path(raw.cast_column("audio", datasets.Audio(decode=False))[0]["audio"]["path"]).parent
    (folder / "clip1.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(4000))
    sf.write(folder / "clip3.wav", np.zeros(0, np.float32), SR)
    dataset = SpeechDataset(raw, keep_columns=["text"])
    assert len(dataset) == 4 and dataset[1] is None and dataset.stats.corrupt == 1

    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SR, return_attention_mask=True)
    texts = []
    for workers in (0, 1):  # in a worker process too: the counters are shared with the main process
        loader = make_dataloader(dataset, AudioCollator(extractor), 2, seed=0, num_workers=workers)
        for batch in loader:
            if batch is not None:
                texts += batch["text"]
    assert sorted(texts) == ["CLIP 0", "CLIP 0", "CLIP 2", "CLIP 2"]
    assert dataset.stats.corrupt == 3 and dataset.stats.empty == 2


# ------------------------------------------------------------------------------------------------ crops


def test_random_crop_length_and_determinism(tmp_path):
    raw = make_dataset(tmp_path, [3.0, 0.5, 2.0])
    crop = 0.75

    def clips(seed, epoch):
        dataset = SpeechDataset(raw, max_crop_s=crop, min_duration_s=0.25, seed=seed)
        dataset.set_epoch(epoch)
        return dataset, [dataset[i]["input_values"] for i in range(len(dataset))]

    dataset, first = clips(seed=0, epoch=0)
    assert [len(x) for x in first] == [int(crop * SR), int(0.5 * SR), int(crop * SR)] == dataset.lengths
    full = decode_audio(raw.cast_column("audio", datasets.Audio(decode=False))[0]["audio"], SR)[0]
    starts = np.flatnonzero(full == first[0][0])
    assert any(np.array_equal(full[s : s + len(first[0])], first[0]) for s in starts)  # a contiguous window
    assert dataset.stats.cropped == 2

    for a, b in zip(first, clips(seed=0, epoch=0)[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], clips(seed=0, epoch=1)[1][0])
    assert not np.array_equal(first[0], clips(seed=1, epoch=0)[1][0])


# ------------------------------------------------------------------------------------------------ length grouping


def padding_fraction(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_length_grouping_cuts_padding_and_is_a_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(SR, 15 * SR, size=400).tolist()
    sampler = SeededLengthGroupedSampler(lengths, batch_size=8, seed=5)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(400))
    random_order = np.random.default_rng(1).permutation(400).tolist()
    assert padding_fraction(epoch0, lengths, 8) < 0.5 * padding_fraction(random_order, lengths, 8)

    assert list(sampler) == epoch0  # same epoch → same order
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    again = SeededLengthGroupedSampler(lengths, batch_size=8, seed=5)
    again.set_epoch(1)
    assert list(again) == epoch1
    other_seed = SeededLengthGroupedSampler(lengths, batch_size=8, seed=6)
    assert list(other_seed) != epoch0
    plain = SeededLengthGroupedSampler(lengths, batch_size=8, seed=5, group_by_length=False)
    assert sorted(plain) == list(range(400)) and list(plain) == list(plain)


def test_resumed_epoch_sees_the_remaining_batches(tmp_path):
    raw = make_dataset(tmp_path, [1.0 + 0.1 * i for i in range(12)])
    dataset = SpeechDataset(raw, keep_columns=["text"], max_crop_s=1.5)
    loader = make_dataloader(dataset, AudioCollator(Wav2Vec2FeatureExtractor(sampling_rate=SR)), 3, seed=7)
    loader.sampler.set_epoch(2)  # what accelerate's prepared loader does at each epoch
    epoch = [(b["text"], b["input_values"]) for b in loader]
    resumed = [(b["text"], b["input_values"]) for b in skip_first_batches(loader, 2)]
    assert [t for t, _ in resumed] == [t for t, _ in epoch[2:]]
    for (_, a), (_, b) in zip(resumed, epoch[2:]):
        torch.testing.assert_close(a, b)  # the same random crops too
    assert dataset.epoch == 2


def test_streaming_length_grouping(tmp_path):
    seconds = [1.0, 3.0, 1.1, 2.9, 1.2, 2.8, 1.3, 2.7, 2.0, 1.9]
    raw = make_dataset(tmp_path, seconds).to_iterable_dataset(num_shards=2)
    stream = SpeechIterableDataset(raw, keep_columns=["text"])

    def batches(epoch, buffer_size=10):
        grouped = LengthGroupedIterable(stream, batch_size=2, buffer_size=buffer_size, seed=3)
        grouped.set_epoch(epoch)
        items = list(grouped)
        return [tuple(sorted(i["text"] for i in items[k : k + 2])) for k in range(0, len(items), 2)], items

    epoch0, items = batches(0)
    assert sorted(t for b in epoch0 for t in b) == sorted(f"CLIP {i}" for i in range(10))
    lengths = [len(i["input_values"]) for i in items]
    order = list(range(len(items)))
    assert padding_fraction(order, lengths, 2) < 0.05 < padding_fraction(order, [SR * s for s in seconds], 2)
    assert batches(0)[0] == epoch0 and batches(1)[0] != epoch0
    assert set(epoch0) == set(batches(1)[0])  # same window → same batches, another order


# ------------------------------------------------------------------------------------------------ arguments, pipeline


def test_data_arguments_parse_and_validate():
    parser = HfArgumentParser(DataArguments)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help"
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--dataset_name",
            "openslr/librispeech_asr",
            "--max_train_crop_s",
            "4",
            "--eval_split",
            "none",
            "--no_group_by_length",
            "--dataset_kwargs",
            '{"revision": "main"}',
            "--streaming",
        ]
    )
    assert args.max_train_crop_s == 4.0 and args.eval_split is None and not args.group_by_length and args.streaming
    assert args.max_duration_s == 20.0 and DataArguments(max_duration_s=0, max_train_crop_s=0).max_duration_s is None
    assert args.dataset_kwargs_dict == {"revision": "main"} and args.dataset_note is None
    assert DataArguments().sampling_rate == Wav2Vec2FeatureExtractor().sampling_rate
    assert "synthetic" in DataArguments().dataset_note
    with pytest.raises(ValueError, match="max_duration_s=0.5 is below min_duration_s=1.0"):
        DataArguments(max_duration_s=0.5)
    with pytest.raises(ValueError, match="JSON object"):
        DataArguments(dataset_kwargs=json.dumps([1, 2]))


def test_build_pretraining_dataloaders_end_to_end(tmp_path):
    config = Wav2Vec2Config(**TINY_CONV)
    train = make_dataset(tmp_path, [0.002, 1.0, 2.0, 3.0, 25.0, 1.5])
    datasets.DatasetDict({"train": train, "validation": make_dataset(tmp_path, [1.0, 2.0])}).save_to_disk(
        tmp_path / "ds"
    )
    args = DataArguments(dataset_name=str(tmp_path / "ds"), min_duration_s=0.0, max_train_crop_s=1.2)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=SR, return_attention_mask=True)
    train_loader, eval_loader = build_pretraining_dataloaders(args, extractor, config, batch_size=2, seed=1)
    assert train_loader.dataset.stats.as_dict()["too_short"] == 1  # below the tiny encoder's receptive field
    assert train_loader.dataset.stats.as_dict()["too_long"] == 1  # over max_duration_s=20
    batches = list(train_loader)
    assert sum(len(b["input_values"]) for b in batches) == 4
    assert max(b["input_values"].shape[1] for b in batches) == int(1.2 * SR)
    assert [b["attention_mask"].sum().item() for b in eval_loader] == [3 * SR]
    with pytest.raises(ValueError, match="8000"):
        build_pretraining_dataloaders(args, Wav2Vec2FeatureExtractor(sampling_rate=8000), config, batch_size=2)


# ------------------------------------------------------------------------------------------------ fine-tuning subsets


def test_select_subset_by_duration_is_balanced_reproducible_and_nested():
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(6), 30)
    durations = rng.uniform(2.0, 8.0, size=len(speakers))
    durations[speakers == 5] = rng.uniform(2.0, 8.0, size=30) / 10  # one speaker with little audio
    ds = datasets.Dataset.from_dict({"speaker_id": speakers, "duration": durations, "id": np.arange(len(speakers))})

    subset = select_subset_by_duration(ds, 10, seed=0)
    total = sum(subset["duration"])
    assert abs(total - 600) <= durations.max()
    per_speaker = {s: sum(d for d, k in zip(subset["duration"], subset["speaker_id"]) if k == s) for s in range(6)}
    busy = [per_speaker[s] for s in range(5)]  # speaker 5 runs out and drops out
    assert per_speaker[5] == pytest.approx(durations[speakers == 5].sum())
    assert max(busy) - min(busy) <= durations.max()

    assert subset["id"] == select_subset_by_duration(ds, 10, seed=0)["id"]
    assert subset["id"] != select_subset_by_duration(ds, 10, seed=1)["id"]
    assert set(select_subset_by_duration(ds, 3, seed=0)["id"]) <= set(subset["id"])  # nested, like Libri-light
    with pytest.raises(ValueError, match="holds"):
        select_subset_by_duration(ds, 1000, seed=0)
    with pytest.raises(ValueError, match="speaker_column"):
        select_subset_by_duration(ds, 1, seed=0, speaker_column="spk")


# ------------------------------------------------------------------------------------------------ real offline corpus


def test_offline_corpus_through_the_whole_pipeline(tmp_path):
    """synthetic-librispeech, built tiny here (a few seconds), through DataArguments → build_speech_datasets."""
    corpus = {"train_hours": 0.01, "eval_hours": 0.003, "train_speakers": 3, "eval_speakers": 1}
    args = DataArguments(
        dataset_kwargs=json.dumps(corpus),
        cache_dir=str(tmp_path / "corpora"),
        train_minutes=0.4,
        min_duration_s=0.5,
        max_train_crop_s=3.0,
    )
    assert args.dataset_name == "synthetic-librispeech" and "synthetic" in args.dataset_note
    train, evaluation = data.build_speech_datasets(args, seed=0, keep_columns=["text", "speaker_id"])
    items = [train[i] for i in range(len(train))]
    decoded = np.array([len(item["input_values"]) for item in items])
    assert np.abs(decoded - np.array(train.lengths)).max() <= 1  # lengths from the `duration` column
    assert decoded.min() >= 0.5 * SR and decoded.max() <= 3.0 * SR
    assert len({item["speaker_id"] for item in items}) == 3  # the speaker-balanced subset spans every speaker
    assert all(item["text"] == item["text"].upper() for item in items)
    assert len(evaluation) > 0 and train.stats.corrupt == 0 and train.stats.resampled == 0
