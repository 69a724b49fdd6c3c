"""Shared test set-up: everything offline, small thread counts, one corpus cache per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def corpus_cache_dir(tmp_path_factory):
    """A session-wide corpus cache; `HF_SPEECH_CL_CACHE` points at it while the session runs."""
    path = tmp_path_factory.mktemp("corpora")
    previous = os.environ.get("HF_SPEECH_CL_CACHE")
    os.environ["HF_SPEECH_CL_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("HF_SPEECH_CL_CACHE", None)
    else:
        os.environ["HF_SPEECH_CL_CACHE"] = previous


def _tiny_corpus(name, cache_dir):
    from hf_speech_cl.data.synthetic import TINY_PARAMS, load_corpus

    return load_corpus(name, cache_dir=cache_dir, **TINY_PARAMS[name])


@pytest.fixture(scope="session")
def tiny_librispeech(corpus_cache_dir):
    """`synthetic-librispeech` DatasetDict: 4 train speakers, ~30 train utterances of 1-6 s, 2 speakers and a few
    utterances in each of validation and test; all three engines; `phone_alignment` included."""
    return _tiny_corpus("synthetic-librispeech", corpus_cache_dir)


@pytest.fixture(scope="session")
def tiny_speech_commands(corpus_cache_dir):
    """`synthetic-speech-commands` DatasetDict: 3/2/2 speakers, every label in every split, 1 s clips."""
    return _tiny_corpus("synthetic-speech-commands", corpus_cache_dir)


@pytest.fixture(scope="session")
def tiny_prosody(corpus_cache_dir):
    """`synthetic-prosody` DatasetDict: 3/2/2 speakers × 2 sentences × 4 labels."""
    return _tiny_corpus("synthetic-prosody", corpus_cache_dir)
