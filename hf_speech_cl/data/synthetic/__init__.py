"""Offline speech corpora synthesized by Debian text-to-speech engines (espeak-ng, flite, festival).

Nothing can be downloaded on the machines this project targets, so its default data is built here, once per
parameter set, and cached with `save_to_disk` under `default_cache_dir()`:

- `synthetic-librispeech`: LibriSpeech's layout (`file`, `audio`, `text`, `speaker_id`, `chapter_id`, `id`) plus
  `duration`, `engine`, `voice` and `phone_alignment` (ARPAbet without stress + `sil`, one inventory for all
  engines, see `phones`). Default: 2 h of training audio, 0.25 h each of validation and test; configuration `large`
  (`load_corpus(..., config="large")`, `--dataset_config large`): 10 h of training audio from 200 speakers.
- `synthetic-speech-commands`: Speech Commands v0.01 / SUPERB KS layout: 1 s clips, 12 labels.
- `synthetic-prosody`: four classes named neutral/happy/sad/angry realised ONLY through speaking rate, pitch,
  pitch range and loudness — a prosody stand-in for emotion labels, not emotional speech.

```python
from hf_speech_cl.data.synthetic import TINY_PARAMS, load_corpus
corpus = load_corpus("synthetic-librispeech", train_hours=0.02, eval_hours=0.005)   # small, seconds to build
tiny = load_corpus("synthetic-prosody", **TINY_PARAMS["synthetic-prosody"])          # what the tests use
corpus["train"][0]["audio"]["array"]
```
Command line: `python -m hf_speech_cl.data.synthetic --help`.

Needs `apt-get install espeak-ng flite festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts`,
plus `fortunes` (more sentences) and `wamerican` (unknown words for keyword spotting). The size parameters are the
fields of `LibriSpeechParams`, `SpeechCommandsParams` and `ProsodyParams`.
"""

from .corpora import (
    BUILDER_VERSION,
    CORPORA,
    CORPUS_CONFIGS,
    KEYWORDS,
    PROSODY_LABELS,
    PROSODY_STYLES,
    SPEECH_COMMANDS_LABELS,
    TINY_PARAMS,
    LibriSpeechParams,
    ProsodyParams,
    ProsodyStyle,
    SpeechCommandsParams,
    build_corpus,
    corpus_folder,
    corpus_info,
    corpus_params,
    default_cache_dir,
    load_corpus,
)
from .engines import EngineNotFoundError
from .phones import PHONE_INVENTORY

__all__ = [
    "BUILDER_VERSION",
    "CORPORA",
    "KEYWORDS",
    "PHONE_INVENTORY",
    "PROSODY_LABELS",
    "PROSODY_STYLES",
    "SPEECH_COMMANDS_LABELS",
    "TINY_PARAMS",
    "CORPUS_CONFIGS",
    "EngineNotFoundError",
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
