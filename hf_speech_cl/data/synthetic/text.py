"""What the synthetic speakers say: Harvard sentences, Debian fortunes, dictionary words.

- The 720 Harvard sentences (IEEE Subcommittee on Subjective Measurements, 1969, "IEEE Recommended Practice for
  Speech Quality Measurements", IEEE Trans. Audio Electroacoust. 17(3), appendix; public domain) ship in
  `resources/harvard_sentences.txt`, grouped in 72 lists of 10. OCR slips of the source copy are repaired on load
  (a space before the full stop, a capital mid-sentence).
- Debian `fortunes` / `fortunes-min` (`/usr/share/games/fortunes`): fortune cookies split into sentences; kept are
  plain-ASCII sentences of 5–16 words made of dictionary words, without digits, abbreviations, acronyms, quotes or
  dashes, from the milder collections, minus a block list of offensive or grim words. About 4,400 sentences with
  the full `fortunes` package; about 350 with `fortunes-min`; none without either (the Harvard sentences suffice).
- `/usr/share/dict/american-english` (Debian `wamerican`): words for the `_unknown_` class of the keyword corpus.

`normalize_transcript` writes a sentence the way LibriSpeech's `text` column does: upper case, no punctuation except
apostrophes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "DICTIONARY_PATH",
    "FORTUNES_DIR",
    "Sentence",
    "dictionary_words",
    "fortune_sentences",
    "harvard_sentences",
    "normalize_transcript",
    "sentence_pool",
    "text_digest",
]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DICTIONARY_PATH = Path("/usr/share/dict/american-english")

# Collections that are mostly quotations, code, ASCII art, jargon, or prone to offensive or political content.
_SKIPPED_FORTUNE_FILES = frozenset(
    "art ascii-art computers debian definitions disclaimer drugs ethnic knghtbrd law linux linuxcookie medicine "
    "men-women miscellaneous news perl politics songs-poems startrek translate-me zippy".split()
)
_BLOCKED_WORDS = frozenset(
    """sex sexual sexy naked nude penis vagina breast boob fuck fucking fucked shit shitty damn damned hell bitch
    bastard ass asshole whore slut rape raped kill killed killing killer murder murderer suicide drunk beer whiskey
    god jesus christ bible church religion negro jew jewish gay homosexual virgin orgasm condom prostitute drug
    marijuana cocaine heroin nazi hitler die died death dead dying gun war stupid idiot fat ugly hate""".split()
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'\-]*[a-z][.!?]")
# acronyms, single capitals other than "I", stray quotes, dashes, punctuation not followed by a space
_ODD = re.compile(r"[A-Z]{2}|\b(?!I\b)[A-Z]\b| '|' |''|--|\s-|-\s|[,;][^ ]")
_WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Sentence:
    """One prompt.

    Attributes:
        text: the prompt as given to the engines (mixed case, punctuation kept for phrasing).
        source: where it comes from, e.g. `"harvard/03"` (list 3) or `"fortunes/wisdom"`.
    """

    text: str
    source: str

    @property
    def transcript(self) -> str:
        """LibriSpeech-style transcript (see `normalize_transcript`)."""
        return normalize_transcript(self.text)


def normalize_transcript(text: str) -> str:
    """Upper case, hyphens as spaces, no punctuation except apostrophes, single spaces.

    >>> normalize_transcript("It's easy to tell the depth of a well-known pond.")
    "IT'S EASY TO TELL THE DEPTH OF A WELL KNOWN POND"
    """
    text = text.upper().replace("-", " ")
    text = re.sub(r"[^A-Z' ]+", " ", text)
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])", " ", text)  # quotes, not apostrophes inside words
    return " ".join(text.split())


@functools.cache
def harvard_sentences() -> tuple[Sentence, ...]:
    """The 720 Harvard sentences in order; `source` is `harvard/NN` with NN the list number (01–72)."""
    raw = resources.files(__package__).joinpath("resources/harvard_sentences.txt").read_text(encoding="utf-8")
    out = []
    for i, line in enumerate(raw.splitlines()):
        text = " ".join(line.split())
        if not text:
            continue
        text = re.sub(r"\s+([.,?!])", r"\1", text)  # "walking on ." -> "walking on."
        words = text.split(" ")
        # capitals mid-sentence that are OCR slips of common words ("A Tusk is used ...", "Cats and Dogs")
        words = [w.lower() if k and w.lower() in _HARVARD_LOWER else w for k, w in enumerate(words)]
        out.append(Sentence(" ".join(words), f"harvard/{i // 10 + 1:02d}"))
    return tuple(out)


_HARVARD_LOWER = frozenset({"tusk", "dogs"})


def _blocked(word: str) -> bool:
    word = word.lower().removesuffix("'s")
    stems = {word, word.removesuffix("s"), word.removesuffix("es"), word.removesuffix("ed"), word.removesuffix("ing")}
    return not stems.isdisjoint(_BLOCKED_WORDS)


@functools.cache
def _dictionary() -> frozenset[str]:
    if not DICTIONARY_PATH.is_file():
        return frozenset()
    return frozenset(DICTIONARY_PATH.read_text(encoding="utf-8", errors="replace").split())


def fortune_sentences(
    root: Path | str = FORTUNES_DIR, *, min_words: int = 5, max_words: int = 16
) -> tuple[Sentence, ...]:
    """Plain sentences from the Debian fortune files under `root` (empty if the folder is missing).

    Args:
        root: folder of fortune files (`fortunes`/`fortunes-min` install them in `/usr/share/games/fortunes`).
        min_words, max_words: inclusive bounds on the number of words per sentence.

    Returns:
        Distinct sentences (case- and punctuation-insensitive) in file order; `source` is `fortunes/<file>`.
    """
    root = Path(root)
    if not root.is_dir():
        return ()
    dictionary = _dictionary()
    lower = {w.lower() for w in dictionary}
    seen: set[str] = set()
    out = []
    for path in sorted(root.iterdir()):
        if "." in path.name or not path.is_file() or path.name in _SKIPPED_FORTUNE_FILES:
            continue
        raw = path.read_text(encoding="latin-1")
        for fortune in raw.split("\n%\n"):
            body = re.split(r"\n\s*--", fortune)[0]  # drop the attribution
            text = " ".join(body.split())
            if not text.isascii():
                continue
            for sentence in _SENTENCE_SPLIT.split(text):
                if not _PLAIN_SENTENCE.fullmatch(sentence) or _ODD.search(sentence):
                    continue
                words = _WORD.findall(sentence.replace("-", " "))
                if not min_words <= len(words) <= max_words or any(_blocked(w) for w in words):
                    continue
                if dictionary and not all(
                    w in dictionary or w.lower() in lower or w.lower().removesuffix("'s") in lower for w in words
                ):
                    continue
                key = normalize_transcript(sentence)
                if key not in seen:
                    seen.add(key)
                    out.append(Sentence(sentence, f"fortunes/{path.name}"))
    return tuple(out)


@functools.cache
def _cached_fortunes() -> tuple[Sentence, ...]:
    return fortune_sentences()


def sentence_pool(include_fortunes: bool = True) -> tuple[Sentence, ...]:
    """Harvard sentences, then (if asked and installed) the fortune sentences, without duplicate transcripts."""
    pool = list(harvard_sentences())
    if include_fortunes:
        seen = {s.transcript for s in pool}
        pool += [s for s in _cached_fortunes() if s.transcript not in seen]
    return tuple(pool)


@functools.cache
def dictionary_words(min_letters: int = 3, max_letters: int = 9) -> tuple[str, ...]:
    """Lower-case alphabetic words of `/usr/share/dict/american-english` (empty if `wamerican` is missing).

    Proper nouns, possessives and words outside `[min_letters, max_letters]` letters are dropped.
    """
    return tuple(
        sorted(
            w
            for w in _dictionary()
            if w.isascii() and w.isalpha() and w.islower() and min_letters <= len(w) <= max_letters
        )
    )


def text_digest(*collections: tuple) -> str:
    """A short hash of text collections (sentences or words): part of a corpus' build hash, so that a corpus is
    rebuilt when the installed fortune files or dictionary change."""
    h = hashlib.sha256()
    for collection in collections:
        for item in collection:
            h.update((item.text if isinstance(item, Sentence) else str(item)).encode())
            h.update(b"\n")
        h.update(b"\x00")
    return h.hexdigest()[:16]
