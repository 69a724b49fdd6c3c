"""Character vocabularies for CTC fine-tuning, built from the training transcripts.

The layout is that of wav2vec 2.0's letter targets (Baevski et al. 2020 §4.3, fairseq `ltr` labels; the
`Wav2Vec2CTCTokenizer` of transformers): one token per character, `|` between words, a blank for CTC.

- `<pad>` (id 0) is the CTC blank: `Wav2Vec2ForCTC` uses `config.pad_token_id` as the blank and
  `Wav2Vec2CTCTokenizer.decode` drops it after merging repeated tokens (greedy CTC decoding).
- `<unk>` (id 1) stands for characters seen in evaluation transcripts but not in training (counted, see
  `VocabularyCoverage`).
- `|` (id 2) is the word delimiter: spaces in the text become `|` and decode back to spaces.
- Then every other character of the normalised training transcripts (letters, the apostrophe, digits if any), sorted.

Normalisation (`normalize_transcript`) upper-cases the text (LibriSpeech's convention), deletes punctuation matched
by `DEFAULT_CHARS_TO_REMOVE` (the `chars_to_ignore` list of transformers' `run_speech_recognition_ctc.py` example),
deletes a literal `|` (reserved as the delimiter) and collapses whitespace.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer

__all__ = [
    "DEFAULT_CHARS_TO_REMOVE",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "WORD_DELIMITER",
    "VocabularyCoverage",
    "build_character_vocab",
    "ctc_tokenizer_for",
    "load_ctc_tokenizer",
    "make_ctc_tokenizer",
    "normalize_transcript",
    "report_vocabulary_coverage",
    "vocabulary_coverage",
]

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_DELIMITER = "|"
#: Punctuation deleted before building the vocabulary (transformers' `run_speech_recognition_ctc.py`
#: `chars_to_ignore` list: , ? . ! - ; : " “ % ‘ ” �). The apostrophe is kept: it is part of English words (DON'T).
DEFAULT_CHARS_TO_REMOVE = r"[,?.!\-;:\"“%‘”�]"
_SPECIAL = (PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER)


def normalize_transcript(text: str, chars_to_remove: str | None = DEFAULT_CHARS_TO_REMOVE, upper: bool = True) -> str:
    """The form of a transcript that is tokenised and scored.

    Args:
        text: raw transcript.
        chars_to_remove: a regular expression whose matches are deleted (None keeps everything).
        upper: upper-case the text (LibriSpeech transcripts are upper case).

    Returns:
        The text with `chars_to_remove` and `|` deleted, whitespace runs collapsed to one space, stripped.
    """
    if chars_to_remove:
        text = re.sub(chars_to_remove, "", text)
    text = text.replace(WORD_DELIMITER, " ")
    if upper:
        text = text.upper()
    return " ".join(text.split())


def build_character_vocab(transcripts: Iterable[str], min_count: int = 1) -> dict[str, int]:
    """A character → id mapping: `<pad>`=0 (CTC blank), `<unk>`=1, `|`=2, then the characters of `transcripts`.

    Args:
        transcripts: normalised transcripts (see `normalize_transcript`); spaces separate words.
        min_count: characters seen fewer times are left out (they become `<unk>`); 1 keeps every character.

    Returns:
        The vocabulary, characters sorted by code point after the three special tokens.

    Raises:
        ValueError: if `min_count < 1`, or no character at all is left (empty transcripts).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    num_transcripts = 0
    for text in transcripts:
        counts.update(text.replace(" ", ""))
        num_transcripts += 1
    chars = sorted(char for char, count in counts.items() if count >= min_count and char not in _SPECIAL)
    if not chars:
        raise ValueError(
            f"No character occurs at least min_count={min_count} times in the {num_transcripts} training transcripts; "
            "check --text_column and that the split holds transcripts."
        )
    dropped = sorted(char for char, count in counts.items() if count < min_count)
    if dropped:
        logger.warning("Characters seen fewer than %d times become %s: %s", min_count, UNK_TOKEN, dropped)
    return {token: index for index, token in enumerate((*_SPECIAL, *chars))}


def make_ctc_tokenizer(vocab: dict[str, int], directory: str | os.PathLike) -> Wav2Vec2CTCTokenizer:
    """Write `vocab` to `directory/vocab.json` and return the `Wav2Vec2CTCTokenizer` that reads it.

    The tokenizer has no BOS/EOS tokens (they would enlarge the output layer with classes CTC never emits), upper
    case is kept as is (`do_lower_case=False`), `|` is the word delimiter and `<pad>` the blank.

    Raises:
        ValueError: if a special token is missing from `vocab` or the ids are not 0..len-1.
    """
    missing = [token for token in _SPECIAL if token not in vocab]
    if missing:
        raise ValueError(f"The vocabulary lacks the special tokens {missing}; it has {sorted(vocab)[:10]}...")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"Vocabulary ids must be 0..{len(vocab) - 1} without gaps, got {sorted(vocab.values())}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.json"
    path.write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    return Wav2Vec2CTCTokenizer(
        str(path),
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        word_delimiter_token=WORD_DELIMITER,
        bos_token=None,
        eos_token=None,
        do_lower_case=False,
    )


