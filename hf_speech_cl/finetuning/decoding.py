"""Lexicon-constrained CTC beam search with a word language model: what turns character CTC output into words.

Greedy CTC decoding spells: at a character error rate of 25–30 % most words carry at least one wrong letter, so WER
stays near 75 % even when the letters are mostly right. The wav2vec 2.0 paper reports every result both without a
language model and with a lexicon-constrained beam search over a word n-gram LM (Baevski et al. 2020, §4.4 and
Table 1/2: the wav2letter++ decoder with a 4-gram KenLM, `fairseq/examples/speech_recognition/w2l_decoder.py`
`W2lKenLMDecoder`, beam 50–1500, LM weight and word insertion score tuned on the dev set). This module is that
decoder with the parts that run offline:

- the beam search is `torchaudio.models.decoder.ctc_decoder` (the flashlight-text `LexiconDecoder`, the C++
  successor of wav2letter++'s; needs the `flashlight-text` wheel);
- the lexicon (`lexicon_words`) is every word the decoder may output: the training transcripts' words plus a word
  list (Debian `wamerican`'s `/usr/share/dict/words`, ~100 k English words, by default), each spelled with the CTC
  tokenizer's characters; the beam search can only output words of the lexicon;
- the language model (`WordBigramLM`) is an interpolated Kneser–Ney word bigram (Kneser & Ney 1995; Chen & Goodman
  1998, §3, "interpolated Kneser-Ney", one discount D=0.75) estimated on the training transcripts, whose unigram
  level is interpolated with a uniform distribution over the lexicon so every lexicon word has a probability. KenLM's
  `lmplz` (what fairseq uses) is not on PyPI or in Debian, and the flashlight-text wheel has no KenLM; a bigram of a
  few thousand sentences is small enough for Python (`torchaudio`'s `CTCDecoderLM` interface);
- `tune_lm_decoding` picks the LM weight and word score on the validation split (as the paper does on its dev
  set) and `CTCBeamSearchDecoder` decodes the test split with them.

Scores are natural logarithms: `lm_weight` multiplies the LM's log-probability, `word_score` is added per word
(`score = acoustic log-prob + lm_weight * log P_LM + word_score * num_words`, flashlight `LexiconDecoder`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2CTCTokenizer

from .vocab import PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER, normalize_transcript

__all__ = [
    "DEFAULT_WORD_LIST",
    "CTCBeamSearchDecoder",
    "LMDecodingArguments",
    "LMDecodingResult",
    "WordBigramLM",
    "collect_log_probs",
    "lexicon_words",
    "lm_decode_splits",
    "tune_lm_decoding",
]

logger = logging.getLogger(__name__)

#: Debian `wamerican`'s word list (installed by `scripts/setup.sh`); used when it exists.
DEFAULT_WORD_LIST = "/usr/share/dict/words"
#: The validation grid of `tune_lm_decoding` (LM weight x word score). Measured on the supervised topline (cpu
#: encoder, all 2 h of labels, validation CER 28%; benchmarks/results/asr_topline.json): WER 0.64 with the lexicon
#: alone (weight 0), 0.50 at weight 0.25, 0.42 at 0.75-1.0, rising again above; word scores above 0 trade WER for CER.
DEFAULT_LM_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_WORD_SCORES = (0.0, 1.0, 2.0)
SENTENCE_START = "<s>"
SENTENCE_END = "</s>"


def _require_decoder():
    try:
        from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState, ctc_decoder
    except (ImportError, RuntimeError) as err:  # torchaudio's lazy import raises RuntimeError without it
        raise ImportError(
            "Lexicon beam-search decoding needs the `flashlight-text` package (pip install flashlight-text); "
            f"torchaudio said: {err}"
        ) from err
    return CTCDecoderLM, CTCDecoderLMState, ctc_decoder


def lexicon_words(
    transcripts: Iterable[str],
    tokenizer: Wav2Vec2CTCTokenizer,
    word_list: str | os.PathLike | None = DEFAULT_WORD_LIST,
) -> list[str]:
    """The words the beam search may output: those of `transcripts` and of `word_list`, spelled with the tokenizer.

    Args:
        transcripts: normalised training transcripts (`normalize_transcript`).
        tokenizer: the CTC tokenizer; a word with a character outside its vocabulary is left out.
        word_list: a file of one word per line (normalised like the transcripts), or None / a missing file for the
            transcripts' words alone (a missing file is logged).

    Returns:
        Sorted unique words (never empty if `transcripts` has a spellable word).

    Raises:
        ValueError: if no word is left.
    """
    characters = set(tokenizer.get_vocab()) - {PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER}
    words = {w for t in transcripts for w in t.split()}
    if word_list is not None:
        if Path(word_list).is_file():
            with open(word_list, encoding="utf-8", errors="ignore") as f:
                words.update(w for line in f for w in normalize_transcript(line).split())
        else:
            logger.warning("word list %s not found: the lexicon is the training transcripts' words only", word_list)
    spellable = sorted(w for w in words if set(w) <= characters)
    if not spellable:
        raise ValueError("No word of the transcripts or the word list can be spelled with the CTC vocabulary")
    return spellable


def _bigrams(sentence: str, known: set[str]) -> list[tuple[str, str]]:
    """The (history, word) pairs of `<s> sentence </s>` whose two words are `known` (or `<s>`/`</s>`)."""
    words = [SENTENCE_START, *sentence.split(), SENTENCE_END]
    ok = [i == 0 or i == len(words) - 1 or w in known for i, w in enumerate(words)]
    return [(words[i], words[i + 1]) for i in range(len(words) - 1) if ok[i] and ok[i + 1]]


class WordBigramLM:
    """Interpolated Kneser–Ney word bigram over a closed vocabulary (Chen & Goodman 1998, §3), natural-log scores.

    `P(w | v) = max(c(v w) - D, 0) / c(v) + D * N1+(v •) / c(v) * P_uni(w)` for a seen history v, `P_uni(w)`
    otherwise; `P_uni(w) = max(N1+(• w) - D, 0) / N1+(• •) + D * |{w: N1+(• w) > 0}| / N1+(• •) / |V|`: continuation
    counts interpolated with the uniform distribution over `vocabulary` + `</s>`, so both levels sum to 1 over it.
    Sentences are padded with `<s>` and `</s>`; a word outside `vocabulary` breaks the sentence there (no bigram
    spans it), as an `<unk>` with no probability of its own would.

    Args:
        sentences: training text, one normalised sentence per item (words separated by spaces).
        vocabulary: the words that can be scored (the lexicon).
        discount: D, in (0, 1).

    Raises:
        ValueError: on an empty vocabulary or a discount outside (0, 1).
    """

    def __init__(self, sentences: Iterable[str], vocabulary: Sequence[str], discount: float = 0.75):
        if not vocabulary:
            raise ValueError("WordBigramLM needs a non-empty vocabulary")
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.discount = discount
        self.vocabulary = list(vocabulary)
        known = set(self.vocabulary)
        bigrams: Counter[tuple[str, str]] = Counter()
        for sentence in sentences:
            bigrams.update(_bigrams(sentence, known))
        self._bigram = dict(bigrams)
        self._history_count: Counter[str] = Counter()
        self._history_types: Counter[str] = Counter()
        continuation: Counter[str] = Counter()
        for (v, w), c in bigrams.items():
            self._history_count[v] += c
            self._history_types[v] += 1
            continuation[w] += 1
        self._continuation = dict(continuation)
        self._bigram_types = max(len(bigrams), 1)
        self._uniform = 1.0 / (len(known) + 1)  # + </s>
        self._uniform_mass = discount * len(continuation) / self._bigram_types if bigrams else 1.0
        self._cache: dict[tuple[str, str], float] = {}

    def unigram_prob(self, word: str) -> float:
        seen = max(self._continuation.get(word, 0) - self.discount, 0.0) / self._bigram_types
        return seen + self._uniform_mass * self._uniform

    def prob(self, word: str, history: str) -> float:
        """P(word | history); `history` is the previous word or `<s>`, `word` a vocabulary word or `</s>`."""
        count = self._history_count.get(history, 0)
        if not count:
            return self.unigram_prob(word)
        seen = max(self._bigram.get((history, word), 0) - self.discount, 0.0) / count
        backoff = self.discount * self._history_types[history] / count
        return seen + backoff * self.unigram_prob(word)

    def log_prob(self, word: str, history: str) -> float:
        key = (history, word)
        if key not in self._cache:
            self._cache[key] = math.log(self.prob(word, history))
        return self._cache[key]

    def perplexity(self, sentences: Iterable[str]) -> float:
        """Per-word perplexity (`</s>` counted) of `sentences`; out-of-vocabulary words are skipped."""
        known = set(self.vocabulary)
        total, count = 0.0, 0
        for sentence in sentences:
            for v, w in _bigrams(sentence, known):
                total += self.log_prob(w, v)
                count += 1
        return math.exp(-total / max(count, 1))


def _decoder_lm(lm: WordBigramLM | None, words: Sequence[str]):
    """`lm` behind torchaudio's `CTCDecoderLM` interface, words indexed as in `words` (the decoder's word dict)."""
    CTCDecoderLM, CTCDecoderLMState, _ = _require_decoder()

    class _BigramDecoderLM(CTCDecoderLM):
        # One state per history word (children of one root): hypotheses ending in the same word share a state,
        # which is what a bigram allows the decoder to merge.
        def __init__(self):
            CTCDecoderLM.__init__(self)
            self.root = CTCDecoderLMState()
            self.history = {self.root: SENTENCE_START}

        def start(self, start_with_nothing: bool):
            return self.root

        def _next(self, state, index: int, word: str):
            child = self.root.child(index)
            self.history.setdefault(child, word)
            return child, lm.log_prob(word, self.history[state])

        def score(self, state, usr_token_idx: int):
            if usr_token_idx < 0 or usr_token_idx >= len(words):  # <unk>: an unseen history for the next word
                child = self.root.child(len(words))
                self.history.setdefault(child, UNK_TOKEN)
                return child, -math.inf
            return self._next(state, usr_token_idx, words[usr_token_idx])

        def finish(self, state):
            return state, lm.log_prob(SENTENCE_END, self.history[state])

    return _BigramDecoderLM() if lm is not None else None


class CTCBeamSearchDecoder:
    """Lexicon-constrained CTC beam search (`torchaudio.models.decoder.ctc_decoder`) with an optional word LM.

    Args:
        tokenizer: the model's CTC tokenizer: its tokens are the decoder's, `<pad>` the blank, `|` the word boundary.
        words: the lexicon (`lexicon_words`); the output has only these words.
        lm: the word LM (`WordBigramLM` over `words`), or None for the lexicon alone (a zero LM).
        lm_weight: weight of the LM log-probability (the paper tunes it on dev; fairseq's default 2 is for log10
            KenLM scores).
        word_score: score added per output word (insertion bonus; negative values favour fewer, longer words).
        beam_size: hypotheses kept per frame (wav2vec 2.0 §4.4: 500 for the 4-gram; 50 is torchaudio's default).
        beam_threshold: hypotheses further than this below the best are pruned.

    Calling it with `log_probs` (a list of (T_i, V) float tensors: log-softmax CTC outputs, valid frames only)
    returns the transcriptions (str, words separated by single spaces).
    """

    def __init__(
        self,
        tokenizer: Wav2Vec2CTCTokenizer,
        words: Sequence[str],
        lm: WordBigramLM | None = None,
        lm_weight: float = 1.0,
        word_score: float = 0.0,
        beam_size: int = 50,
        beam_threshold: float = 25.0,
    ):
        _, _, ctc_decoder = _require_decoder()
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        if PAD_TOKEN not in tokens or WORD_DELIMITER not in tokens:
            raise ValueError(f"The tokenizer needs {PAD_TOKEN} (blank) and {WORD_DELIMITER} (word boundary) tokens")
        self.words = list(words)
        self.lm = lm
        self.tokens = tokens
        with tempfile.TemporaryDirectory() as tmp:
            lexicon = Path(tmp) / "lexicon.txt"
            lexicon.write_text("".join(f"{w} {' '.join(w)} {WORD_DELIMITER}\n" for w in self.words), encoding="utf-8")
            word_dict = Path(tmp) / "words.txt"
            word_dict.write_text("".join(f"{w}\n" for w in [*self.words, UNK_TOKEN]), encoding="utf-8")
            self._lm = _decoder_lm(lm, self.words)
            self._decoder = ctc_decoder(
                lexicon=str(lexicon),
                tokens=tokens,
                lm=self._lm,
                lm_dict=str(word_dict),
                beam_size=beam_size,
                beam_threshold=beam_threshold,
                lm_weight=lm_weight if lm is not None else 0.0,
                word_score=word_score,
                blank_token=PAD_TOKEN,
                sil_token=WORD_DELIMITER,
                unk_word=UNK_TOKEN,
            )

    def __call__(self, log_probs: Sequence[torch.Tensor]) -> list[str]:
        texts = []
        for emission in log_probs:
            if emission.ndim != 2 or emission.shape[-1] != len(self.tokens):
                raise ValueError(f"Expected (T, {len(self.tokens)}) log-probabilities, got {tuple(emission.shape)}")
            emission = emission.detach().to("cpu", torch.float32).contiguous()[None]
            if emission.shape[1] == 0:
                texts.append("")
                continue
            hypotheses = self._decoder(emission)[0]
            texts.append(" ".join(hypotheses[0].words) if hypotheses else "")
        return texts


@dataclass
class LMDecodingResult:
    """What `tune_lm_decoding` found: the chosen weights, and the validation WER/CER of every setting tried."""

    lm_weight: float
    word_score: float
    wer: float
    cer: float
    grid: list[dict[str, float]]


def tune_lm_decoding(
    log_probs: Sequence[torch.Tensor],
    references: Sequence[str],
    tokenizer: Wav2Vec2CTCTokenizer,
    words: Sequence[str],
    lm: WordBigramLM | None,
    lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS,
    word_scores: Sequence[float] = DEFAULT_WORD_SCORES,
    beam_size: int = 50,
) -> LMDecodingResult:
    """Grid-search the LM weight and word score on held-out utterances, lowest WER first (then CER).

    Args:
        log_probs: per utterance (T_i, V) log-softmax CTC outputs of the validation split.
        references: their normalised transcripts.
        tokenizer, words, lm, beam_size: as `CTCBeamSearchDecoder` (`lm_weights` is ignored when `lm` is None).

    Raises:
        ValueError: if the lists differ in length or are empty.
    """
    from .ctc import asr_metrics

    if len(log_probs) != len(references) or not references:
        raise ValueError(f"Need as many references as utterances (got {len(references)} and {len(log_probs)})")
    grid = []
    for weight in lm_weights if lm is not None else (0.0,):
        for score in word_scores:
            decoder = CTCBeamSearchDecoder(
                tokenizer, words, lm, lm_weight=weight, word_score=score, beam_size=beam_size
            )
            metrics = asr_metrics(decoder(log_probs), references)
            grid.append({"lm_weight": weight, "word_score": score, "wer": metrics["wer"], "cer": metrics["cer"]})
            logger.info(
                "LM decoding on validation: lm_weight %.2f word_score %.2f -> WER %.4f CER %.4f",
                weight,
                score,
                metrics["wer"],
                metrics["cer"],
            )
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    return LMDecodingResult(best["lm_weight"], best["word_score"], best["wer"], best["cer"], grid)


def collect_log_probs(model: torch.nn.Module, batches: Iterable[dict]) -> tuple[list[torch.Tensor], list[str]]:
    """Run a CTC model over `DataCollatorCTC(return_text=True)` batches (CPU tensors, moved to the model's device);
    per utterance (T_i, V) log-probs on CPU (valid frames only) and the reference texts."""
    from .ctc import ctc_output_lengths

    was_training = model.training
    model.eval()
    log_probs, references = [], []
    with torch.no_grad():
        for batch in batches:
            if batch is None:
                continue
            texts = batch.pop("text")
            batch.pop("labels", None)
            device = next(model.parameters()).device
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits = model(**batch).logits
            lengths = ctc_output_lengths(model, batch.get("attention_mask"), logits)
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            log_probs.extend(lp[i, : int(n)] for i, n in enumerate(lengths.tolist()))
            references.extend(texts)
    model.train(was_training)
    return log_probs, references


@dataclass
class LMDecodingArguments:
    """Flags of the lexicon + word-LM beam search (`recipes/finetune_asr.py --lm_decoding`, `recipes/decode_asr.py`)."""

    lexicon_word_list: str = field(
        default=DEFAULT_WORD_LIST,
        metadata={
            "help": "File of extra words the beam search may output besides the training transcripts' (one per line); "
            f"`none` for the transcripts' words alone. Default: {DEFAULT_WORD_LIST} (Debian wamerican, ~100 k words)."
        },
    )
    lm_weights: str = field(
        default=",".join(str(w) for w in DEFAULT_LM_WEIGHTS),
        metadata={"help": "Comma-separated LM weights tried on the validation split (natural-log LM scores)."},
    )
    word_scores: str = field(
        default=",".join(str(w) for w in DEFAULT_WORD_SCORES),
        metadata={"help": "Comma-separated word insertion scores tried on the validation split."},
    )
    beam_size: int = field(default=50, metadata={"help": "Beam size of the CTC beam search. Default: 50."})
    no_lm: bool = field(
        default=False,
        metadata={"help": "Constrain the beam search to the lexicon but use no word LM (a zero LM). Default: off."},
    )

    def grid(self) -> tuple[list[float], list[float]]:
        """The parsed `lm_weights` and `word_scores`.

        Raises:
            ValueError: on an empty or non-numeric list.
        """

        def parse(text: str, name: str) -> list[float]:
            try:
                values = [float(v) for v in text.split(",") if v.strip()]
            except ValueError as err:
                raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from err
            if not values:
                raise ValueError(f"--{name} is empty")
            return values

        return parse(self.lm_weights, "lm_weights"), parse(self.word_scores, "word_scores")


def lm_decode_splits(
    model: torch.nn.Module,
    tokenizer: Wav2Vec2CTCTokenizer,
    train_transcripts: Sequence[str],
    validation_batches: Iterable[dict],
    test_batches: Iterable[dict] | None,
    args: LMDecodingArguments,
) -> dict[str, Any]:
    """Tune the beam search on validation, decode test with the best setting; greedy scores of the same utterances
    beside it.

    Args:
        model: the fine-tuned CTC model (`AutoModelForCTC`), on any device (the batches are moved to it).
        tokenizer: its CTC tokenizer.
        train_transcripts: normalised training transcripts: the LM's text and part of the lexicon.
        validation_batches, test_batches: `DataCollatorCTC(return_text=True)` batches (one process, not sharded).
        args: the decoding flags.

    Returns:
        `{"validation_greedy_wer", "validation_greedy_cer", "validation_lm_wer", "validation_lm_cer", "test_…"
        (the same four), "lm_weight", "word_score", "lexicon_size", "lm_validation_perplexity", "grid"}`.
    """
    from .ctc import asr_metrics, greedy_ctc_decode

    words = lexicon_words(
        train_transcripts, tokenizer, None if args.lexicon_word_list.lower() == "none" else args.lexicon_word_list
    )
    lm = None if args.no_lm else WordBigramLM(train_transcripts, words)
    lm_weights, word_scores = args.grid()
    out: dict[str, Any] = {
        "lexicon_size": len(words),
        "beam_size": args.beam_size,
        "language_model": "none" if lm is None else "interpolated Kneser-Ney word bigram of the training transcripts",
    }
    splits = {"validation": validation_batches, "test": test_batches}
    decoded: dict[str, tuple[list[torch.Tensor], list[str]]] = {}
    for name, batches in splits.items():
        if batches is None:
            continue
        log_probs, references = collect_log_probs(model, batches)
        decoded[name] = (log_probs, references)
        # the evaluators' best-path decoding, one utterance at a time (each holds its valid frames only)
        greedy = [greedy_ctc_decode(lp[None], torch.tensor([len(lp)]), tokenizer)[0][0] for lp in log_probs]
        scores = asr_metrics(greedy, references)
        out[f"{name}_greedy_wer"], out[f"{name}_greedy_cer"] = scores["wer"], scores["cer"]
        out[f"{name}_num_utterances"] = len(references)
    if lm is not None:
        out["lm_validation_perplexity"] = lm.perplexity(decoded["validation"][1])
    best = tune_lm_decoding(*decoded["validation"], tokenizer, words, lm, lm_weights, word_scores, args.beam_size)
    out.update(lm_weight=best.lm_weight, word_score=best.word_score, grid=best.grid)
    out["validation_lm_wer"], out["validation_lm_cer"] = best.wer, best.cer
    if "test" in decoded:
        decoder = CTCBeamSearchDecoder(tokenizer, words, lm, best.lm_weight, best.word_score, args.beam_size)
        scores = asr_metrics(decoder(decoded["test"][0]), decoded["test"][1])
        out["test_lm_wer"], out["test_lm_cer"] = scores["wer"], scores["cer"]
    return out
