"""Fine-tuning building blocks: vocabulary, CTC decoding and metrics, checkpoint resolution, probes, classification.

Audio here is synthetic "tone speech": every letter is a short tone of its own frequency, so a tiny CTC model can
learn to transcribe it in a few dozen updates (no TTS corpus needed).
"""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import soundfile
import torch
from transformers import (
    AutoModelForCTC,
    BertConfig,
    BertModel,
    HubertConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2ForSequenceClassification,
    Wav2Vec2Model,
    Wav2Vec2Processor,
    pipeline,
)

from hf_speech_cl.data import AudioCollator
from hf_speech_cl.finetuning import (
    PAD_TOKEN,
    UNK_TOKEN,
    WORD_DELIMITER,
    ClassificationEvaluator,
    CTCEvaluator,
    DataCollatorAudioClassification,
    DataCollatorCTC,
    LabelMapper,
    TransformerFreezer,
    asr_metrics,
    build_character_vocab,
    check_labels,
    classification_metrics,
    ctc_infeasible,
    ctc_output_lengths,
    ctc_per_utterance_loss,
    encoder_min_input_samples,
    greedy_ctc_decode,
    keep_encoder_in_eval,
    label_names,
    load_feature_extractor,
    load_pretrained_for_task,
    make_ctc_tokenizer,
    normalize_transcript,
    prepare_for_finetuning,
    save_confusion_matrix,
    trainable_parameter_names,
    vocabulary_coverage,
)
from hf_speech_cl.models.ctc_probe import CTCProbeConfig, CTCProbeForCTC, weighted_layer_sum
from hf_speech_cl.presets import default_model_size, encoder_preset
from hf_speech_cl.training import PretrainingArguments, make_accelerator, train

