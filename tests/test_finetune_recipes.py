"""End-to-end runs of recipes/finetune_asr.py and recipes/finetune_audio_classification.py on tiny offline corpora."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import fields
from pathlib import Path

import datasets
import pytest
import torch
from transformers import (
    AutoConfig,
    BertConfig,
    BertModel,
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
    pipeline,
)

import hf_speech_cl  # noqa: F401  (registers the Auto classes)
from hf_speech_cl.data import DataArguments
from hf_speech_cl.data.synthetic import TINY_PARAMS
from hf_speech_cl.presets import encoder_preset
from hf_speech_cl.training import PretrainingArguments, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMALL = encoder_preset(
    "tiny",
    conv_dim=[32] * 7,
    hidden_size=64,
    intermediate_size=128,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def common(out, steps, *extra):
    return [
        "--output_dir",
        str(out),
        "--model_size",
        "tiny",
        "--max_steps",
        str(steps),
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--eval_steps",
        "2",
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_eval_samples",
        "4",
        *extra,
    ]


def write_wav(dataset, path):
    """The first clip of `dataset` as an audio file (its stored bytes, whatever the container)."""
    row = dataset.cast_column("audio", datasets.Audio(decode=False))[0]["audio"]
    path.write_bytes(row["bytes"] if row.get("bytes") else Path(row["path"]).read_bytes())
    return path


@pytest.fixture(scope="module")
def asr_recipe():
    return load_recipe("finetune_asr")


@pytest.fixture(scope="module")
def cls_recipe():
    return load_recipe("finetune_audio_classification")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A stock `Wav2Vec2ForPreTraining` checkpoint, smaller than the tiny preset (what recipes/pretrain_wav2vec2.py
    writes)."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**SMALL))
    path = tmp_path_factory.mktemp("w2v") / "checkpoint"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def asr_run(tmp_path_factory, tiny_librispeech, asr_recipe):
    out = tmp_path_factory.mktemp("asr") / "out"
    kwargs = json.dumps(TINY_PARAMS["synthetic-librispeech"])
    argv = common(out, 3, "--dataset_kwargs", kwargs, "--train_minutes", "1", "--attention_dropout", "0.0")
    summary = asr_recipe.main(argv)
    return out, summary, argv


def test_asr_recipe_outputs_a_pipeline_ready_model_with_card(asr_run, tiny_librispeech, tmp_path):
    out, summary, _ = asr_run
    assert {"validation_wer", "validation_cer", "test_wer", "test_cer", "test_blank_fraction"} <= set(summary)
    assert 0.0 <= summary["test_cer"] and summary["test_num_utterances"] == 4
    vocab = json.loads((out / "vocab.json").read_text())
    assert [vocab["<pad>"], vocab["<unk>"], vocab["|"]] == [0, 1, 2] and "'" in vocab and "E" in vocab
    config = AutoConfig.from_pretrained(out)
    assert config.vocab_size == len(vocab) and config.pad_token_id == 0 and config.ctc_zero_infinity
    # --attention_dropout reaches the config; unset dropouts keep the preset's (Wav2Vec2Config's 0.1)
    assert config.attention_dropout == 0.0 and config.hidden_dropout == 0.1 and config.final_dropout == 0.1
    records = read_metrics(out / "logs")
    assert any("eval_blank_fraction" in r for r in records) and any("test_wer" in r for r in records)
    assert sum(1 for r in records if "eval_wer" in r) == 2  # at update 2 and at the end (3)
    predictions = [json.loads(line) for line in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["reference"] for p in predictions)
    card = (out / "README.md").read_text()
    assert "| wer |" in card and "| cer |" in card and "synthetic" in card and "pipeline_tag: automatic-speech" in card
    assert "speaker-balanced subset of 1 minutes" in card
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_wer"] == pytest.approx(summary["test_wer"])

    wav = write_wav(tiny_librispeech["test"], tmp_path / "clip.wav")
    asr = pipeline("automatic-speech-recognition", model=str(out))
    assert isinstance(asr(str(wav))["text"], str)


def test_asr_recipe_resumes(asr_run, asr_recipe):
    out, _, argv = asr_run
    argv[argv.index("--max_steps") + 1] = "5"  # same command, more updates: continues from checkpoint-3
    asr_recipe.main(argv)
    state = json.loads((out / "train_results.json").read_text())
    assert state["global_step"] == 5 and state["resumed_from"].endswith("checkpoint-3")


def test_asr_recipe_probe_on_a_wav2vec2_checkpoint(tmp_path, tiny_librispeech, asr_recipe, small_checkpoint):
    path, source = small_checkpoint
    out = tmp_path / "probe"
    asr_recipe.main(
        common(
            out,
            2,
            "--dataset_kwargs",
            json.dumps(TINY_PARAMS["synthetic-librispeech"]),
            "--train_minutes",
            "1",
            "--model_name_or_path",
            str(path),
            "--probe",
            "--probe_hidden_size",
            "16",
            "--test_split",
            "none",
        )
    )
    model = hf_speech_cl.CTCProbeForCTC.from_pretrained(out)
    state = model.encoder.state_dict()
    for name, value in source.wav2vec2.state_dict().items():
        if name in state:
            assert torch.equal(state[name], value), name  # the encoder did not move
    assert (out / "modeling_ctc_probe.py").is_file()
    card = (out / "README.md").read_text()
    assert "frozen-encoder probe" in card and "trust_remote_code=True" in card and "model type `wav2vec2`" in card


def test_keyword_spotting_recipe(tmp_path, tiny_speech_commands, cls_recipe, small_checkpoint):
    out = tmp_path / "ks"
    summary = cls_recipe.main(
        common(
            out,
            4,
            "--dataset_kwargs",
            json.dumps(TINY_PARAMS["synthetic-speech-commands"]),
            "--model_name_or_path",
            str(small_checkpoint[0]),
            "--max_eval_samples",
            "12",
            "--hidden_dropout",
            "0.0",
            "--final_dropout",
            "0.3",
        )
    )
    assert {"validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1"} <= set(summary)
    config = AutoConfig.from_pretrained(out)
    names = tiny_speech_commands["train"].features["label"].names
    assert [config.id2label[i] for i in range(len(names))] == names and config.label2id["yes"] == 0
    # No SpecAugment by default: with time masks the classifier learned the masks (see the recipe's --help).
    assert config.mask_time_prob == 0.0
    # the dropout flags override the checkpoint's config; the others keep it
    assert (config.hidden_dropout, config.final_dropout, config.attention_dropout) == (0.0, 0.3, 0.1)
    assert (out / "confusion_matrix_test.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((out / "confusion_matrix_test.json").read_text())["matrix"]) == len(names)
    card = (out / "README.md").read_text()
    assert "| accuracy |" in card and "| macro_f1 |" in card and "confusion_matrix_test.png" in card
    wav = write_wav(tiny_speech_commands["test"], tmp_path / "clip.wav")
    predictions = pipeline("audio-classification", model=str(out))(str(wav))
    assert predictions[0]["label"] in names


def test_emotion_probe_recipe_counts_labels_outside_the_label_set(
    tmp_path, tiny_prosody, cls_recipe, small_checkpoint
):
    # String labels; two validation clips carry a label training never saw.
    corpus = datasets.DatasetDict(
        {s: tiny_prosody[s].cast_column("label", datasets.Value("string")) for s in ("train", "validation")}
    )
    corpus = datasets.DatasetDict(
        {
            "train": corpus["train"].map(
                lambda r: {"label": tiny_prosody["train"].features["label"].int2str(int(r))}, input_columns="label"
            ),
            "validation": corpus["validation"].map(
                lambda r, i: {
                    "label": "bored" if i < 2 else tiny_prosody["validation"].features["label"].int2str(int(r))
                },
                input_columns="label",
                with_indices=True,
            ),
        }
    )
    corpus.save_to_disk(tmp_path / "data")
    out = tmp_path / "er"
    summary = cls_recipe.main(
        common(
            out,
            2,
            "--task",
            "emotion_recognition",
            "--dataset_name",
            str(tmp_path / "data"),
            "--test_split",
            "none",
            "--probe",
            "--max_eval_samples",
            "8",
            "--model_name_or_path",
            str(small_checkpoint[0]),
        )
    )
    assert summary["validation_dropped_labels"] == 2 and summary["validation_num_utterances"] == 6
    config = AutoConfig.from_pretrained(out)
    assert sorted(config.label2id) == ["angry", "happy", "neutral", "sad"] and config.use_weighted_layer_sum
    assert "frozen-encoder probe" in (out / "README.md").read_text()


@pytest.mark.parametrize("name", ["finetune_asr", "finetune_audio_classification"])
def test_help_documents_every_flag(name, capsys):
    recipe = load_recipe(name)
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    own = [
        c
        for c in vars(recipe).values()
        if isinstance(c, type) and c.__name__.endswith("Arguments") and c.__module__ == name
    ]
    for dataclass_type in (*own, DataArguments, PretrainingArguments):
        for f in fields(dataclass_type):
            assert f"--{f.name}" in text, f.name
            assert f.metadata.get("help"), f"{dataclass_type.__name__}.{f.name} has no help"


def test_recipes_reject_a_non_speech_checkpoint(tmp_path, asr_recipe, cls_recipe, tiny_librispeech):
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, vocab_size=10)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a speech encoder"):
        asr_recipe.main(common(tmp_path / "a", 1, "--model_name_or_path", str(tmp_path / "bert")))
    with pytest.raises(ValueError, match="not a speech encoder"):
        cls_recipe.main(common(tmp_path / "c", 1, "--model_name_or_path", str(tmp_path / "bert")))


def test_fine_tuning_into_the_checkpoint_folder_is_refused(asr_recipe, small_checkpoint):
    path = small_checkpoint[0]
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(ValueError, match="is the checkpoint being fine-tuned"):
        asr_recipe.main(common(path, 1, "--model_name_or_path", str(path)))
    assert sorted(p.name for p in path.iterdir()) == before
