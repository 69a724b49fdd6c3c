"""Build, cache and load the three offline corpora.

`build_corpus(name, seed=..., **size_params)` plans every utterance in the main process from one seeded generator
(speakers, sentences, splits, per-utterance jitter, noise seeds), renders them in a process pool
(`render.render_task`, one task = consecutive utterances of one voice), streams the rows into
`datasets.Dataset.from_generator` and writes the `DatasetDict` with `save_to_disk`. The folder is
`<cache_dir>/<name>-<key>`, where `key` hashes the corpus name, `BUILDER_VERSION`, the seed, every size parameter
and a digest of the installed text sources, so a corpus is built once per parameter set and reused after. The build
happens in a hidden `.partial` folder renamed at the end (under a file lock), so an interrupted build never leaves a
half corpus that a later call would reuse. Rows do not depend on `num_workers` or on the order workers finish.

Corpora (`CORPORA`) and their parameters (`LibriSpeechParams`, `SpeechCommandsParams`, `ProsodyParams`):

- `synthetic-librispeech`: LibriSpeech's layout; Harvard sentences and Debian fortunes read by engine speakers;
  phone alignments in one ARPAbet inventory (`phones.py`); validation and test speakers and sentences are disjoint
  from train and from each other.
- `synthetic-speech-commands`: Speech Commands v0.01 / SUPERB KS layout: 1 s clips of the 10 keywords,
  `_unknown_` dictionary words and `_silence_` coloured noise; speakers (and unknown words) disjoint across splits.
- `synthetic-prosody`: 4 prosody classes named after the SUPERB ER (IEMOCAP) emotions — neutral, happy, sad,
  angry — but realised ONLY through speaking rate, mean pitch, pitch range and loudness, following the direction of
  the acoustic correlates of emotion in Murray & Arnott (1993), "Toward the simulation of emotion in synthetic
  speech: a review of the literature on human vocal emotion", JASA 93(2), table I. It is a prosody stand-in for
  emotion labels, not emotional speech. Every sentence is read in all four classes by its speaker, so the text
  carries no label information; speakers and sentences are disjoint across splits. The per-utterance
  normalisation of `hf_speech_cl.data.AudioCollator` removes the loudness cue, leaving rate, pitch and range.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from . import text as text_sources
from .engines import ENGINES, Prosody, check_voice, engine_versions
from .render import Job, render_task
from .speakers import Speaker, SpeakerSampler

__all__ = [
    "BUILDER_VERSION",
    "CORPORA",
    "KEYWORDS",
    "PROSODY_LABELS",
    "PROSODY_STYLES",
    "SPEECH_COMMANDS_LABELS",
    "TINY_PARAMS",
    "CORPUS_CONFIGS",
    "LibriSpeechParams",
    "ProsodyParams",
    "ProsodyStyle",
    "SpeechCommandsParams",
    "build_corpus",
    "corpus_folder",
    "corpus_info",
    "corpus_params",
    "default_cache_dir",
    "load_corpus",
]

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when a change of this package changes what a build writes
CORPORA = ("synthetic-librispeech", "synthetic-speech-commands", "synthetic-prosody")
SPLITS = ("train", "validation", "test")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPEECH_COMMANDS_LABELS = (*KEYWORDS, "_unknown_", "_silence_")
PROSODY_LABELS = ("neutral", "happy", "sad", "angry")
SILENCE_SPEAKER_ID = -1  # `speaker_id` of `_silence_` clips (noise has no speaker)
INFO_FILE = "corpus_info.json"
_DEFAULT_SAMPLING_RATE = 16_000  # LibriSpeech and Speech Commands are 16 kHz

# Seconds of speech per character of text at rate 1 and warp 1, per voice (fallback: per engine), fitted on the
# default build; used only to plan how many utterances make the requested hours.
_SECONDS_PER_CHAR = {
    "espeak-ng": 0.052,
    "flite": 0.057,
    "flite/kal16": 0.051,
    "flite/rms": 0.063,
    "festival": 0.067,
    "festival/cmu_us_slt_arctic_hts": 0.059,
}
_SECONDS_PER_UTTERANCE = 0.3
# Utterances per rendering task: festival pays a start-up per task, flite one process per utterance.
_TASK_SIZE = {"espeak-ng": 64, "flite": 8, "festival": 64, None: 64}


# ----------------------------------------------------------------------------------------------------- parameters
def _check_common(params) -> None:
    engines = params.engines
    if isinstance(engines, str):
        engines = (engines,)
    object.__setattr__(params, "engines", tuple(dict.fromkeys(engines)))
    unknown = [e for e in params.engines if e not in ENGINES]
    if unknown or not params.engines:
        raise ValueError(f"engines must be a non-empty subset of {ENGINES}, got {params.engines}")
    if int(params.sampling_rate) != params.sampling_rate or params.sampling_rate < 8000:
        raise ValueError(f"sampling_rate must be an integer >= 8000 Hz, got {params.sampling_rate}")
    for f in fields(params):
        if f.name.endswith("speakers") and getattr(params, f.name) < 1:
            raise ValueError(f"{f.name} must be >= 1, got {getattr(params, f.name)}")


@dataclass(frozen=True)
class LibriSpeechParams:
    """Size and make-up of `synthetic-librispeech`.

    Args:
        train_hours (`float`, *optional*, defaults to 2.0):
            Hours of training audio. Planned from text length and speaking rate, so the build lands within a few
            per cent of it (the build's `corpus_info.json` records the real figure).
        eval_hours (`float`, *optional*, defaults to 0.25):
            Hours of audio in each of `validation` and `test` (LibriSpeech's dev/test are ~5% of train-clean-100).
        train_speakers (`int`, *optional*, defaults to 40):
            Speakers in `train`; each reads about the same amount.
        eval_speakers (`int`, *optional*, defaults to 8):
            Speakers in each of `validation` and `test`, disjoint from every other split's speakers.
        eval_sentence_fraction (`float`, *optional*, defaults to 0.1):
            Share of the sentence pool reserved for each of `validation` and `test`; train never sees them.
        utterances_per_chapter (`int`, *optional*, defaults to 20):
            A speaker's utterances are grouped into chapters of this many (`chapter_id`, as in LibriSpeech ids).
        fortunes (`bool`, *optional*, defaults to `True`):
            Add Debian fortune sentences (if installed) to the 720 Harvard sentences.
        engines (`tuple[str]`, *optional*, defaults to `("espeak-ng", "flite", "festival")`):
            Engines to draw speakers from (shares 0.4 / 0.35 / 0.25, renormalised over those given).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the stored audio in Hz.
    """

    train_hours: float = 2.0
    eval_hours: float = 0.25
    train_speakers: int = 40
    eval_speakers: int = 8
    eval_sentence_fraction: float = 0.1
    utterances_per_chapter: int = 20
    fortunes: bool = True
    engines: tuple[str, ...] = ENGINES
    sampling_rate: int = _DEFAULT_SAMPLING_RATE

    def __post_init__(self):
        _check_common(self)
        if not self.train_hours > 0 or not self.eval_hours > 0:
            raise ValueError(f"train_hours and eval_hours must be > 0, got {self.train_hours} and {self.eval_hours}")
        if not 0 < self.eval_sentence_fraction < 0.5:
            raise ValueError(f"eval_sentence_fraction must be in (0, 0.5), got {self.eval_sentence_fraction}")
        if self.utterances_per_chapter < 1:
            raise ValueError(f"utterances_per_chapter must be >= 1, got {self.utterances_per_chapter}")


@dataclass(frozen=True)
class SpeechCommandsParams:
    """Size and make-up of `synthetic-speech-commands`.

    Args:
        train_speakers (`int`, *optional*, defaults to 60):
            Speakers in `train`.
        eval_speakers (`int`, *optional*, defaults to 12):
            Speakers in each of `validation` and `test` (Speech Commands splits by speaker).
        repeats (`int`, *optional*, defaults to 2):
            Times each speaker says each keyword (different jitter and placement each time).
        unknown_per_speaker (`int`, *optional*, defaults to 8):
            `_unknown_` clips per speaker: distinct dictionary words, disjoint across splits.
        silence_fraction (`float`, *optional*, defaults to 0.1):
            `_silence_` clips per split as a fraction of its spoken clips (SUPERB KS test: 1 in 12).
        clip_seconds (`float`, *optional*, defaults to 1.0):
            Length of every clip in seconds (Speech Commands: 1 s).
        snr_db (`tuple[float, float]`, *optional*, defaults to `(10.0, 40.0)`):
            Range of the signal-to-noise ratio (dB) of the coloured background noise under spoken clips.
        silence_level_db (`tuple[float, float]`, *optional*, defaults to `(-60.0, -25.0)`):
            Range of the RMS level (dBFS) of `_silence_` clips.
        engines (`tuple[str]`, *optional*, defaults to `("espeak-ng", "flite", "festival")`):
            Engines to draw speakers from.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate in Hz.
    """

    train_speakers: int = 60
    eval_speakers: int = 12
    repeats: int = 2
    unknown_per_speaker: int = 8
    silence_fraction: float = 0.1
    clip_seconds: float = 1.0
    snr_db: tuple[float, float] = (10.0, 40.0)
    silence_level_db: tuple[float, float] = (-60.0, -25.0)
    engines: tuple[str, ...] = ENGINES
    sampling_rate: int = _DEFAULT_SAMPLING_RATE

    def __post_init__(self):
        _check_common(self)
        object.__setattr__(self, "snr_db", tuple(float(v) for v in self.snr_db))
        object.__setattr__(self, "silence_level_db", tuple(float(v) for v in self.silence_level_db))
        if self.repeats < 1 or self.unknown_per_speaker < 0 or not 0 <= self.silence_fraction <= 1:
            raise ValueError(
                f"need repeats >= 1, unknown_per_speaker >= 0, 0 <= silence_fraction <= 1; got repeats={self.repeats}, "
                f"unknown_per_speaker={self.unknown_per_speaker}, silence_fraction={self.silence_fraction}"
            )
        if not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {self.clip_seconds}")
        for name in ("snr_db", "silence_level_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {low_high}")


@dataclass(frozen=True)
class ProsodyParams:
    """Size and make-up of `synthetic-prosody`.

    Args:
        train_speakers (`int`, *optional*, defaults to 24):
            Speakers in `train`. Only voices whose engine honours pitch requests are used (all espeak-ng voices,
            flite awb/slt/kal16, festival kal/ked diphone).
        eval_speakers (`int`, *optional*, defaults to 6):
            Speakers in each of `validation` and `test`.
        sentences_per_speaker (`int`, *optional*, defaults to 8):
            Harvard sentences per speaker, each read in all four classes.
        eval_sentence_fraction (`float`, *optional*, defaults to 0.15):
            Share of the Harvard sentences reserved for each of `validation` and `test`.
        engines (`tuple[str]`, *optional*, defaults to `("espeak-ng", "flite", "festival")`):
            Engines to draw speakers from.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate in Hz.
    """

    train_speakers: int = 24
    eval_speakers: int = 6
    sentences_per_speaker: int = 8
    eval_sentence_fraction: float = 0.15
    engines: tuple[str, ...] = ENGINES
    sampling_rate: int = _DEFAULT_SAMPLING_RATE

    def __post_init__(self):
        _check_common(self)
        if self.sentences_per_speaker < 1:
            raise ValueError(f"sentences_per_speaker must be >= 1, got {self.sentences_per_speaker}")
        if not 0 < self.eval_sentence_fraction < 0.5:
            raise ValueError(f"eval_sentence_fraction must be in (0, 0.5), got {self.eval_sentence_fraction}")


@dataclass(frozen=True)
class ProsodyStyle:
    """How one prosody class departs from the speaker's neutral reading.

    Attributes:
        rate: speaking-rate factor.
        pitch_semitones: mean-F0 shift in semitones.
        pitch_range: factor on F0 excursions.
        gain_db: loudness change in dB.
    """

    rate: float
    pitch_semitones: float
    pitch_range: float
    gain_db: float


# Directions after Murray & Arnott (1993), table I: anger "slightly faster, very much higher pitch, much wider
# range, higher intensity"; happiness "faster or slower, much higher pitch, much wider range, higher intensity";
# sadness "slightly slower, slightly lower pitch, slightly narrower range, lower intensity". Anger is made the
# fastest and loudest, happiness the highest and widest, so that the classes separate.
PROSODY_STYLES = {
    "neutral": ProsodyStyle(rate=1.0, pitch_semitones=0.0, pitch_range=1.0, gain_db=0.0),
    "happy": ProsodyStyle(rate=1.08, pitch_semitones=4.0, pitch_range=1.8, gain_db=3.0),
    "sad": ProsodyStyle(rate=0.8, pitch_semitones=-3.0, pitch_range=0.5, gain_db=-6.0),
    "angry": ProsodyStyle(rate=1.2, pitch_semitones=2.0, pitch_range=1.4, gain_db=7.0),
}

# Size parameters of tiny corpora (a few dozen short utterances each, seconds to build): tests and smoke runs.
TINY_PARAMS: dict[str, dict] = {
    "synthetic-librispeech": {"train_hours": 0.025, "eval_hours": 0.005, "train_speakers": 4, "eval_speakers": 2},
    "synthetic-speech-commands": {"train_speakers": 3, "eval_speakers": 2, "repeats": 1, "unknown_per_speaker": 2},
    "synthetic-prosody": {"train_speakers": 3, "eval_speakers": 2, "sentences_per_speaker": 2},
}

# Named configurations (`load_corpus(name, config=...)`, `--dataset_config`): size parameters over the defaults.
# `large` is the pretraining corpus of the label-efficiency benchmark: 5x the default's training audio from 5x its
# speakers, so that pretraining sees more unlabeled audio than any labeled subset (the 10-minute and 1-hour subsets
# are drawn from its train split); validation/test keep the default's size, speakers and sentences stay unseen.
CORPUS_CONFIGS: dict[str, dict[str, dict]] = {
    "synthetic-librispeech": {
        "default": {},
        "tiny": TINY_PARAMS["synthetic-librispeech"],
        "large": {"train_hours": 10.0, "train_speakers": 200},
    },
    "synthetic-speech-commands": {"default": {}, "tiny": TINY_PARAMS["synthetic-speech-commands"]},
    "synthetic-prosody": {"default": {}, "tiny": TINY_PARAMS["synthetic-prosody"]},
}

_DESCRIPTIONS = {
    "synthetic-librispeech": (
        "Synthetic read speech in LibriSpeech's layout, generated offline by Debian text-to-speech engines "
        "(espeak-ng, flite, festival) from the Harvard sentences and Debian fortunes. Speakers are engine voices with "
        "their own rate, pitch and vocal-tract warp. NOT human speech: use it to test pipelines and compare methods "
        "offline, not to report results comparable to LibriSpeech. `phone_alignment` holds engine phone timings "
        "mapped to ARPAbet without stress plus `sil`."
    ),
    "synthetic-speech-commands": (
        "Synthetic keyword clips in the Speech Commands v0.01 / SUPERB KS layout (1 s, 10 keywords, _unknown_, "
        "_silence_), generated offline by Debian text-to-speech engines with coloured background noise. NOT human "
        "speech."
    ),
    "synthetic-prosody": (
        "Synthetic sentences in four prosody classes named neutral, happy, sad and angry after the SUPERB ER "
        "(IEMOCAP) labels. The classes are realised ONLY through speaking rate, mean pitch, pitch range and "
        "loudness set on text-to-speech engines: a prosody stand-in for emotion labels, NOT emotional speech, and "
        "results on it say nothing about emotion recognition."
    ),
}


# ----------------------------------------------------------------------------------------------------- features
def _features(name: str, sampling_rate: int) -> datasets.Features:
    common = {"file": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=sampling_rate)}
    if name == "synthetic-librispeech":
        return datasets.Features(
            {
                **common,
                "text": datasets.Value("string"),
                "speaker_id": datasets.Value("int64"),
                "chapter_id": datasets.Value("int64"),
                "id": datasets.Value("string"),
                "duration": datasets.Value("float32"),
                "engine": datasets.Value("string"),
                "voice": datasets.Value("string"),
                "phone_alignment": datasets.List(
                    {
                        "phone": datasets.Value("string"),
                        "start": datasets.Value("float32"),
                        "end": datasets.Value("float32"),
                    }
                ),
            }
        )
    if name == "synthetic-speech-commands":
        return datasets.Features(
            {
                **common,
                "label": datasets.ClassLabel(names=list(SPEECH_COMMANDS_LABELS)),
                "speaker_id": datasets.Value("int64"),
                "id": datasets.Value("string"),
                "duration": datasets.Value("float32"),
            }
        )
    return datasets.Features(
        {
            **common,
            "label": datasets.ClassLabel(names=list(PROSODY_LABELS)),
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "id": datasets.Value("string"),
            "duration": datasets.Value("float32"),
        }
    )


# ----------------------------------------------------------------------------------------------------- planning
def _estimate_seconds(text: str, speaker: Speaker) -> float:
    per_char = _SECONDS_PER_CHAR.get(speaker.voice.key, _SECONDS_PER_CHAR[speaker.voice.engine])
    return (_SECONDS_PER_UTTERANCE + len(text) * per_char) / (speaker.rate * speaker.warp)


def _unique_int(rng: np.random.Generator, low: int, high: int, used: set[int]) -> int:
    while (value := int(rng.integers(low, high))) in used:
        pass
    used.add(value)
    return value


def _job_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def _split_pool(rng: np.random.Generator, pool: Sequence, eval_fraction: float) -> dict[str, list]:
    order = rng.permutation(len(pool))
    n_eval = max(1, int(round(eval_fraction * len(pool))))
    return {
        "validation": [pool[i] for i in order[:n_eval]],
        "test": [pool[i] for i in order[n_eval : 2 * n_eval]],
        "train": [pool[i] for i in order[2 * n_eval :]],
    }


def _split_speakers(sampler: SpeakerSampler, train: int, evaluation: int) -> dict[str, list[Speaker]]:
    """Disjoint speakers per split, ordered by voice so that speakers sharing a festival voice share its batches."""
    counts = {"train": train, "validation": evaluation, "test": evaluation}
    return {split: sorted(sampler.sample(n), key=lambda s: s.voice.key) for split, n in counts.items()}


def _plan_librispeech(params: LibriSpeechParams, rng: np.random.Generator) -> dict[str, list[Job]]:
    sentences = _split_pool(rng, text_sources.sentence_pool(params.fortunes), params.eval_sentence_fraction)
    speakers = _split_speakers(SpeakerSampler(rng, params.engines), params.train_speakers, params.eval_speakers)
    hours = {"train": params.train_hours, "validation": params.eval_hours, "test": params.eval_hours}
    used_chapters: set[int] = set()
    plan = {}
    for split in SPLITS:
        pool, split_speakers = sentences[split], speakers[split]
        read: dict[int, list] = {s.speaker_id: [] for s in split_speakers}
        seen: dict[int, set[int]] = {s.speaker_id: set() for s in split_speakers}
        cursor, total, turn = 0, 0.0, 0
        active = list(split_speakers)
        while total < hours[split] * 3600 and active:
            speaker = active[turn % len(active)]
            for _ in range(len(pool)):  # next sentence this speaker has not read
                k = cursor % len(pool)
                cursor += 1
                if k not in seen[speaker.speaker_id]:
                    break
            else:
                active.remove(speaker)
                continue
            seen[speaker.speaker_id].add(k)
            read[speaker.speaker_id].append(pool[k])
            total += _estimate_seconds(pool[k].text, speaker)
            turn += 1
        jobs = []
        for speaker in split_speakers:
            for n, sentence in enumerate(read[speaker.speaker_id]):
                if n % params.utterances_per_chapter == 0:
                    chapter = _unique_int(rng, 1000, 1_000_000, used_chapters)
                utt_id = f"{speaker.speaker_id}-{chapter}-{n % params.utterances_per_chapter:04d}"
                prosody = speaker.prosody(
                    rate=float(rng.uniform(0.95, 1.05)), pitch_semitones=float(rng.uniform(-0.5, 0.5))
                )
                jobs.append(
                    Job(
                        index=len(jobs),
                        voice=speaker.voice,
                        text=sentence.text,
                        prosody=prosody,
                        warp=speaker.warp,
                        level_db=speaker.level_db + float(rng.uniform(-1.5, 1.5)),
                        seed=_job_seed(rng),
                        row={
                            "file": f"{speaker.speaker_id}/{chapter}/{utt_id}.flac",
                            "text": sentence.transcript,
                            "speaker_id": speaker.speaker_id,
                            "chapter_id": chapter,
                            "id": utt_id,
                            "engine": speaker.voice.engine,
                            "voice": speaker.voice.name,
                        },
                        alignment=True,
                    )
                )
        plan[split] = jobs
    return plan


def _unknown_words() -> list[str]:
    def stem(word: str) -> str:
        for suffix in ("ing", "es", "ed", "s"):
            if word.endswith(suffix) and word.removesuffix(suffix) in KEYWORDS:
                return word.removesuffix(suffix)
        return word

    return [w for w in text_sources.dictionary_words() if stem(w) not in KEYWORDS]


def _plan_speech_commands(params: SpeechCommandsParams, rng: np.random.Generator) -> dict[str, list[Job]]:
    speakers = _split_speakers(
        SpeakerSampler(rng, params.engines, rate_range=(0.9, 1.35)), params.train_speakers, params.eval_speakers
    )
    words = _unknown_words()
    if params.unknown_per_speaker and not words:
        raise RuntimeError(
            f"/usr/share/dict/american-english not found ({text_sources.DICTIONARY_PATH}): apt-get install wamerican "
            "(or pass unknown_per_speaker=0)"
        )
    need = {s: len(speakers[s]) * params.unknown_per_speaker for s in SPLITS}
    if sum(need.values()) > len(words):
        raise ValueError(f"{sum(need.values())} unknown words requested but the dictionary offers {len(words)}")
    order = rng.permutation(len(words))
    word_pools, start = {}, 0
    for split in SPLITS:
        word_pools[split] = [words[i] for i in order[start : start + need[split]]]
        start += need[split]
    label_index = {label: i for i, label in enumerate(SPEECH_COMMANDS_LABELS)}
    plan = {}
    for split in SPLITS:
        jobs: list[Job] = []
        unknown = iter(word_pools[split])
        for speaker in speakers[split]:
            said = [(w, w, r) for w in KEYWORDS for r in range(params.repeats)]
            said += [(next(unknown), "_unknown_", 0) for _ in range(params.unknown_per_speaker)]
            for word, label, repeat in said:
                jobs.append(
                    Job(
                        index=len(jobs),
                        voice=speaker.voice,
                        text=word,
                        prosody=speaker.prosody(
                            rate=float(rng.uniform(0.9, 1.1)), pitch_semitones=float(rng.uniform(-1, 1))
                        ),
                        warp=speaker.warp,
                        level_db=speaker.level_db + float(rng.uniform(-3, 3)),
                        seed=_job_seed(rng),
                        row={
                            "file": f"{word}/{speaker.speaker_id:08x}_nohash_{repeat}.flac",
                            "label": label_index[label],
                            "speaker_id": speaker.speaker_id,
                            "id": f"{word}/{speaker.speaker_id:08x}_nohash_{repeat}",
                        },
                        clip_seconds=params.clip_seconds,
                        snr_db=float(rng.uniform(*params.snr_db)),
                        noise_beta=tuple(float(b) for b in rng.choice([-1.0, 0.0, 1.0, 2.0], size=2, replace=False)),
                    )
                )
        for k in range(int(round(params.silence_fraction * len(jobs)))):
            betas = tuple(
                float(b) for b in rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], size=int(rng.integers(1, 4)), replace=False)
            )
            jobs.append(
                Job(
                    index=len(jobs),
                    voice=None,
                    text="",
                    prosody=Prosody(),
                    warp=1.0,
                    level_db=float(rng.uniform(*params.silence_level_db)),
                    seed=_job_seed(rng),
                    row={
                        "file": f"_background_noise_/{split}_{k:05d}.flac",
                        "label": label_index["_silence_"],
                        "speaker_id": SILENCE_SPEAKER_ID,
                        "id": f"_background_noise_/{split}_{k:05d}",
                    },
                    clip_seconds=params.clip_seconds,
                    noise_beta=betas,
                )
            )
        plan[split] = jobs
    return plan


def _plan_prosody(params: ProsodyParams, rng: np.random.Generator) -> dict[str, list[Job]]:
    sentences = _split_pool(rng, text_sources.harvard_sentences(), params.eval_sentence_fraction)
    speakers = _split_speakers(
        SpeakerSampler(rng, params.engines, require_pitch_control=True), params.train_speakers, params.eval_speakers
    )
    plan = {}
    for split in SPLITS:
        pool, jobs = sentences[split], []
        cursor = 0
        for speaker in speakers[split]:
            count = min(params.sentences_per_speaker, len(pool))
            chosen = [pool[(cursor + i) % len(pool)] for i in range(count)]
            cursor += count
            for n, sentence in enumerate(chosen):
                for label_id, label in enumerate(PROSODY_LABELS):
                    style = PROSODY_STYLES[label]
                    prosody = speaker.prosody(
                        rate=style.rate * float(rng.uniform(0.95, 1.05)),
                        pitch_semitones=style.pitch_semitones + float(rng.uniform(-0.7, 0.7)),
                        pitch_range=style.pitch_range * float(rng.uniform(0.9, 1.1)),
                    )
                    utt_id = f"{speaker.speaker_id}-{n:04d}-{label}"
                    jobs.append(
                        Job(
                            index=len(jobs),
                            voice=speaker.voice,
                            text=sentence.text,
                            prosody=prosody,
                            warp=speaker.warp,
                            level_db=speaker.level_db + style.gain_db + float(rng.uniform(-1.5, 1.5)),
                            seed=_job_seed(rng),
                            row={
                                "file": f"{label}/{utt_id}.flac",
                                "label": label_id,
                                "text": sentence.transcript,
                                "speaker_id": speaker.speaker_id,
                                "id": utt_id,
                            },
                        )
                    )
        plan[split] = jobs
    return plan


@dataclass(frozen=True)
class _Spec:
    params: type  # the size-parameter dataclass
    plan: Callable[..., dict[str, list[Job]]]  # (params, rng) -> split -> jobs
    text: Callable[..., tuple]  # params -> the text collections the corpus draws from (part of the build key)


_SPECS = {
    "synthetic-librispeech": _Spec(
        LibriSpeechParams, _plan_librispeech, lambda p: (text_sources.sentence_pool(p.fortunes),)
    ),
    "synthetic-speech-commands": _Spec(SpeechCommandsParams, _plan_speech_commands, lambda p: (_unknown_words(),)),
    "synthetic-prosody": _Spec(ProsodyParams, _plan_prosody, lambda p: (text_sources.harvard_sentences(),)),
}


# ----------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """`$HF_SPEECH_CL_CACHE`, else `~/.cache/hf_speech_cl`."""
    return Path(os.environ.get("HF_SPEECH_CL_CACHE") or Path.home() / ".cache" / "hf_speech_cl").expanduser()


def corpus_params(name: str, config: str | None = None, **size_params):
    """The validated parameter dataclass of corpus `name` (`LibriSpeechParams`, ...).

    Args:
        name: one of `CORPORA`.
        config: a named configuration of `CORPUS_CONFIGS[name]` (`default`, `tiny`, and `large` for
            `synthetic-librispeech`); `None` is `default`. `size_params` override its values.
        **size_params: fields of the corpus' parameter dataclass.

    Raises:
        ValueError: unknown corpus name, configuration or parameter, or an invalid value.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown corpus {name!r}; expected one of {CORPORA}")
    configs = CORPUS_CONFIGS[name]
    if config is not None and config not in configs:
        raise ValueError(f"{name}: unknown configuration {config!r}; expected one of {sorted(configs)}")
    size_params = {**configs[config or "default"], **size_params}
    cls = _SPECS[name].params
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(size_params) - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown size parameter(s) {unknown}; expected some of {sorted(allowed)}")
    return cls(**size_params)


def _build_key(name: str, params, seed: int) -> tuple[str, dict]:
    text_digest = hashlib.sha256()
    for collection in _SPECS[name].text(params):
        text_digest.update(text_sources.text_digest(collection).encode())
    payload = {
        "corpus": name,
        "builder_version": BUILDER_VERSION,
        "seed": int(seed),
        "params": asdict(params),
        "text_digest": text_digest.hexdigest()[:16],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12], payload


def corpus_folder(name: str, *, cache_dir: str | os.PathLike | None = None, seed: int = 0, **size_params) -> Path:
    """Where `build_corpus` writes (or finds) corpus `name` with these parameters; nothing is built."""
    params = corpus_params(name, **size_params)
    key, _ = _build_key(name, params, seed)
    return Path(cache_dir or default_cache_dir()).expanduser() / f"{name}-{key}"


def _complete(folder: Path) -> bool:
    return (folder / INFO_FILE).is_file() and (folder / "dataset_dict.json").is_file()


def corpus_info(folder: str | os.PathLike) -> dict:
    """The build record of a corpus folder: parameters, seed, key, per-split hours/speakers/sentences, engine
    versions, build seconds, disk bytes."""
    return json.loads((Path(folder) / INFO_FILE).read_text())


# ----------------------------------------------------------------------------------------------------- building
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; as torch's DataLoader workers do
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _tasks(jobs: Sequence[Job], sampling_rate: int) -> list[tuple[int, list[Job]]]:
    tasks: list[tuple[int, list[Job]]] = []
    for job in jobs:
        engine = job.voice.engine if job.voice else None
        if tasks and tasks[-1][1][-1].voice == job.voice and len(tasks[-1][1]) < _TASK_SIZE[engine]:
            tasks[-1][1].append(job)
        else:
            tasks.append((sampling_rate, [job]))
    return tasks


@contextlib.contextmanager
def _quiet_datasets():
    disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not disabled:
            datasets.utils.enable_progress_bars()


@contextlib.contextmanager
def _renderer(num_workers: int) -> Iterator[Callable]:
    """`imap`-like ordered map over tasks: a process pool, or in-process for one worker."""
    if num_workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield lambda tasks: map(render_task, tasks)
        finally:
            torch.set_num_threads(threads)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(num_workers, initializer=_init_worker) as pool:
        yield lambda tasks: pool.imap(render_task, tasks)


def _split_stats(rows_meta: list[tuple]) -> dict:
    durations = [d for d, _, _, _ in rows_meta]
    speakers = {s for _, s, _, _ in rows_meta if s != SILENCE_SPEAKER_ID}
    stats = {
        "utterances": len(rows_meta),
        "hours": round(sum(durations) / 3600, 4),
        "speakers": len(speakers),
        "min_seconds": round(min(durations), 3) if durations else 0.0,
        "max_seconds": round(max(durations), 3) if durations else 0.0,
    }
    texts = [t for _, _, t, _ in rows_meta if t is not None]
    if texts:
        stats["sentences"] = len(set(texts))
    engines = Counter()
    for d, _, _, engine in rows_meta:
        engines[engine] += d / 3600
    stats["hours_per_engine"] = {k: round(v, 4) for k, v in sorted(engines.items())}
    return stats


def build_corpus(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    config: str | None = None,
    **size_params,
) -> Path:
    """Build corpus `name` unless a complete build with the same parameters exists; return its folder.

    Args:
        name: one of `CORPORA`.
        cache_dir: parent folder of the corpora; defaults to `default_cache_dir()`.
        seed: seeds speakers, sentence choice, splits, jitter, noise and dither; same seed and parameters give
            the same corpus.
        num_workers: processes that synthesize; defaults to the cores this process may use. Does not change the
            result.
        config: a named configuration of `CORPUS_CONFIGS[name]` (e.g. `large`: 10 h of train audio from 200
            speakers); `size_params` override it. The folder depends only on the resulting parameters.
        **size_params: fields of the corpus' parameter dataclass (`LibriSpeechParams`, `SpeechCommandsParams`,
            `ProsodyParams`), e.g. `train_hours=0.02, eval_hours=0.005` for a tiny LibriSpeech.

    Returns:
        The `save_to_disk` folder `<cache_dir>/<name>-<key>` (open it with `datasets.load_from_disk`), with
        `corpus_info.json` beside the splits.

    Raises:
        ValueError: unknown corpus, unknown or invalid size parameter, bad `num_workers`.
        EngineNotFoundError (a `RuntimeError`): a text-to-speech engine or voice is missing; the message names
            the Debian package to install.
    """
    params = corpus_params(name, config, **size_params)
    num_workers = _cpu_count() if num_workers is None else int(num_workers)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    key, payload = _build_key(name, params, seed)
    folder = cache_dir / f"{name}-{key}"
    if _complete(folder):
        logger.info("reusing %s", folder)
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{name}-{key}.lock")):
        if _complete(folder):  # another process built it while we waited
            return folder
        for stale in cache_dir.glob(f".{name}-{key}.partial-*"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        partial = cache_dir / f".{name}-{key}.partial-{os.getpid()}"
        try:
            info = _build(name, key, params, seed, num_workers, partial, payload)
            (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            if folder.exists():  # an incomplete folder (not written by this code): replace it
                shutil.rmtree(folder)
            os.rename(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _build(name: str, key: str, params, seed: int, num_workers: int, partial: Path, payload: dict) -> dict:
    start = time.perf_counter()
    rng = np.random.default_rng([int(seed), CORPORA.index(name)])
    plan = _SPECS[name].plan(params, rng)
    for voice in {job.voice for jobs in plan.values() for job in jobs if job.voice is not None}:
        check_voice(voice)
    features = _features(name, params.sampling_rate)
    label_names = features["label"].names if "label" in features else None
    total = sum(len(jobs) for jobs in plan.values())
    logger.info("building %s (%d utterances, %d workers) in %s", name, total, num_workers, partial)
    partial.mkdir(parents=True)
    generated = partial / "_generator_cache"
    stats: dict[str, dict] = {}
    splits = {}
    with (
        _quiet_datasets(),
        _renderer(num_workers) as render,
        tqdm(total=total, desc=name, unit="utt", disable=None) as bar,
    ):
        for split, jobs in plan.items():
            meta: list[tuple] = []
            labels: Counter = Counter()

            def rows(jobs=jobs, meta=meta, labels=labels):
                for task_rows in render(_tasks(jobs, params.sampling_rate)):
                    for row in task_rows:
                        job = jobs[len(meta)]
                        engine = job.voice.engine if job.voice else "noise"
                        meta.append((row["duration"], row["speaker_id"], row.get("text"), engine))
                        if label_names:
                            labels[label_names[row["label"]]] += 1
                        yield row
                    bar.update(len(task_rows))

            try:
                splits[split] = datasets.Dataset.from_generator(
                    rows, features=features, cache_dir=str(generated), split=split, fingerprint=f"{name}-{key}-{split}"
                )
            except datasets.exceptions.DatasetGenerationError as err:  # show the engine's own error
                raise (err.__cause__ or err) from None
            stats[split] = _split_stats(meta)
            if label_names:
                stats[split]["labels"] = {label: labels[label] for label in label_names}
        corpus = datasets.DatasetDict(splits)
        for dataset in corpus.values():
            dataset.info.description = _DESCRIPTIONS[name]
        corpus.save_to_disk(str(partial))
    del corpus, splits
    shutil.rmtree(generated, ignore_errors=True)
    disk = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
    return {
        **payload,
        "name": name,
        "key": key,
        "description": _DESCRIPTIONS[name],
        "splits": stats,
        "engine_versions": engine_versions(),
        "build_seconds": round(time.perf_counter() - start, 2),
        "num_workers": num_workers,
        "disk_bytes": disk,
    }


def load_corpus(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    config: str | None = None,
    **size_params,
) -> datasets.DatasetDict:
    """Load corpus `name` (building it first if needed) as a `DatasetDict` with splits `train`, `validation`,
    `test`; arguments as in `build_corpus` (`config`: a named size of `CORPUS_CONFIGS`, e.g. `large`). The audio
    column decodes to 16 kHz (`sampling_rate`) mono."""
    folder = build_corpus(name, cache_dir=cache_dir, seed=seed, num_workers=num_workers, config=config, **size_params)
    return datasets.load_from_disk(str(folder))