SR = Wav2Vec2FeatureExtractor().sampling_rate
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
TEXTS = ["THE CAT", "A DOG RAN", "NO WAY", "HELLO THERE", "IT'S ME"]
# A test-sized encoder: the tiny preset's layout with fewer conv channels.
TEST_ENCODER = encoder_preset(
    "tiny",
    conv_dim=[32] * 7,
    hidden_size=64,
    intermediate_size=128,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
NO_DROPOUT = {
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "final_dropout": 0.0,
    "layerdrop": 0.0,
    "mask_time_prob": 0.0,
}


def tone_speech(text: str, rng: np.random.Generator, letter_s: float = 0.08) -> np.ndarray:
    """Each letter a tone (two partials) of a letter-specific frequency, 20 ms gaps, 100 ms between words."""
    pieces = []
    for word in text.split():
        for char in word:
            t = np.arange(int(letter_s * SR)) / SR
            f = 300 + 110 * LETTERS.index(char)
            pieces += [0.5 * np.sin(2 * np.pi * f * t) + 0.3 * np.sin(3 * np.pi * f * t), np.zeros(int(0.02 * SR))]
        pieces.append(np.zeros(int(0.1 * SR)))
    audio = np.concatenate(pieces).astype(np.float32)
    return audio + 0.01 * rng.standard_normal(len(audio)).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_ctc_tokenizer(build_character_vocab(TEXTS), tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def feature_extractor():
    return Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True)


class SingleProcess:
    """The part of `accelerate.Accelerator` the evaluators use, for one process."""

    is_main_process = True

    def unwrap_model(self, model):
        return model

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def gather_for_metrics(self, data, use_gather_object=False):
        return data


# ----------------------------------------------------------------------------------------------------------------------
# Vocabulary and tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def test_normalize_transcript():
    assert normalize_transcript("  Hello,  world! It's  a|b. ") == "HELLO WORLD IT'S A B"
    assert normalize_transcript("a-b", chars_to_remove=None, upper=False) == "a-b"


def test_vocab_layout_and_min_count():
    vocab = build_character_vocab(["AB A", "BA'", "Q"])
    assert list(vocab.items())[:3] == [(PAD_TOKEN, 0), (UNK_TOKEN, 1), (WORD_DELIMITER, 2)]
    assert list(vocab)[3:] == ["'", "A", "B", "Q"]
    assert "Q" not in build_character_vocab(["AB A", "BA'", "Q"], min_count=2)
    with pytest.raises(ValueError, match="No character"):
        build_character_vocab(["", "  "])


def test_tokenizer_round_trip(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, group_tokens=False) == text  # `|` <-> space, letters kept
    ids = tokenizer("HELLO THERE").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[5] == WORD_DELIMITER
    assert len(tokenizer) == len(build_character_vocab(TEXTS))  # no BOS/EOS added
    assert tokenizer("HEZ").input_ids[-1] == tokenizer.unk_token_id  # Z never seen in training


def test_vocabulary_coverage_counts_unknown_characters():
    coverage = vocabulary_coverage(["THE CAT", "ZOO Z"], build_character_vocab(["THE CAT"]))
    assert (coverage.num_chars, coverage.num_oov_chars, coverage.num_transcripts_with_oov) == (10, 4, 1)
    assert coverage.oov_counts == {"Z": 2, "O": 2}
    assert "4 of 10 characters" in coverage.describe("test")


# ----------------------------------------------------------------------------------------------------------------------
# CTC decoding, losses, metrics
# ----------------------------------------------------------------------------------------------------------------------


def test_greedy_ctc_decode_merges_repeats_and_ignores_padding(tokenizer):
    frames = ["H", "H", PAD_TOKEN, "E", "L", PAD_TOKEN, "L", "O", WORD_DELIMITER, "N", "O", "A", "A"]
    ids = tokenizer.convert_tokens_to_ids(frames)
    logits = torch.full((2, len(ids), len(tokenizer)), -5.0)
    logits[0, torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    logits[1, :, tokenizer.pad_token_id] = 5.0  # all blank
    texts, blank, valid = greedy_ctc_decode(logits, torch.tensor([11, 4]), tokenizer)
    assert texts == ["HELLO NO", ""]  # the two padded frames ("A A") are dropped
    assert blank.tolist() == [2, 4] and valid.tolist() == [11, 4]


def test_asr_metrics_known_values():
    scores = asr_metrics(["A X C", "HELLO", "ANY"], ["A B C D", "HELLO", ""])
    assert scores["wer"] == pytest.approx(2 / 5)  # one substitution + one deletion over 5 reference words
    assert scores["cer"] == pytest.approx(3 / 12)  # B->X, " D" deleted, over 7 + 5 characters
    assert scores["num_empty_references"] == 1
    with pytest.raises(ValueError, match="2 predictions but 1"):
        asr_metrics(["A", "B"], ["A"])


def test_ctc_per_utterance_loss_matches_model_mean_reduction(tokenizer, feature_extractor):
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        **TEST_ENCODER,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        **NO_DROPOUT,
    )
    model = Wav2Vec2ForCTC(config).eval()
    rng = np.random.default_rng(0)
    collator = DataCollatorCTC(AudioCollator(feature_extractor), tokenizer)
    batch = collator([{"input_values": tone_speech(t, rng), "text": t} for t in TEXTS[:3]])
    assert batch["labels"].shape[0] == 3 and (batch["labels"] == -100).any()  # padded with -100
    with torch.no_grad():
        out = model(**batch)
    lengths = ctc_output_lengths(model, batch["attention_mask"], out.logits)
    per_utterance = ctc_per_utterance_loss(out.logits, batch["labels"], lengths, tokenizer.pad_token_id)
    assert per_utterance.shape == (3,)
    torch.testing.assert_close(per_utterance.mean(), out.loss)


def test_ctc_infeasible():
    assert not ctc_infeasible(3, [1, 2, 3])
    assert ctc_infeasible(3, [1, 1, 2])  # the repeat needs a blank between: 4 frames
    assert ctc_infeasible(2, [1, 2, 3])


def test_tiny_ctc_model_overfits_five_utterances_and_works_in_pipeline(tmp_path, tokenizer, feature_extractor):
    """Proves the CTC path learns: WER 0 on five tone utterances, then the saved folder transcribes a wav file."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items = [{"input_values": tone_speech(t, rng, letter_s=0.04), "text": t} for t in TEXTS]
    config = Wav2Vec2Config(
        **TEST_ENCODER,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        **NO_DROPOUT,
    )
    model = Wav2Vec2ForCTC(config)
    batch = DataCollatorCTC(AudioCollator(feature_extractor), tokenizer, return_text=True)(items)
    references = batch.pop("text")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    evaluator = CTCEvaluator([{**batch, "text": references}], SingleProcess(), tokenizer, num_examples=0)
    first_loss = None
    for update in range(400):  # the blank plateau lasts ~100-150 updates, WER 0 follows within ~50
        model.train()
        loss = model(**batch).loss
        first_loss = first_loss if first_loss is not None else loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if update % 25 == 24 and evaluator(model)["eval_wer"] == 0.0:
            break
    metrics = evaluator(model)
    assert metrics["eval_wer"] == 0.0 and metrics["eval_cer"] == 0.0, evaluator.examples
    assert metrics["eval_blank_fraction"] == 0.0 and metrics["eval_loss"] < first_loss / 10

    model.save_pretrained(tmp_path)
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(tmp_path)
    wav = tmp_path / "hello.wav"
    soundfile.write(wav, items[3]["input_values"], SR)
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path))
    assert asr(str(wav))["text"] == TEXTS[3]


# ----------------------------------------------------------------------------------------------------------------------
# The frozen-Transformer phase and probes
# ----------------------------------------------------------------------------------------------------------------------


def test_transformer_freezer_phases():
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**TEST_ENCODER, vocab_size=8))
    model.freeze_feature_encoder()
    freezer = TransformerFreezer(model, num_updates=3)
    conv = next(model.wav2vec2.feature_extractor.parameters())
    layer = model.wav2vec2.encoder.layers[0].attention.q_proj.weight
    freezer(model, 0)
    assert not layer.requires_grad and model.lm_head.weight.requires_grad and not conv.requires_grad
    freezer(model, 2)
    assert not layer.requires_grad
    freezer(model, 3)
    assert layer.requires_grad and not conv.requires_grad  # the feature encoder stays frozen
    resumed = TransformerFreezer(model, num_updates=3)
    resumed(model, 5)  # a run resumed after the frozen phase starts unfrozen
    assert layer.requires_grad
    with pytest.raises(ValueError, match="num_updates"):
        TransformerFreezer(model, -1)


def test_early_stopping_patience_counts_only_after_the_frozen_phase():
    # the cpu benchmark's pretrained fine-tunes stopped at update 300 with their best at update 100, when only the
    # output layer had trained: evaluations of the frozen phase must not count towards the patience
    def args(**kwargs):
        return PretrainingArguments(output_dir="unused", eval_steps=100, metric_for_best_model="cer", **kwargs)

    def prepare(training_args, freeze, probe=False):
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**TEST_ENCODER, vocab_size=8))
        prepare_for_finetuning(
            model, probe=probe, freeze_feature_encoder=True, freeze_transformer_updates=freeze,
            training_args=training_args,
        )  # fmt: skip
        return training_args.early_stopping_min_steps

    assert prepare(args(early_stopping_patience=2), freeze=200) == 201  # update 200's model had 200 frozen updates
    assert prepare(args(early_stopping_patience=2, early_stopping_min_steps=300), freeze=125) == 300  # the later
    assert prepare(args(), freeze=125) == 0  # no early stopping: nothing to change
    assert prepare(args(early_stopping_patience=2), freeze=125, probe=True) == 0  # a probe has no frozen phase


def test_weighted_layer_sum():
    hidden = (torch.ones(1, 2, 3), 3 * torch.ones(1, 2, 3))
    torch.testing.assert_close(weighted_layer_sum(hidden, torch.zeros(2)), 2 * torch.ones(1, 2, 3))
    torch.testing.assert_close(weighted_layer_sum(hidden, torch.tensor([0.0, 1e4])), hidden[1])
    with pytest.raises(ValueError, match="2 hidden states but 3"):
        weighted_layer_sum(hidden, torch.zeros(3))


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _tone_loader(tokenizer, feature_extractor, task):
    rng = np.random.default_rng(1)
    items = [{"input_values": tone_speech(t, rng), "text": t, "label": i % 2} for i, t in enumerate(TEXTS)]
    audio = AudioCollator(feature_extractor)
    if task == "ctc":
        collate = DataCollatorCTC(audio, tokenizer)
        return torch.utils.data.DataLoader(
            [{k: v for k, v in i.items() if k != "label"} for i in items], 5, collate_fn=collate
        )
    collate = DataCollatorAudioClassification(audio, LabelMapper({"a": 0, "b": 1}, ["a", "b"]))
    return torch.utils.data.DataLoader(
        [{k: v for k, v in i.items() if k != "text"} for i in items], 5, collate_fn=collate
    )


@pytest.mark.parametrize("task", ["ctc", "audio-classification"])
def test_probe_trains_only_the_probe(tmp_path, tokenizer, feature_extractor, task):
    """Through the shared loop: encoder weights bit-identical after training, every probe parameter changed."""
    torch.manual_seed(0)
    head = (
        {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "probe_hidden_size": 16}
        if task == "ctc"
        else {"label2id": {"a": 0, "b": 1}, "id2label": {0: "a", 1: "b"}}
    )
    model = load_pretrained_for_task(None, task, probe=True, **head, **TEST_ENCODER)
    encoder_before = _state(model.base_model)
    trainable = trainable_parameter_names(model)
    assert trainable and all(not n.startswith(model.base_model_prefix + ".") for n in trainable)
    assert "layer_weights" in trainable
    probe_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = PretrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        learning_rate=1e-2,
        warmup_steps=0,
        save_steps=100,
        logging_steps=1,
        report_to="none",
        weight_decay=0.1,
    )
    train(
        model,
        _tone_loader(tokenizer, feature_extractor, task),
        args,
        accelerator=make_accelerator(args),
        sampling_rate=SR,
        step_callbacks=[keep_encoder_in_eval],
    )
    for name, value in _state(model.base_model).items():
        assert torch.equal(value, encoder_before[name]), name
    for name, param in model.named_parameters():
        if name in probe_before:
            assert not torch.equal(param.detach(), probe_before[name]), name


def test_ctc_probe_saves_with_remote_code(tmp_path):
    torch.manual_seed(0)
    model = CTCProbeForCTC.from_encoder(
        Wav2Vec2Model(Wav2Vec2Config(**TEST_ENCODER)), vocab_size=9, probe_hidden_size=8, probe_num_layers=1
    )
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCTC"] == "modeling_ctc_probe.CTCProbeForCTC"
    assert (tmp_path / "modeling_ctc_probe.py").is_file() and (tmp_path / "configuration_ctc_probe.py").is_file()
    x = torch.randn(2, SR // 2)
    mask = torch.ones_like(x, dtype=torch.long)
    mask[1, SR // 4 :] = 0
    loaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    assert trainable_parameter_names(loaded) == trainable_parameter_names(model)
    with torch.no_grad():
        expected = model.eval()(x, attention_mask=mask).logits
        torch.testing.assert_close(loaded(x, attention_mask=mask).logits, expected)
    # Padding never leaks into the valid frames (packed BiLSTM): the short clip alone gives the same logits.
    frames = int(model._get_feat_extract_output_lengths(SR // 4))
    with torch.no_grad():
        alone = model(x[1:, : SR // 4]).logits
    torch.testing.assert_close(alone[0], expected[1, :frames], atol=1e-4, rtol=1e-4)
    # Without hf_speech_cl: trust_remote_code runs the copied files.
    code = (
        "import sys, torch; from transformers import AutoModelForCTC;"
        f"m = AutoModelForCTC.from_pretrained({str(tmp_path)!r}, trust_remote_code=True);"
        "assert 'hf_speech_cl' not in sys.modules; print(type(m).__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "transformers_modules" in done.stdout
    with pytest.raises(ValueError, match="pad_token_id"):
        CTCProbeConfig(vocab_size=4, pad_token_id=7)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint resolution and bad inputs
# ----------------------------------------------------------------------------------------------------------------------


def _encoder_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k in sb and "masked_spec_embed" not in k)


def test_load_from_stock_wav2vec2_pretraining_checkpoint(tmp_path):
    pretrained = Wav2Vec2ForPreTraining(Wav2Vec2Config(**TEST_ENCODER))
    pretrained.save_pretrained(tmp_path)
    model = load_pretrained_for_task(str(tmp_path), "ctc", vocab_size=12, pad_token_id=0, mask_time_prob=0.05)
    assert isinstance(model, Wav2Vec2ForCTC) and model.config.vocab_size == 12
    assert model.config.mask_time_prob == 0.05
    assert _encoder_equal(model.wav2vec2, pretrained.wav2vec2)
    classifier = load_pretrained_for_task(
        str(tmp_path), "audio-classification", label2id={"x": 0, "y": 1}, id2label={0: "x", 1: "y"}
    )
    assert isinstance(classifier, Wav2Vec2ForSequenceClassification) and classifier.config.num_labels == 2
    assert _encoder_equal(classifier.wav2vec2, pretrained.wav2vec2)
    assert load_feature_extractor(str(tmp_path), SR).sampling_rate == SR  # none saved: a new one


def test_load_from_our_pretraining_checkpoints(tmp_path):
    from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig
    from hf_speech_cl.models.simclr_audio import SimCLRAudioConfig, SimCLRAudioForPreTraining

    simclr = SimCLRAudioForPreTraining(SimCLRAudioConfig(backbone_config=TEST_ENCODER, projection_dim=8))
    simclr.save_pretrained(tmp_path / "simclr")
    model = load_pretrained_for_task(str(tmp_path / "simclr"), "ctc", vocab_size=10, pad_token_id=0)
    assert isinstance(model, Wav2Vec2ForCTC) and _encoder_equal(model.wav2vec2, simclr.wav2vec2)

    hubert = HubertForPreTraining(HubertPretrainingConfig(**TEST_ENCODER, num_clusters=5, final_dim=8))
    hubert.save_pretrained(tmp_path / "hubert")
    model = load_pretrained_for_task(str(tmp_path / "hubert"), "ctc", vocab_size=10, pad_token_id=0)
    assert model.config.model_type == "hubert" and _encoder_equal(model.hubert, hubert.hubert)
    probe = load_pretrained_for_task(
        str(tmp_path / "hubert"), "ctc", probe=True, vocab_size=10, pad_token_id=0, probe_hidden_size=8
    )
    assert isinstance(probe, CTCProbeForCTC) and _encoder_equal(probe.encoder, hubert.hubert)
    assert encoder_min_input_samples(str(tmp_path / "simclr")) == encoder_min_input_samples(None) == 400


def test_no_pretraining_baseline():
    model = load_pretrained_for_task("none", "ctc", model_size="tiny", vocab_size=10, pad_token_id=0)
    assert isinstance(model, Wav2Vec2ForCTC) and model.config.hidden_size == encoder_preset("tiny")["hidden_size"]
    with pytest.raises(ValueError, match="Unknown --model_size"):
        load_pretrained_for_task(None, "ctc", model_size="huge", vocab_size=10)
    with pytest.raises(ValueError, match="task must be one of"):
        load_pretrained_for_task(None, "translation")


def test_without_a_model_size_the_compute_shaped_preset_of_the_machine_is_built(monkeypatch):
    """Issue 13: every recipe defaults to the `cpu` preset on a CPU machine and to `gpu` with CUDA, not to `tiny`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_model_size() == "cpu"
    model = load_pretrained_for_task("none", "ctc", vocab_size=10, pad_token_id=0)
    assert model.config.conv_dim == list(encoder_preset("cpu")["conv_dim"])
    assert model.config.num_hidden_layers == encoder_preset("cpu")["num_hidden_layers"] == 6
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert default_model_size() == "gpu"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch --cpu` sets
    assert default_model_size() == "cpu"


def test_bad_checkpoints(tmp_path):
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, vocab_size=10)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model, not a speech encoder"):
        load_pretrained_for_task(str(tmp_path / "bert"), "ctc", vocab_size=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        load_pretrained_for_task(str(tmp_path / "empty"), "ctc", vocab_size=10)

    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**TEST_ENCODER, vocab_size=12))
    ctc.save_pretrained(tmp_path / "ctc")
    with pytest.raises(ValueError, match="vocab_size=12, but the vocabulary has 20"):
        load_pretrained_for_task(str(tmp_path / "ctc"), "ctc", vocab_size=20)
    replaced = load_pretrained_for_task(str(tmp_path / "ctc"), "ctc", vocab_size=20, reinit_head=True)
    assert replaced.lm_head.out_features == 20 and _encoder_equal(replaced.wav2vec2, ctc.wav2vec2)

    labels = {"yes": 0, "no": 1}
    classifier = Wav2Vec2ForSequenceClassification(
        Wav2Vec2Config(**TEST_ENCODER, label2id=labels, id2label={0: "yes", 1: "no"})
    )
    classifier.save_pretrained(tmp_path / "ks")
    other = {"happy": 0, "sad": 1}
    with pytest.raises(ValueError, match=r"classifier for the labels \['no', 'yes'\].*\['happy', 'sad'\]"):
        load_pretrained_for_task(
            str(tmp_path / "ks"), "audio-classification", label2id=other, id2label={0: "happy", 1: "sad"}
        )
    fresh = load_pretrained_for_task(
        str(tmp_path / "ks"), "audio-classification", label2id=other, id2label={0: "happy", 1: "sad"}, reinit_head=True
    )
    assert fresh.config.label2id == other
    assert not torch.equal(fresh.classifier.weight, classifier.classifier.weight)
    # The same labels in another order: the checkpoint's ids (and head) are kept.
    kept = load_pretrained_for_task(
        str(tmp_path / "ks"), "audio-classification", label2id={"no": 0, "yes": 1}, id2label={0: "no", 1: "yes"}
    )
    assert kept.config.label2id == labels and torch.equal(kept.classifier.weight, classifier.classifier.weight)


# ----------------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------------


def test_label_mapping_and_checks():
    dataset = datasets.Dataset.from_dict(
        {"label": [0, 1, -1, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=["yes", "no"])})
    )
    assert label_names(dataset, "label") == ["yes", "no"]
    mapper = LabelMapper.for_column(dataset, "label", {"no": 0, "yes": 1})  # the checkpoint's order
    assert [mapper(v) for v in dataset["label"]] == [1, 0, -1, 0]
    assert check_labels(dataset["label"], mapper, split="test", strict=False) == {"-1": 1}
    with pytest.raises(ValueError, match=r"1 of 4 clips of split 'train'.*\['no', 'yes'\]"):
        check_labels(dataset["label"], mapper, split="train", strict=True)
    strings = LabelMapper({"happy": 0, "sad": 1})
    assert check_labels(["happy", "sad", "bored", "bored"], strings, split="validation", strict=False) == {"bored": 2}
    assert label_names(datasets.Dataset.from_dict({"label": ["sad", "happy", "sad"]}), "label") == ["happy", "sad"]


def test_classification_metrics_and_confusion_matrix(tmp_path):
    scores = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], num_labels=3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([0, 3], [0, 1], num_labels=3)
    matrix = save_confusion_matrix([0, 1, 2, 2], [0, 1, 1, 2], ["a", "b", "c"], tmp_path / "cm.png", title="t")
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "cm.json").read_text())["matrix"] == matrix.tolist()


def test_tiny_classifier_overfits_and_works_in_pipeline(tmp_path, feature_extractor):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    words = ["YES", "NO", "UP", "DOWN"]
    items = [{"input_values": tone_speech(w, rng, letter_s=0.04), "label": w} for w in words for _ in range(2)]
    mapper = LabelMapper({w: i for i, w in enumerate(words)})
    model = load_pretrained_for_task(
        None,
        "audio-classification",
        label2id=mapper.label2id,
        id2label=dict(enumerate(words)),
        **TEST_ENCODER,
        **NO_DROPOUT,
    )
    batch = DataCollatorAudioClassification(AudioCollator(feature_extractor), mapper)(items)
    assert batch["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    evaluator = ClassificationEvaluator([dict(batch)], SingleProcess(), model.config.id2label)
    for update in range(150):
        model.train()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if update % 10 == 9 and evaluator(model)["eval_accuracy"] == 1.0:
            break
    metrics = evaluator(model)
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_macro_f1"] == 1.0
    matrix = evaluator.save_confusion_matrix(tmp_path / "cm.png")
    assert (matrix == 2 * np.eye(4)).all() and (tmp_path / "cm.png").is_file()

    model.save_pretrained(tmp_path / "out")
    feature_extractor.save_pretrained(tmp_path / "out")
    wav = tmp_path / "down.wav"
    soundfile.write(wav, tone_speech("DOWN", np.random.default_rng(5), letter_s=0.04), SR)
    classifier = pipeline("audio-classification", model=str(tmp_path / "out"))
    assert classifier(str(wav))[0]["label"] == "DOWN"


def test_min_input_samples_of_a_hubert_config(tmp_path):
    HubertConfig(**TEST_ENCODER).save_pretrained(tmp_path)
    # Receptive field of kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2): 400 samples; then a hop per frame.
    hop = int(np.prod(TEST_ENCODER["conv_stride"]))
    assert encoder_min_input_samples(str(tmp_path), num_frames=10) == 400 + 9 * hop


def test_dropout_arguments_pass_only_the_flags_set_and_reject_non_probabilities():
    from hf_speech_cl.finetuning import DropoutArguments

    assert DropoutArguments().config_overrides() == {}  # unset: the checkpoint's values stay
    assert DropoutArguments(hidden_dropout=0.0, final_dropout=0.2).config_overrides() == {
        "hidden_dropout": 0.0,
        "final_dropout": 0.2,
    }
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="--attention_dropout must be a probability"):
            DropoutArguments(attention_dropout=bad)
