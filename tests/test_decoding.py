"""Lexicon-constrained CTC beam search with a word bigram LM (hf_speech_cl.finetuning.decoding, recipes/decode_asr.py)."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest
import torch

from hf_speech_cl.data.synthetic import TINY_PARAMS
from hf_speech_cl.finetuning.decoding import (
    CTCBeamSearchDecoder,
    LMDecodingArguments,
    WordBigramLM,
    lexicon_words,
    tune_lm_decoding,
)
from hf_speech_cl.finetuning.vocab import ctc_tokenizer_for

TRAIN = ["THE CAT SAT", "THE DOG RAN", "A CAT RAN", "THE CAT RAN"]


@pytest.fixture(scope="module")
def tokenizer():
    return ctc_tokenizer_for(None, TRAIN)


def spell(tokenizer, text):
    """Log-probabilities whose best path spells `text` (each character followed by a blank frame)."""
    ids = []
    for ch in text.replace(" ", "|"):
        ids += [tokenizer.convert_tokens_to_ids(ch), tokenizer.pad_token_id]
    logits = torch.full((len(ids), len(tokenizer)), -10.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    return torch.log_softmax(logits, -1)


def test_bigram_lm_sums_to_one_and_prefers_seen_bigrams():
    words = sorted({w for t in TRAIN for w in t.split()} | {"DOT", "TAN"})
    lm = WordBigramLM(TRAIN, words)
    for history in ("<s>", "THE", "CAT", "DOT", "NEVER-SEEN"):
        total = sum(lm.prob(w, history) for w in [*words, "</s>"])
        assert total == pytest.approx(1.0, abs=1e-9), history
    assert lm.prob("CAT", "THE") > lm.prob("RAN", "THE") > lm.prob("DOT", "THE") > 0
    # an unseen history backs off to the unigram level; a seen one gives an unseen word D * N1+(v .) / c(v) of it
    assert lm.prob("DOT", "NEVER-SEEN") == pytest.approx(lm.unigram_prob("DOT"))
    assert lm.prob("DOT", "<s>") == pytest.approx(0.75 * 2 / 4 * lm.unigram_prob("DOT"))  # <s> THE x3, <s> A x1
    assert lm.log_prob("CAT", "THE") == pytest.approx(math.log(lm.prob("CAT", "THE")))
    # on its own training text the bigram beats the uniform distribution over the vocabulary
    assert lm.perplexity(TRAIN) < len(words) + 1
    # a word outside the vocabulary breaks the sentence: no (A, B) bigram from "A X B"
    broken = WordBigramLM(["A X B"], ["A", "B"])
    assert broken.prob("B", "A") == pytest.approx(broken.unigram_prob("B"))
    assert broken.prob("A", "<s>") > broken.unigram_prob("A")
    with pytest.raises(ValueError, match="discount"):
        WordBigramLM(TRAIN, words, discount=1.0)


def test_lexicon_words_adds_the_word_list_and_drops_unspellable_words(tokenizer, tmp_path):
    word_list = tmp_path / "words"
    word_list.write_text("tan\nzebra\ncat's\nDOT\n")  # Z, B and ' are not in the training characters
    words = lexicon_words(TRAIN, tokenizer, word_list)
    assert words == sorted({"THE", "CAT", "SAT", "DOG", "RAN", "A", "TAN", "DOT"})
    assert lexicon_words(TRAIN, tokenizer, tmp_path / "missing") == sorted({w for t in TRAIN for w in t.split()})


def test_beam_search_outputs_only_lexicon_words_and_the_lm_picks_between_them(tokenizer):
    words = lexicon_words(TRAIN, tokenizer, None)
    # the acoustics spell "THE CAN SAT": CAN is not a word of the lexicon; CAT and RAN are one letter away
    emissions = [spell(tokenizer, "THE CAN SAT"), spell(tokenizer, "THE DOG SAT"), torch.zeros(0, len(tokenizer))]
    lexicon_only = CTCBeamSearchDecoder(tokenizer, words)(emissions)
    assert lexicon_only[1:] == ["THE DOG SAT", ""]
    assert lexicon_only[0] in ("THE CAT SAT", "THE RAN SAT")
    with_lm = CTCBeamSearchDecoder(tokenizer, words, WordBigramLM(TRAIN, words), lm_weight=1.0)(emissions)
    assert with_lm[0] == "THE CAT SAT"  # "THE CAT" is a training bigram, "THE RAN" is not
    with pytest.raises(ValueError, match="log-probabilities"):
        CTCBeamSearchDecoder(tokenizer, words)([torch.zeros(3, 2)])


def test_tuning_returns_the_grid_point_with_the_lowest_wer(tokenizer):
    words = lexicon_words(TRAIN, tokenizer, None)
    emissions = [spell(tokenizer, "THE DOG SAT"), spell(tokenizer, "A CAT RAN")]
    result = tune_lm_decoding(
        emissions, ["THE DOG SAT", "A CAT RAN"], tokenizer, words, WordBigramLM(TRAIN, words), (30.0, 0.0), (0.0,)
    )
    assert [g["lm_weight"] for g in result.grid] == [30.0, 0.0]
    # an LM weighted 30x overrules clear acoustics (THE DOG SAT -> THE CAT SAT); the grid keeps weight 0
    assert result.grid[0]["wer"] > 0 and result.lm_weight == 0.0 and result.wer == 0.0
    assert LMDecodingArguments(lm_weights="1, 2", word_scores="-1").grid() == ([1.0, 2.0], [-1.0])
    with pytest.raises(ValueError, match="lm_weights"):
        LMDecodingArguments(lm_weights="a").grid()


def test_lm_decoding_in_finetune_asr_and_decode_asr_agree(tmp_path, tiny_librispeech):
    """recipes/finetune_asr.py --lm_decoding and recipes/decode_asr.py on its model: decode_asr's greedy scores are
    the fine-tuning run's test scores (same utterances, same model) and both give the same beam-search scores."""
    from test_finetune_recipes import common, load_recipe

    out = tmp_path / "asr"
    kwargs = json.dumps(TINY_PARAMS["synthetic-librispeech"])
    grid = ["--lm_weights", "0.5", "--word_scores", "0,1", "--beam_size", "8"]
    argv = common(out, 2, "--dataset_kwargs", kwargs, "--train_minutes", "1", "--lm_decoding", "true", *grid)
    summary = load_recipe("finetune_asr").main(argv)
    assert {"test_lm_wer", "test_lm_cer", "validation_lm_wer"} <= set(summary)
    assert "| lm_wer |" in (out / "README.md").read_text()
    decode = load_recipe("decode_asr")
    argv = ["--model_name_or_path", str(out), "--dataset_kwargs", kwargs, "--train_minutes", "1"]
    result = decode.main([*argv, "--max_eval_samples", "4", "--output_file", str(tmp_path / "r.json"), *grid])
    assert result["test_greedy_cer"] == pytest.approx(summary["test_cer"])
    assert result["test_greedy_wer"] == pytest.approx(summary["test_wer"])
    assert result["test_lm_wer"] == pytest.approx(summary["test_lm_wer"])
    assert result["test_num_utterances"] == 4 and len(result["grid"]) == 2 and result["lexicon_size"] > 1000
    assert json.loads((tmp_path / "r.json").read_text())["test_lm_cer"] == result["test_lm_cer"]
    # a checkpoint folder (model only) takes the vocabulary and feature extractor of its run folder
    argv = ["--model_name_or_path", str(out / "checkpoint-2"), "--dataset_kwargs", kwargs, "--train_minutes", "1"]
    from_checkpoint = decode.main([*argv, "--max_eval_samples", "4", "--test_split", "none", *grid])
    assert from_checkpoint["validation_greedy_cer"] == pytest.approx(result["validation_greedy_cer"])
    assert "test_lm_wer" not in from_checkpoint


def test_decode_asr_help_documents_every_flag(capsys):
    from test_finetune_recipes import load_recipe

    from hf_speech_cl.data import DataArguments

    recipe = load_recipe("decode_asr")
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = capsys.readouterr().out
    for dataclass_type in (recipe.DecodeArguments, LMDecodingArguments, DataArguments):
        for f in fields(dataclass_type):
            assert f"--{f.name}" in text and f.metadata.get("help"), f.name
