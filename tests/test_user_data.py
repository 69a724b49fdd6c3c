"""The data users bring: a local copy of a Hub dataset in the `openslr/librispeech_asr` layout, streaming
fine-tuning on it, every test utterance scored, SimCLR batches of one clip, and clips that are bad in every way
(unreadable, empty, NaN, too short, too long) dropped, counted and named."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2FeatureExtractor

import hf_speech_cl  # noqa: F401
from hf_speech_cl.data import AudioCollator, DataArguments, load_speech_dataset
from hf_speech_cl.data.pipeline import build_speech_datasets
from hf_speech_cl.finetuning.data import build_eval_dataset

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
HUB_COLUMNS = ["file", "audio", "text", "speaker_id", "chapter_id", "id"]  # openslr/librispeech_asr


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _embedded(split: datasets.Dataset) -> list[dict]:
    """Rows in the Hub layout, audio as {bytes, path} (what the Hub's Parquet shards hold)."""
    raw = split.cast_column("audio", datasets.Audio(decode=False)).select_columns(HUB_COLUMNS)
    rows = []
    for row in raw:
        audio = row["audio"]
        data = audio["bytes"] if audio.get("bytes") else Path(audio["path"]).read_bytes()
        rows.append({**row, "audio": {"bytes": data, "path": Path(audio["path"] or row["file"]).name}})
    return rows


def _flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="FLAC")
    return buffer.getvalue()