def load_ctc_tokenizer(path: str | os.PathLike) -> Wav2Vec2CTCTokenizer | None:
    """The CTC tokenizer saved with checkpoint `path` (a folder with `vocab.json`, or a Hub id that has one), or
    None when there is none (a pretrained encoder without an ASR head)."""
    if Path(path).is_dir():
        return Wav2Vec2CTCTokenizer.from_pretrained(str(path)) if (Path(path) / "vocab.json").is_file() else None
    try:
        return Wav2Vec2CTCTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):  # no vocab.json in the repository (or the Hub is unreachable)
        return None


@dataclass
class VocabularyCoverage:
    """How well a vocabulary covers a set of transcripts.

    Attributes:
        num_transcripts: transcripts examined.
        num_chars: non-space characters examined.
        num_oov_chars: characters not in the vocabulary (encoded as `<unk>`).
        num_transcripts_with_oov: transcripts holding at least one such character.
        oov_counts: each out-of-vocabulary character and how often it occurs.
    """

    num_transcripts: int = 0
    num_chars: int = 0
    num_oov_chars: int = 0
    num_transcripts_with_oov: int = 0
    oov_counts: dict[str, int] = field(default_factory=dict)

    @property
    def oov_rate(self) -> float:
        """Fraction of characters outside the vocabulary (0 for no characters)."""
        return self.num_oov_chars / self.num_chars if self.num_chars else 0.0

    def describe(self, split: str) -> str:
        most = ", ".join(f"{c!r} x{n}" for c, n in sorted(self.oov_counts.items(), key=lambda kv: -kv[1])[:10])
        return (
            f"{split}: {self.num_oov_chars} of {self.num_chars} characters ({100 * self.oov_rate:.2f} %) in "
            f"{self.num_transcripts_with_oov} of {self.num_transcripts} transcripts are outside the vocabulary and "
            f"become {UNK_TOKEN} in the labels (the model can never output them, so they count as errors in the "
            f"references): {most}"
        )


def vocabulary_coverage(transcripts: Iterable[str], vocab: dict[str, int] | Iterable[str]) -> VocabularyCoverage:
    """Count the characters of normalised `transcripts` (spaces excepted) that `vocab` lacks."""
    known = set(vocab)
    coverage = VocabularyCoverage()
    oov: Counter[str] = Counter()
    for text in transcripts:
        chars = text.replace(" ", "")
        missing = [char for char in chars if char not in known]
        coverage.num_transcripts += 1
        coverage.num_chars += len(chars)
        if missing:
            coverage.num_transcripts_with_oov += 1
            oov.update(missing)
    coverage.num_oov_chars = sum(oov.values())
    coverage.oov_counts = dict(oov)
    return coverage


def ctc_tokenizer_for(
    path: str | os.PathLike | None, train_transcripts: Iterable[str], min_count: int = 1
) -> Wav2Vec2CTCTokenizer:
    """The tokenizer to fine-tune with: the one saved in checkpoint folder `path` (continuing an ASR model, whose
    output layer matches it), else one built from the normalised `train_transcripts` (`build_character_vocab`).

    Raises:
        ValueError: as `build_character_vocab` (no character in the transcripts).
    """
    tokenizer = load_ctc_tokenizer(path) if path not in (None, "", "none", "None") else None
    if tokenizer is not None:
        logger.info("Using the vocabulary of %s (%d tokens)", path, len(tokenizer))
        return tokenizer
    vocab = build_character_vocab(train_transcripts, min_count=min_count)
    with tempfile.TemporaryDirectory(prefix="hf_speech_cl-vocab-") as directory:  # the tokenizer reads it at once
        return make_ctc_tokenizer(vocab, directory)


def report_vocabulary_coverage(
    tokenizer: Wav2Vec2CTCTokenizer, transcripts: dict[str, Iterable[str]]
) -> dict[str, VocabularyCoverage]:
    """`vocabulary_coverage` of each split's normalised transcripts; a warning for every split with unknown
    characters (they become `<unk>` in the labels and count as errors in the references)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    coverage = {split: vocabulary_coverage(texts, tokens) for split, texts in transcripts.items()}
    for split, cov in coverage.items():
        if cov.num_oov_chars:
            logger.warning("%s", cov.describe(split))
    return coverage