def _write_shard(rows: list[dict], path: Path) -> None:
    features = datasets.Features(
        {
            "file": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=SR),
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "chapter_id": datasets.Value("int64"),
            "id": datasets.Value("string"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, tiny_librispeech):
    """`data/{train,validation,test}-00000-of-00001.parquet` as in openslr/librispeech_asr; the test split holds
    one 25-s utterance (longer than the 20-s training limit) and one of 10 ms (shorter than the receptive field)."""
    root = tmp_path_factory.mktemp("librispeech_copy")
    for split in ("train", "validation", "test"):
        rows = _embedded(tiny_librispeech[split])
        if split == "test":
            decoded = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
            long = np.concatenate(decoded * 20)[: 25 * SR]
            rows.append(
                {
                    **rows[0],
                    "id": "9-9-long",
                    "text": " ".join(r["text"] for r in rows),
                    "audio": {"bytes": _flac(long), "path": "long.flac"},
                }
            )
            rows.append(
                {
                    **rows[0],
                    "id": "9-9-short",
                    "text": "A",
                    "audio": {"bytes": _flac(decoded[0][:160]), "path": "short.flac"},
                }
            )
        _write_shard(rows, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_a_local_hub_layout_folder_loads_like_the_hub_streaming_or_not(hub_folder, tmp_path):
    table = load_speech_dataset(str(hub_folder), split="train")
    assert set(HUB_COLUMNS) <= set(table.column_names) and len(table) == 30
    stream = load_speech_dataset(str(hub_folder), split="test", streaming=True)
    assert sum(1 for _ in stream) == 8
    with pytest.raises(ValueError, match="Split 'train.100' not found.*'test', 'train', 'validation'"):
        load_speech_dataset(str(hub_folder), split="train.100")
    (tmp_path / "notes.xyz").write_text("nothing to load")
    with pytest.raises(ValueError, match="holds no dataset.*Parquet|holds no dataset.*parquet"):
        load_speech_dataset(str(tmp_path), split="train")


def test_every_test_utterance_is_scored_long_and_short(hub_folder):
    data_args = DataArguments(dataset_name=str(hub_folder))
    test = build_eval_dataset(data_args, "test", sampling_rate=SR, min_input_samples=400, keep_columns=("text",))
    assert len(test) == 8  # the 25-s one (> max_duration_s 20) and the 10-ms one (< receptive field) included
    lengths = sorted(test.lengths)
    assert lengths[0] == 400 and lengths[-1] == 25 * SR
    assert min(len(test[i]["input_values"]) for i in range(len(test))) == 400  # zero-padded, not dropped
    assert test.stats.padded == 1
    _, validation = build_speech_datasets(DataArguments(dataset_name=str(hub_folder), max_duration_s=2.0))
    assert len(validation) == 6  # the training duration limit does not apply to evaluation


def test_train_minutes_counts_usable_clips_and_speakers_only_when_asked(hub_folder):
    # 15 s among clips of at most 2.5 s: chosen before the filters, the subset would shrink after them
    args = DataArguments(dataset_name=str(hub_folder), train_minutes=0.25, max_duration_s=2.5, eval_split="none")
    train, _ = build_speech_datasets(args, sampling_rate=SR, min_input_samples=400)
    assert train.stats.skipped == 0 and sum(train.lengths) / SR == pytest.approx(15, abs=1.3)
    no_speakers = DataArguments(
        dataset_name=str(hub_folder), train_minutes=1.0, speaker_column="spk", eval_split="none"
    )
    with pytest.raises(ValueError, match="--speaker_column none"):
        build_speech_datasets(no_speakers, sampling_rate=SR)
    random_subset = DataArguments(
        dataset_name=str(hub_folder), train_minutes=0.5, speaker_column="none", eval_split="none"
    )
    train, _ = build_speech_datasets(random_subset, sampling_rate=SR)
    assert sum(train.lengths) / SR == pytest.approx(30, abs=3.5)
    assert DataArguments(train_minutes=0).train_minutes is None  # 0 on the command line: the whole split


@pytest.mark.parametrize("streaming", [False, True])
def test_asr_fine_tuning_on_a_local_copy_whole_split_streaming_or_not(hub_folder, tmp_path, streaming):
    out = tmp_path / "asr"
    argv = [
        "--dataset_name",
        str(hub_folder),
        "--output_dir",
        str(out),
        "--model_size",
        "tiny",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--eval_steps",
        "0",
        "--logging_steps",
        "1",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--eval_batch_size",
        "2",
        "--max_train_crop_s",
        "2",
        *(["--streaming"] if streaming else []),
    ]
    summary = load_recipe("finetune_asr").main(argv)
    assert summary["test_num_utterances"] == 8  # every test utterance, the 25-s one included
    assert summary["validation_num_utterances"] == 6
    predictions = (out / "predictions_test.jsonl").read_text().splitlines()
    assert len(predictions) == 8


def test_audio_collator_never_returns_fewer_clips_than_the_objective_needs():
    collator = AudioCollator(Wav2Vec2FeatureExtractor(), min_clips=2)
    clip = {"input_values": np.zeros(800, dtype=np.float32)}
    assert collator([clip, None]) is None
    assert collator([clip, clip])["input_values"].shape == (2, 800)


def _bad_clip_folder(root: Path, tiny_librispeech) -> Path:
    """An audiofolder of 8 good clips and one of each bad kind: 9 clips pass the header filters (the NaN one too),
    9 = 4 + 4 + 1, a one-clip last batch at batch size 4."""
    root.mkdir()
    good = _embedded(tiny_librispeech["train"])[:8]
    lines = ["file_name,text,id"]
    for row in good:
        name = f"{row['id']}.flac"
        (root / name).write_bytes(row["audio"]["bytes"])
        lines.append(f"{name},{row['text']},{row['id']}")
    nan = sf.read(io.BytesIO(good[0]["audio"]["bytes"]), dtype="float32")[0].copy()
    nan[100:200] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(root / "short.wav", np.zeros(SR // 5, dtype=np.float32), SR)
    sf.write(root / "long.wav", np.random.default_rng(0).normal(0, 0.1, 7 * SR).astype(np.float32), SR)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 10)
    for name in ("nan", "empty", "short", "long", "corrupt"):
        lines.append(f"{name}.wav,BAD,bad-{name}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_simclr_over_bad_clips_names_every_drop_and_keeps_the_checkpoint_finite(tmp_path, tiny_librispeech):
    folder = _bad_clip_folder(tmp_path / "bad", tiny_librispeech)
    out = tmp_path / "simclr"
    argv = [
        "--dataset_name",
        str(folder),
        "--eval_split",
        "none",
        "--output_dir",
        str(out),
        "--model_size",
        "tiny",
        "--max_steps",
        "6",  # 2 epochs of 3 batches: 4 + 4 + the one-clip remainder, which must never reach NT-Xent
        "--save_steps",
        "3",
        "--logging_steps",
        "1",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_train_crop_s",
        "1.5",
        "--max_duration_s",
        "6",
    ]
    load_recipe("pretrain_simclr").main(argv)
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 6
    report = results["data_report"]["train"]
    # the NaN clip's header is fine: it is found at decode time, once per epoch
    assert report["skipped"]["corrupt"] == 1 and report["skipped"]["empty"] == 1
    assert report["skipped"]["too_short"] == 1 and report["skipped"]["too_long"] == 1
    assert report["skipped"]["non_finite"] >= 1
    for cause, name in [
        ("corrupt", "bad-corrupt"),
        ("empty", "bad-empty"),
        ("too_short", "bad-short"),
        ("too_long", "bad-long"),
        ("non_finite", "bad-nan"),
    ]:
        assert report["examples"][cause] == [name]
    for path in [out / "model.safetensors", *sorted(out.glob("checkpoint-*/model.safetensors"))]:
        weights = load_file(path)
        assert weights and all(torch.isfinite(t).all() for t in weights.values()), path


def test_clips_left_out_of_the_scored_splits_are_in_the_data_report(tmp_path, tiny_librispeech):
    """Fine-tuning: the test split's drops reach train_results.json and all_results.json, not only the log."""
    folder = _bad_clip_folder(tmp_path / "bad", tiny_librispeech)
    out = tmp_path / "asr"
    argv = [
        "--dataset_name",
        str(folder),
        "--eval_split",
        "none",
        "--test_split",
        "train",  # the one split of the folder, scored as the test split
        "--output_dir",
        str(out),
        "--model_size",
        "tiny",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
    ]
    load_recipe("finetune_asr").main(argv)
    for name in ("train_results.json", "all_results.json"):
        report = json.loads((out / name).read_text())["data_report"]
        assert {"train", "test"} <= set(report), (name, report)
        assert report["test"]["skipped"]["corrupt"] == 1 and report["test"]["examples"]["corrupt"] == ["bad-corrupt"]
        assert report["test"]["skipped"]["non_finite"] == 1  # decoded once: the test split is scored once


def test_keyword_spotting_streams_a_whole_split(tmp_path, tiny_speech_commands):
    from hf_speech_cl.data.synthetic import TINY_PARAMS

    argv = [
        "--dataset_kwargs",
        json.dumps(TINY_PARAMS["synthetic-speech-commands"]),
        "--streaming",
        "--output_dir",
        str(tmp_path / "ks"),
        "--model_size",
        "tiny",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--eval_steps",
        "0",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
    ]
    summary = load_recipe("finetune_audio_classification").main(argv)
    assert summary["test_num_utterances"] == len(tiny_speech_commands["test"])
