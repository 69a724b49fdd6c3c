#!/usr/bin/env python
"""Label efficiency: how much each pretraining objective helps when only 10 minutes or 1 hour of labels exist.

One backbone (`--model_size` of the preset) and one pretraining budget (the same number of updates, clips per update
and crop length, so the same audio hours) for five starting points:

- `none`: a randomly initialised encoder (the no-pretraining baseline);
- `simclr-utterance`, `simclr-frame`: `recipes/pretrain_simclr.py --granularity utterance|frame`;
- `wav2vec2`: `recipes/pretrain_wav2vec2.py`;
- `hubert`: `recipes/pretrain_hubert.py --iterations 2`; its budget of U updates is split over the two iterations
  (`hubert_iteration_1_share` of U on MFCC k-means labels, the rest on labels from the iteration-1 model: half each
  in the `tiny` and `cpu` presets, 3/4 + 1/4 in `cpu-long` and `gpu`, whose iteration 2 continues iteration 1's
  encoder (`--continue_iterations`) where the `tiny` and `cpu` presets train it from scratch as in the paper §IV-C),
  plus the labelling stages, which the other objectives do not need.

Each objective keeps its recipe's own peak learning rate (SimCLR 5e-4, wav2vec 2.0 1e-3, HuBERT 2e-3) and warm-up.
Then, per objective and seed:

- speech recognition: `recipes/finetune_asr.py` (full fine-tuning, CTC on characters, the recipe's fairseq-style
  low-resource defaults: frozen feature encoder, encoder frozen for the first quarter of the updates, SpecAugment)
  on a speaker-balanced subset of 10 minutes and of 60 minutes of the `synthetic-librispeech` train split (the
  seed chooses the subset; with one seed the 10-minute subset lies inside the 60-minute one). Reported: test WER
  and CER (greedy decoding, no language model). The test split has speakers and sentences no training split has.
- keyword spotting (`synthetic-speech-commands`, 12 classes) and prosody (`synthetic-prosody`, 4 classes):
  `recipes/finetune_audio_classification.py --probe` on the whole train split. The probe is the SUPERB protocol
  (Yang et al. 2021): the encoder frozen, only a softmax-weighted sum of its layers and the classifier train. Chosen
  over full fine-tuning because it measures what pretraining put into the representation rather than what the
  fine-tuning adds, and because the frozen encoder needs no backward pass (cheap enough for both seeds on CPU).

Every number is reported per seed, with the mean, the sample standard deviation and the range over the seeds. The
target of the project: the best pretrained model at 10 minutes of labels reaches a test WER at least 30% lower
(relative) than no pretraining with the same 10 minutes. The report says whether it did, and the same for CER; it is
honest either way.

Every sub-run writes into `--runs_dir/<preset>/<name>/` and, when it finishes, `benchmark_run.json` there; a rerun
skips every sub-run that has it, so an interrupted benchmark resumes (an interrupted sub-run resumes from its newest
checkpoint, through the recipes' own resume). Results: `benchmarks/results/label_efficiency.json`, `.md` (the table
the README shows) and `.png` (test WER and CER against labeled minutes, one line per objective) for `--preset cpu`;
`label_efficiency_{preset}.*` for the other presets.

Presets (`--preset`):

- `smoke`: tiny corpora (`TINY_PARAMS`), a handful of updates; checks the orchestration end to end in minutes.
- `tiny`: the `tiny` encoder on the default corpora, fixed budgets; 47 minutes on 2 CPU cores (budget below; it was
  called `cpu` when measured, `benchmarks/results/label_efficiency_tiny.*`).
- `cpu`: the compute-shaped `cpu` encoder (5.8 M parameters, `hf_speech_cl.presets`), pretraining on the 10-h
  `large` configuration of `synthetic-librispeech` (400 updates of 8 clips cropped to at most 4 s: 2.6 h of audio
  per objective), ASR fine-tuning on 10-minute (2 seeds) and 60-minute (1 seed) subsets of its train split until
  validation CER stops improving (2 evaluations of every 100 updates without a lower one, counted from update 300
  since the frozen-encoder quarter and the CTC plateau come first; cap 500; the best update's model scored), the
  phone probe of every pretrained encoder (layers 0, 3 and 6) and the PNMI of HuBERT's labels in the report.
  Measured 2026-12-03 with `--tasks asr`, before the patience counted from update 300: 170 min wall on 2 cores
  (about 40 of them shared with a test run), 312.6 min of sub-runs; `benchmarks/results/label_efficiency.*`.
  Measured 2026-12-04 with `--tasks asr --label_minutes 10 --objectives none,simclr-frame,wav2vec2,hubert`: 113.8
  min wall (about 35 shared with a test run), 215.2 min of sub-runs (pretraining 33-50 min each with its phone
  probe, fine-tunes 9-18 min, all to the cap); `benchmarks/results/label_efficiency_10min.*`.
- `cpu-long`: the `cpu` preset at a budget where the 1500-update measurements of `README.md` say pretraining
  starts to pay (HuBERT iteration 1 still improving the phone probe at 2000 updates, its 10-minute fine-tune still
  improving at 1500 while the baseline had saturated by 500): 4000 pretraining updates of 8 x 4 s per objective
  (up to 35.6 h of audio, the `gpu` preset's budget; HuBERT 3000 updates on MFCC labels, then 1000 on
  iteration 1's), ASR to early stopping (every 250 updates,
  patience 3 counted from update 1000, cap 3000), a checkpoint every 250 updates of every sub-run. About 8-10 h
  wall on 2 cores by the measured rates (1.0 s per one-thread update of 8 x 4 s, SimCLR about twice that): more than
  one session, so it is made to be killed and rerun; each rerun skips the finished sub-runs and resumes the others
  from their newest checkpoint. `benchmarks/results/label_efficiency_cpu-long.*`.
- `gpu`: the `gpu` encoder (29 M parameters, the `cpu` shape scaled), the same `large` corpus, 1000 pretraining
  updates of 32 x 4 s (up to 35.6 h of audio per objective), ASR to early stopping (every 100 updates, patience 3
  counted from update 500, cap 1000, batch 16), bf16, 4 sub-runs at a time sharing the GPU and the 16 cores.
  Meant to fit 9 minutes on an H200, but its sizes are a guess, not a measurement: no GPU has run it yet.
  `--preset gpu --smoke` checks its orchestration on a CPU.

Budget of `--preset tiny` (then `cpu`), measured 2026-11-22 on the 2-core AMD EPYC machine (`benchmarks/results/
label_efficiency.json`): two sub-runs at a time (`jobs=2`), each a process with one torch thread; 47.4 min wall.

    sub-run (cpu preset sizes)                                   wall s each   count   sum s
    pretrain wav2vec 2.0: 250 updates x 8 clips x 2 s crops           164          1     164
    pretrain SimCLR utterance / frame (2 augmented views)         321 / 283        2     604
    pretrain HuBERT: 2 x 125 updates + k-means labelling twice        265          1     265
    ASR no pretraining: 300 updates x 8 (the feature encoder
      trains too) + test decoding (267 utterances)                    337          4    1348
    ASR from a pretrained encoder (feature encoder frozen)            131         16    2091
    keyword-spotting probe, 200 updates x 8 (1-s clips)                28         10     283
    prosody probe, 200 updates x 8                                     46         10     458
    total                                                                        44    5213 = 87 min of sub-runs

Two one-thread processes keep both cores busy (the small convolutions of the tiny model scale poorly over threads),
so the 87 minutes of sub-runs take 47 minutes, plus ~5 minutes to synthesize the three corpora when they are not
cached yet (speech commands 70 s, prosody 54 s, LibriSpeech 2.5 h ~150 s with 2 workers). The log reports every
sub-run's start and end; each child's own output is in `<runs_dir>/<preset>/<name>.log`. At these sizes every
fine-tune without pretraining ends in the CTC blank-only plateau (test CTC loss 2.93, every utterance decoded empty,
WER = CER = 100%) and no model gets a word right (WER 100%), so the report also gives CER and the test CTC loss per
character, which move first.

Examples:
    python benchmarks/label_efficiency.py --preset cpu
    python benchmarks/label_efficiency.py --preset smoke --objectives none,wav2vec2 --tasks asr
    python benchmarks/label_efficiency.py --preset tiny --report_only     # rebuild the report from finished runs
    python benchmarks/label_efficiency.py --preset gpu                    # on a machine with a CUDA GPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    atomic_write_text,
    hardware_info,
    load_recipe,
    load_results,
    write_results,
)

__all__ = ["OBJECTIVES", "PRESETS", "TASKS", "Preset", "SubRun", "main", "plan_runs", "summarize"]

logger = logging.getLogger("label_efficiency")

RUN_RECORD = "benchmark_run.json"
BENCHMARK_CLOCK = "benchmark.wall_time.json"  # in the preset's runs folder: wall time over every invocation
LIBRISPEECH, SPEECH_COMMANDS, PROSODY = "synthetic-librispeech", "synthetic-speech-commands", "synthetic-prosody"

#: Objective name -> (pretraining recipe, its extra flags); `none` is the no-pretraining baseline.
OBJECTIVES: dict[str, tuple[str, list[str]] | None] = {
    "none": None,
    "simclr-utterance": ("pretrain_simclr", ["--granularity", "utterance"]),
    "simclr-frame": ("pretrain_simclr", ["--granularity", "frame"]),
    "wav2vec2": ("pretrain_wav2vec2", []),
    "hubert": ("pretrain_hubert", ["--iterations", "2"]),
}
#: Downstream task -> (recipe, its task flags, corpus). Reported: test WER/CER/CTC loss (asr), accuracy/macro-F1.
TASKS: dict[str, tuple[str, list[str], str]] = {
    "asr": ("finetune_asr", [], LIBRISPEECH),
    "keyword_spotting": ("finetune_audio_classification", ["--task", "keyword_spotting", "--probe"], SPEECH_COMMANDS),
    "prosody": ("finetune_audio_classification", ["--task", "emotion_recognition", "--probe"], PROSODY),
}
#: every ASR fine-tune also decodes with the lexicon beam search + word bigram LM (finetune_asr --lm_decoding)
LM_DECODING = ("--lm_decoding", "true")
TARGET_RELATIVE_REDUCTION = 0.30  # the project's target: >= 30% lower relative test WER at 10 minutes of labels


@dataclass(frozen=True)
class Preset:
    """Sizes of one benchmark configuration. Durations in seconds, label amounts in minutes.

    Attributes:
        description: one line for the report.
        model_size: encoder preset of every model (`hf_speech_cl.presets`: tiny, small, base).
        corpus_kwargs: size parameters per offline corpus (`--dataset_kwargs`); empty = the corpus defaults.
        pretrain_updates: optimizer updates per objective (HuBERT: split over its 2 iterations, `hubert_iteration_1_share`).
        pretrain_batch_size: clips per update (SimCLR turns each into two augmented views).
        pretrain_crop_s: random crop of every pretraining clip, the same for every objective (the recipes' defaults
            differ: 3 s SimCLR, 4 s the others). The cpu preset uses 2 s: twice the updates per CPU second at 4 s
            (SimCLR's frame-level NT-Xent even grows with the square of the frames); COLA (Saeed et al. 2021)
            contrasts ~1 s segments.
        pretrain_eval_samples: validation clips each pretraining scores at its end (loss, accuracy; cheap).
        label_minutes: labeled minutes of the ASR fine-tunes (Libri-light's 10 min and 1 h).
        asr_updates / asr_batch_size: updates and clips per update of every ASR fine-tune (same for every label
            amount, as fairseq's base_10m/base_1h configs use 13k updates for both).
        cls_updates / cls_batch_size: the same for the keyword-spotting and prosody probes.
        seeds: fine-tuning seeds (each also draws the labeled subset). Pretraining uses `pretrain_seed`.
        pretrain_seed: seed of every pretraining run.
        mixed_precision: `bf16` on GPU, None on CPU (fp32).
        dataloader_num_workers: audio-decoding worker processes per data loader.
        eval_batch_size: clips per test batch.
        logging_steps: logging interval of the recipes (updates).
        needs_cuda: refuse to run without a CUDA device.
        hubert_flags: extra flags of `recipes/pretrain_hubert.py` (K per iteration on tiny corpora).
        hubert_continue_iterations: HuBERT's iteration 2 starts from iteration 1's encoder (`--continue_iterations`)
            instead of a fresh model: where it gets a quarter of the budget, a fresh model with so few updates would
            probe far below the iteration-1 model its labels come from.
        hubert_iteration_1_share: share of `pretrain_updates` HuBERT's iteration 1 (MFCC labels) trains; iteration 2
            gets the rest. 0.5 splits evenly; 0.75 for the budgets where iteration 1 can learn more than its MFCC
            targets (the cpu encoder's phone probe passed MFCC only after ~3000 updates of 8 x 4 s, README), since
            re-clustering a layer that knows less than MFCC cannot give better labels.
        pretrain_flags: extra flags of every pretraining recipe (e.g. `--phone_probe_layers all`; the probe's
            default is the Transformer's input, middle and last layer).
        asr_flags: extra flags of every `recipes/finetune_asr.py` run.
        corpus_configs: named size per offline corpus (`--dataset_config`, `CORPUS_CONFIGS`), e.g. `large`.
        asr_eval_steps: with `early_stopping_patience`, validation CER every this many ASR updates.
        asr_eval_samples: validation utterances scored at each of those evaluations (None: all).
        asr_min_updates: with `early_stopping_patience`, no ASR fine-tune stops before this update
            (`--early_stopping_min_steps`): CTC sits on a plateau of blanks and common characters for hundreds of
            updates, and a pretrained encoder is frozen for the first quarter, so an early best says little.
        early_stopping_patience: ASR fine-tunes stop after this many evaluations without a lower validation CER
            and the best update's model is scored on the test split (`asr_updates` is then the cap). None: a fixed
            budget of `asr_updates`, the last model scored.
        single_seed_minutes: label amounts fine-tuned with the first seed only (the cost of a 1-hour fine-tune
            buys a second seed at 10 minutes, where the spread matters most).
        save_every: checkpoint interval of every sub-run (updates); None: a quarter of each pretraining and half of
            each fine-tune. A killed benchmark loses at most this many updates per running sub-run.
        jobs: sub-runs at a time, each in its own process with `cores // jobs` torch threads (`--jobs`). Two
            one-thread processes use 2 cores better than one two-thread process: small convolutions scale poorly
            over threads.
    """

    description: str
    model_size: str
    corpus_kwargs: dict[str, dict[str, Any]]
    pretrain_updates: int
    pretrain_batch_size: int
    pretrain_crop_s: float
    pretrain_eval_samples: int
    label_minutes: tuple[float, ...]
    asr_updates: int
    asr_batch_size: int
    cls_updates: int
    cls_batch_size: int
    seeds: tuple[int, ...]
    pretrain_seed: int = 0
    mixed_precision: str | None = None
    dataloader_num_workers: int = 0
    eval_batch_size: int = 16
    logging_steps: int = 10
    needs_cuda: bool = False
    hubert_flags: tuple[str, ...] = ()
    hubert_continue_iterations: bool = False
    hubert_iteration_1_share: float = 0.5
    pretrain_flags: tuple[str, ...] = ()
    asr_flags: tuple[str, ...] = ()
    corpus_configs: dict[str, str] = field(default_factory=dict)
    asr_eval_steps: int | None = None
    asr_eval_samples: int | None = None
    early_stopping_patience: int | None = None
    asr_min_updates: int = 0
    single_seed_minutes: tuple[float, ...] = ()
    save_every: int | None = None
    jobs: int = 1


def _tiny_params() -> dict[str, dict[str, Any]]:
    from hf_speech_cl.data.synthetic import TINY_PARAMS

    return {name: dict(params) for name, params in TINY_PARAMS.items()}


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        description="orchestration check: tiny corpora, tiny encoder, a handful of updates (numbers meaningless)",
        model_size="tiny",
        corpus_kwargs=_tiny_params(),
        pretrain_updates=2,
        pretrain_batch_size=4,
        pretrain_crop_s=1.5,
        pretrain_eval_samples=4,
        label_minutes=(0.5, 1.0),
        asr_updates=2,
        asr_batch_size=2,
        asr_eval_steps=1,
        asr_eval_samples=4,
        early_stopping_patience=1,
        asr_min_updates=2,
        single_seed_minutes=(1.0,),
        cls_updates=2,
        cls_batch_size=8,
        seeds=(0, 1),
        eval_batch_size=8,
        logging_steps=1,
        hubert_flags=("--num_clusters", "10,20", "--kmeans_sample_fraction", "1.0"),
        asr_flags=(*LM_DECODING, "--lm_weights", "1", "--word_scores", "0", "--lexicon_word_list", "none"),
    ),
    "tiny": Preset(
        description="tiny encoder (<1 M parameters), default offline corpora (2 h of synthetic speech), 2 CPU cores",
        model_size="tiny",
        corpus_kwargs={},
        pretrain_updates=250,
        pretrain_batch_size=8,
        pretrain_crop_s=2.0,
        pretrain_eval_samples=64,
        label_minutes=(10.0, 60.0),
        asr_updates=300,
        asr_batch_size=8,
        cls_updates=200,
        cls_batch_size=8,
        seeds=(0, 1),
        jobs=2,
    ),
    "cpu": Preset(
        description=(
            "cpu encoder (5.8 M parameters, front end no costlier than its Transformer), pretraining on the 10-h "
            "`large` synthetic-librispeech, fine-tuning to early stopping on validation CER, 2 CPU cores"
        ),
        model_size="cpu",
        corpus_kwargs={},
        corpus_configs={LIBRISPEECH: "large"},
        pretrain_updates=400,
        pretrain_batch_size=8,
        pretrain_crop_s=4.0,
        pretrain_eval_samples=64,
        label_minutes=(10.0, 60.0),
        asr_updates=500,
        asr_batch_size=8,
        asr_eval_steps=100,
        asr_eval_samples=100,
        early_stopping_patience=2,
        asr_min_updates=300,
        single_seed_minutes=(60.0,),
        cls_updates=200,
        cls_batch_size=8,
        seeds=(0, 1),
        logging_steps=25,
        jobs=2,
        asr_flags=LM_DECODING,
    ),
    "cpu-long": Preset(
        description=(
            "cpu encoder, up to the gpu preset's 35.6 h of pretraining audio per objective (4000 updates of 8 x 4 s), "
            "fine-tuning to early stopping (cap 3000), 2 CPU cores, run over several sessions (resumable)"
        ),
        model_size="cpu",
        corpus_kwargs={},
        corpus_configs={LIBRISPEECH: "large"},
        pretrain_updates=4000,
        pretrain_batch_size=8,
        pretrain_crop_s=4.0,
        pretrain_eval_samples=64,
        label_minutes=(10.0, 60.0),
        asr_updates=3000,
        asr_batch_size=8,
        asr_eval_steps=250,
        asr_eval_samples=100,
        early_stopping_patience=3,
        asr_min_updates=1000,
        single_seed_minutes=(60.0,),
        cls_updates=200,
        cls_batch_size=8,
        seeds=(0, 1),
        logging_steps=25,
        save_every=250,
        hubert_iteration_1_share=0.75,
        hubert_continue_iterations=True,
        asr_flags=LM_DECODING,
        jobs=2,
    ),
    "gpu": Preset(
        description=(
            "gpu encoder (29 M parameters, the cpu shape scaled), pretraining on the 10-h `large` "
            "synthetic-librispeech, fine-tuning to early stopping on validation CER, bf16, 4 sub-runs at a time on "
            "one CUDA GPU (meant for <= 9 min on an H200 with 16 cores; sizes a guess, not run on one yet)"
        ),
        model_size="gpu",
        corpus_kwargs={},
        corpus_configs={LIBRISPEECH: "large"},
        pretrain_updates=1000,
        pretrain_batch_size=32,
        pretrain_crop_s=4.0,
        pretrain_eval_samples=256,
        label_minutes=(10.0, 60.0),
        asr_updates=1000,
        asr_batch_size=16,
        asr_eval_steps=100,
        asr_eval_samples=200,
        early_stopping_patience=3,
        asr_min_updates=500,
        single_seed_minutes=(60.0,),
        cls_updates=1000,
        cls_batch_size=32,
        seeds=(0, 1),
        mixed_precision="bf16",
        dataloader_num_workers=2,
        eval_batch_size=32,
        logging_steps=50,
        hubert_iteration_1_share=0.75,
        hubert_continue_iterations=True,
        asr_flags=LM_DECODING,
        jobs=4,
        needs_cuda=True,
    ),
}


@dataclass
class SubRun:
    """One recipe call. `argv` is a template: `{out}` is the sub-run's folder, `{runs}` the preset's runs folder."""

    name: str
    kind: str  # "pretrain" or a key of TASKS
    objective: str
    recipe: str
    argv: list[str]
    seed: int | None = None
    label_minutes: float | None = None
    depends_on: str | None = None

    def resolved_argv(self, runs_dir: Path) -> list[str]:
        out = runs_dir / self.name
        return [a.replace("{out}", str(out)).replace("{runs}", str(runs_dir)) for a in self.argv]


@dataclass
class RunRecord:
    """What `benchmark_run.json` holds for a finished sub-run."""

    name: str
    kind: str
    objective: str
    recipe: str
    argv: list[str]
    seed: int | None
    label_minutes: float | None
    metrics: dict[str, Any]
    wall_time_s: float  # over all attempts (a sub-run killed with its benchmark and resumed by a rerun)
    finished_at: str
    train: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1


class AttemptClock:
    """Wall time of a piece of work over all its attempts, for work that is killed and rerun (`cpu-long`).

    A JSON file (`{"attempts": n, "total_s": t}`) is rewritten atomically when the clock starts, every `every_s`
    seconds while it runs and when it stops; a new attempt starts counting from the file's total. A killed attempt
    thus counts up to its last write (at most `every_s` seconds are lost per kill).

    Args:
        path: the JSON file (its folder is created).
        every_s: heartbeat interval in seconds.
    """

    def __init__(self, path: Path, every_s: float = 30.0):
        self.path = path
        previous = _read_json(path) if path.is_file() else {}
        self.before_s = float(previous.get("total_s", 0.0))
        self.attempts = int(previous.get("attempts", 0)) + 1
        self.every_s = every_s
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"clock:{path.name}", daemon=True)

    @property
    def total_s(self) -> float:
        """Seconds over all attempts, this one so far included."""
        return self.before_s + time.perf_counter() - self._start

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps({"attempts": self.attempts, "total_s": round(self.total_s, 1)}))

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write()

    def __enter__(self) -> AttemptClock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write()


# --------------------------------------------------------------------------------------------------- the plan
def _dataset_kwargs(preset: Preset, corpus: str) -> list[str]:
    kwargs = preset.corpus_kwargs.get(corpus)
    argv = ["--dataset_kwargs", json.dumps(kwargs, sort_keys=True)] if kwargs else []
    config = preset.corpus_configs.get(corpus)
    return [*argv, "--dataset_config", config] if config else argv


def _common(preset: Preset, updates: int, seed: int, save_every: int) -> list[str]:
    argv = [
        "--output_dir", "{out}",
        "--model_size", preset.model_size,
        "--max_steps", str(updates),
        "--seed", str(seed),
        "--logging_steps", str(min(preset.logging_steps, updates)),
        "--save_steps", str(max(1, save_every)),
        "--dataloader_num_workers", str(preset.dataloader_num_workers),
    ]  # fmt: skip
    if preset.mixed_precision:
        argv += ["--mixed_precision", preset.mixed_precision]
    return argv


def hubert_iteration_updates(total: int, share: float) -> tuple[int, int]:
    """HuBERT's updates of iterations 1 and 2 out of `total`: `share` of it for iteration 1, at least 1 each (and
    never more than `total` together when `total` >= 2)."""
    first = max(1, min(total - 1, round(total * share)))
    return first, max(1, total - first)


def pretraining_run(preset: Preset, objective: str) -> SubRun:
    recipe, flags = OBJECTIVES[objective]
    updates = preset.pretrain_updates
    if objective == "hubert":  # the budget is split over the two iterations: --max_steps counts per iteration
        first, second = hubert_iteration_updates(updates, preset.hubert_iteration_1_share)
        updates = first
        flags = [*flags, *preset.hubert_flags, "--iteration_max_steps", f"{first},{second}"]
        if preset.hubert_continue_iterations:
            flags.append("--continue_iterations")
    argv = [
        *_common(preset, updates, preset.pretrain_seed, preset.save_every or updates // 4),
        *flags,
        *preset.pretrain_flags,
        "--per_device_train_batch_size", str(preset.pretrain_batch_size),
        "--max_train_crop_s", str(preset.pretrain_crop_s),
        "--max_eval_samples", str(preset.pretrain_eval_samples),
        *_dataset_kwargs(preset, LIBRISPEECH),
    ]  # fmt: skip
    return SubRun(name=f"pretrain-{objective}", kind="pretrain", objective=objective, recipe=recipe, argv=argv)


def finetuning_run(preset: Preset, objective: str, task: str, seed: int, minutes: float | None = None) -> SubRun:
    recipe, flags, corpus = TASKS[task]
    pretrained = OBJECTIVES[objective] is not None
    source = f"{{runs}}/pretrain-{objective}" if pretrained else "none"
    # no model selection: the last update is scored on the test split
    selection = ["--eval_split", "none"]
    if task == "asr":
        updates, batch = preset.asr_updates, preset.asr_batch_size
        name = f"asr-{objective}-{minutes:g}min-seed{seed}"
        flags = [*flags, *preset.asr_flags, "--train_minutes", f"{minutes:g}", "--num_examples", "3"]
        if preset.early_stopping_patience:  # train until validation CER stops improving; score the best update
            selection = [
                "--eval_split", "validation",
                "--eval_steps", str(preset.asr_eval_steps),
                "--metric_for_best_model", "cer",
                "--early_stopping_patience", str(preset.early_stopping_patience),
                "--early_stopping_min_steps", str(preset.asr_min_updates),
                "--load_best_model_at_end",
            ]  # fmt: skip
            if preset.asr_eval_samples:
                selection += ["--max_eval_samples", str(preset.asr_eval_samples)]
    else:
        updates, batch = preset.cls_updates, preset.cls_batch_size
        name = f"{task.replace('_', '-')}-{objective}-seed{seed}"
    argv = [
        *_common(preset, updates, seed, preset.save_every or updates // 2),
        *flags,
        "--model_name_or_path", source,
        "--per_device_train_batch_size", str(batch),
        "--eval_batch_size", str(preset.eval_batch_size),
        *selection,
        *_dataset_kwargs(preset, corpus),
    ]  # fmt: skip
    return SubRun(
        name=name,
        kind=task,
        objective=objective,
        recipe=recipe,
        argv=argv,
        seed=seed,
        label_minutes=minutes,
        depends_on=f"pretrain-{objective}" if pretrained else None,
    )


def plan_runs(preset: Preset, objectives: list[str], tasks: list[str], seeds: list[int]) -> list[SubRun]:
    """Every sub-run, pretraining first (the fine-tunes need its output), each task's runs grouped; ASR in rounds of
    one (label amount, seed) for every objective (10 min seed 0, 10 min seed 1, ..., 60 min seed 0), so a benchmark
    stopped early still compares every objective on the rounds it finished."""
    runs = [pretraining_run(preset, o) for o in objectives if OBJECTIVES[o] is not None]
    for task in tasks:
        if task == "asr":
            for m in preset.label_minutes:
                for seed in seeds[:1] if m in preset.single_seed_minutes else seeds:
                    runs += [finetuning_run(preset, objective, task, seed, m) for objective in objectives]
            continue
        for objective in objectives:
            for seed in seeds:
                runs.append(finetuning_run(preset, objective, task, seed))
    return runs


# -------------------------------------------------------------------------------------------------- running
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _pretraining_summary(out: Path) -> dict[str, Any]:
    """Updates, audio seen and training time of a pretraining output (HuBERT: summed over its iterations)."""
    results = [_read_json(p) for p in sorted(out.glob("iteration-*/model/train_results.json"))]
    if not results:
        results = [_read_json(out / "train_results.json")]
    probe = _read_json(out / "phone_probe.json")
    probe_accuracy = {r.get("name"): r.get("accuracy") for r in probe.get("results", [])}
    label_quality = {}  # HuBERT: PNMI etc. of each iteration's labels on the held-out split (or train)
    for folder in sorted(out.glob("iteration-*/metrics")):
        per_split = {p.name: _read_json(p / "metrics.json") for p in sorted(folder.iterdir()) if p.is_dir()}
        if per_split:
            split = "validation" if "validation" in per_split else sorted(per_split)[0]
            label_quality[folder.parent.name] = {"split": split, **per_split[split]}
    return {
        "phone_probe": probe_accuracy | {"majority": probe.get("majority_accuracy")} if probe_accuracy else None,
        "label_quality": label_quality or None,
        "updates": sum(r.get("global_step", 0) for r in results),
        "audio_hours": sum(r.get("audio_seconds", 0.0) for r in results) / 3600,
        "train_wall_time_s": sum(r.get("wall_time_s", 0.0) for r in results),
        "nonfinite_updates": sum(r.get("nonfinite_updates", 0) for r in results),
        "first_metrics": [r.get("first_metrics", {}) for r in results],
        "last_metrics": [r.get("last_metrics", {}) for r in results],
        "eval_metrics": [r.get("eval_metrics", {}) for r in results],
    }


def execute(run: SubRun, runs_dir: Path, *, keep_checkpoints: bool = False) -> RunRecord:
    """Run `run` through its recipe's `main(argv)` unless its record exists; return the record.

    Raises:
        ValueError: the folder holds a finished run made with other arguments (the preset changed).
    """
    out = runs_dir / run.name
    record_path = out / RUN_RECORD
    if record_path.is_file():
        record = RunRecord(**json.loads(record_path.read_text()))
        if record.argv != run.argv:
            raise ValueError(
                f"{out} holds a finished run made with other arguments:\n  then: {shlex.join(record.argv)}\n  now:  "
                f"{shlex.join(run.argv)}\nDelete the folder to redo it, or pass another --runs_dir."
            )
        logger.info("%s: finished before (%.0f s), skipped", run.name, record.wall_time_s)
        return record
    argv = run.resolved_argv(runs_dir)
    logger.info("%s: %s %s", run.name, run.recipe, shlex.join(argv))
    # beside the run's folder, not in it: the recipes refuse to start in a non-empty folder that is not their run
    with AttemptClock(runs_dir / f"{run.name}.wall_time.json") as clock:
        if clock.attempts > 1:
            logger.info("%s: attempt %d (%.0f s before)", run.name, clock.attempts, clock.before_s)
        summary = load_recipe(run.recipe).main(argv)
    wall = clock.total_s
    if run.kind == "pretrain":
        train = _pretraining_summary(out)
        metrics: dict[str, Any] = {}
    else:
        train = _read_json(out / "train_results.json")
        metrics = {k: v for k, v in (summary or {}).items() if isinstance(v, int | float)}
    record = RunRecord(
        name=run.name,
        kind=run.kind,
        objective=run.objective,
        recipe=run.recipe,
        argv=run.argv,
        seed=run.seed,
        label_minutes=run.label_minutes,
        metrics=metrics,
        wall_time_s=round(wall, 2),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        train=train,
        attempts=clock.attempts,
    )
    atomic_write_text(record_path, json.dumps(dataclasses.asdict(record), indent=2, default=float))
    if not keep_checkpoints:  # the final model stays; resumable state is only needed while the run is unfinished
        for checkpoint in [*out.glob("checkpoint-*"), *out.glob("iteration-*/model/checkpoint-*")]:
            shutil.rmtree(checkpoint, ignore_errors=True)
    logger.info("%s: done in %.0f s %s", run.name, wall, {k: round(v, 4) for k, v in metrics.items()})
    gc.collect()  # the next recipe builds its own model and optimizer in this process
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _child_argv(args: argparse.Namespace, run: SubRun, threads: int) -> list[str]:
    """This script's command line that runs only `run` (same plan, same folders) with `threads` torch threads."""
    argv = [
        sys.executable, str(Path(__file__).resolve()),
        "--preset", args.preset,
        "--objectives", ",".join(args.objectives),
        "--tasks", ",".join(args.tasks),
        "--seeds", ",".join(str(s) for s in args.seeds),
        "--label_minutes", ",".join(f"{m:g}" for m in args.settings.label_minutes),
        "--runs_dir", str(args.runs_dir),
        "--torch_threads", str(threads),
        "--only", run.name,
    ]  # fmt: skip
    return argv + (["--keep_checkpoints"] if args.keep_checkpoints else []) + (["--smoke"] if args.smoke else [])


def run_parallel(runs: list[SubRun], runs_dir: Path, args: argparse.Namespace, start: float) -> list[RunRecord]:
    """Run `runs` `args.jobs` at a time, each in a child process of this script (`--only`), a fine-tune only once the
    pretraining it starts from has finished. Each child's output goes to `runs_dir/<name>.log`.

    Returns:
        The records of the finished sub-runs, in plan order.

    Raises:
        RuntimeError: after every runnable sub-run has ended, if any failed (naming them and their logs).
    """
    import subprocess

    threads = args.threads_per_job
    runs_dir.mkdir(parents=True, exist_ok=True)
    pending = list(runs)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    done: set[str] = set()
    failed: set[str] = set()
    for run in list(pending):  # finished before: checked (same arguments) and skipped here, no child needed
        if (runs_dir / run.name / RUN_RECORD).is_file():
            execute(run, runs_dir)
            done.add(run.name)
            pending.remove(run)
    while pending or running:
        for run in list(pending):
            if len(running) >= args.jobs:
                break
            if run.depends_on in failed:
                logger.error("%s: not run, its pretraining %s failed", run.name, run.depends_on)
                failed.add(run.name)
                pending.remove(run)
                continue
            if (
                run.depends_on is not None
                and run.depends_on not in done
                and any(r.name == run.depends_on for r in runs)
            ):
                continue
            log = open(runs_dir / f"{run.name}.log", "ab")  # noqa: SIM115 (closed when the child ends)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            child = subprocess.Popen(_child_argv(args, run, threads), stdout=log, stderr=subprocess.STDOUT, env=env)
            running[run.name] = (child, log, time.perf_counter())
            pending.remove(run)
            logger.info("%s: started (%d running, %d waiting; %.1f min so far; log %s)", run.name, len(running),
                        len(pending), (time.perf_counter() - start) / 60, runs_dir / f"{run.name}.log")  # fmt: skip
        time.sleep(1.0)
        for name, (child, log, began) in list(running.items()):
            if child.poll() is None:
                continue
            log.close()
            del running[name]
            if child.returncode == 0 and (runs_dir / name / RUN_RECORD).is_file():
                done.add(name)
                logger.info("%s: finished in %.1f min (%.1f min so far)", name, (time.perf_counter() - began) / 60,
                            (time.perf_counter() - start) / 60)  # fmt: skip
            else:
                failed.add(name)
                logger.error("%s: FAILED (exit %s); see %s", name, child.returncode, runs_dir / f"{name}.log")
    records = [RunRecord(**json.loads((runs_dir / r.name / RUN_RECORD).read_text())) for r in runs if r.name in done]
    if failed:
        raise RuntimeError(f"{len(failed)} sub-run(s) failed: {sorted(failed)}; logs in {runs_dir}")
    return records


def build_corpora(preset: Preset, tasks: list[str]) -> dict[str, float]:
    """Build (or find) the offline corpora the runs need, before any timing; seconds each took."""
    from hf_speech_cl.data.synthetic import load_corpus

    seconds = {}
    for corpus in dict.fromkeys([LIBRISPEECH, *(TASKS[t][2] for t in tasks)]):
        start = time.perf_counter()
        load_corpus(corpus, config=preset.corpus_configs.get(corpus), **preset.corpus_kwargs.get(corpus, {}))
        seconds[corpus] = round(time.perf_counter() - start, 2)
        logger.info("corpus %s ready in %.1f s", corpus, seconds[corpus])
    return seconds


_SECONDS_BY_KIND: dict[str, list[float]] = {}


def log_projection(record: RunRecord, remaining: list[SubRun], elapsed_s: float) -> None:
    """Log the projected end of the benchmark: each remaining sub-run costs the mean of the finished ones of its kind
    (`asr` split by pretrained or not: without pretraining the feature encoder trains too, ~3x the cost)."""

    def kind(kind: str, objective: str) -> str:
        return f"{kind}-{'none' if objective == 'none' else 'pretrained'}" if kind == "asr" else kind

    _SECONDS_BY_KIND.setdefault(kind(record.kind, record.objective), []).append(record.wall_time_s)
    known = {k: statistics.fmean(v) for k, v in _SECONDS_BY_KIND.items()}
    fallback = statistics.fmean([s for v in _SECONDS_BY_KIND.values() for s in v])
    left = sum(known.get(kind(r.kind, r.objective), fallback) for r in remaining)
    logger.info(
        "elapsed %.1f min; %d sub-runs left, projected %.1f min more (total %.1f min)",
        elapsed_s / 60, len(remaining), left / 60, (elapsed_s + left) / 60,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- reporting
def _spread(values: dict[int, float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of per-seed `values` (std None with one seed)."""
    xs = [v for v in values.values() if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "per_seed": values}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "min": min(xs),
        "max": max(xs),
        "per_seed": {str(k): v for k, v in values.items()},
    }


def summarize(records: list[RunRecord], objectives: list[str], label_minutes: tuple[float, ...]) -> dict[str, Any]:
    """Per objective: pretraining budget spent, ASR WER/CER per labeled minutes, keyword and prosody accuracy (each
    as `_spread` over seeds); and whether the target was met at the smallest label amount."""
    by_objective: dict[str, Any] = {}
    for objective in objectives:
        mine = [r for r in records if r.objective == objective]
        entry: dict[str, Any] = {"pretraining": None, "asr": {}, "keyword_spotting": None, "prosody": None}
        for r in mine:
            if r.kind == "pretrain":
                keys = (
                    "updates",
                    "audio_hours",
                    "train_wall_time_s",
                    "nonfinite_updates",
                    "phone_probe",
                    "label_quality",
                )
                entry["pretraining"] = {k: r.train.get(k) for k in keys} | {"wall_time_s": r.wall_time_s}
        for minutes in label_minutes:
            runs = [r for r in mine if r.kind == "asr" and r.label_minutes == minutes]
            if runs:
                entry["asr"][f"{minutes:g}"] = {
                    metric: _spread({r.seed: r.metrics.get(f"test_{metric}") for r in runs})
                    for metric in ("wer", "cer", "lm_wer", "lm_cer", "loss", "blank_fraction")
                } | {
                    # updates trained (early stopping: where it stopped) and the update whose model was scored
                    "updates": _spread({r.seed: r.train.get("global_step") for r in runs}),
                    "scored_update": _spread(
                        {r.seed: r.train.get("model_step", r.train.get("global_step")) for r in runs}
                    ),
                }
        for task in ("keyword_spotting", "prosody"):
            runs = [r for r in mine if r.kind == task]
            if runs:
                entry[task] = {
                    m: _spread({r.seed: r.metrics.get(f"test_{m}") for r in runs}) for m in ("accuracy", "macro_f1")
                }
        by_objective[objective] = entry
    return {"objectives": by_objective, "target": _target(by_objective, label_minutes)}


def _target(by_objective: dict[str, Any], label_minutes: tuple[float, ...]) -> dict[str, Any]:
    """Relative reduction of mean test WER (and CER) of the best pretrained objective against `none` at the
    smallest label amount."""
    key = f"{min(label_minutes):g}"

    def mean(objective: str, metric: str) -> float | None:
        return ((by_objective.get(objective) or {}).get("asr", {}).get(key) or {}).get(metric, {}).get("mean")

    result: dict[str, Any] = {
        "label_minutes": min(label_minutes),
        "required_relative_reduction": TARGET_RELATIVE_REDUCTION,
    }
    for metric in ("wer", "cer", "lm_wer"):
        baseline = mean("none", metric)
        candidates = {o: mean(o, metric) for o in by_objective if o != "none" and mean(o, metric) is not None}
        if baseline is None or not candidates:
            result[metric] = None
            continue
        # ties (e.g. every model still at WER 1.0) are broken by the lower test CTC loss
        best = min(candidates, key=lambda o: (candidates[o], mean(o, "loss") or math.inf))
        reduction = (baseline - candidates[best]) / baseline if baseline > 0 else 0.0
        result[metric] = {
            "baseline": baseline,
            "best_objective": best,
            "best": candidates[best],
            "relative_reduction": reduction,
            "met": reduction >= TARGET_RELATIVE_REDUCTION,
        }
    return result


def _fmt(spread: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    """`mean ± std` of a `_spread` (just the mean with one seed, `–` when missing)."""
    if not spread or spread.get("mean") is None:
        return "–"
    text = f"{spread['mean'] * scale:.{digits}f}"
    if spread.get("std") is not None:
        text += f" ± {spread['std'] * scale:.{digits}f}"
    return text


def markdown_report(payload: dict[str, Any]) -> str:
    """The README's table: mean ± sample std over seeds, in percent."""
    summary, preset = payload["summary"], payload["preset_settings"]
    minutes = [f"{m:g}" for m in preset["label_minutes"]]
    head = ["objective", "pretraining (updates / audio h)"]
    probes = [t for t in ("keyword_spotting", "prosody") if t in payload.get("tasks", TASKS)]  # columns of tasks run
    head += [f"{name} {m} min" for m in minutes for name in ("WER", "CER")]
    # beam search + word LM (finetune_asr --lm_decoding), when the preset ran it
    lm = any(
        (entry["asr"].get(m) or {}).get("lm_wer", {}).get("mean") is not None
        for entry in summary["objectives"].values()
        for m in minutes
    )
    if lm:
        head += [f"{name} {m} min" for m in minutes for name in ("LM WER", "LM CER")]
    head += [{"keyword_spotting": "keyword acc.", "prosody": "prosody acc."}[t] for t in probes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for objective, entry in summary["objectives"].items():
        pre = entry["pretraining"]
        cells = [f"`{objective}`", f"{pre['updates']} / {pre['audio_hours']:.2f}" if pre else "–"]
        for m in minutes:
            asr = entry["asr"].get(m, {})
            cells += [_fmt(asr.get("wer"), 100), _fmt(asr.get("cer"), 100)]
        if lm:
            for m in minutes:
                asr = entry["asr"].get(m, {})
                cells += [_fmt(asr.get("lm_wer"), 100), _fmt(asr.get("lm_cer"), 100)]
        cells += [_fmt((entry[t] or {}).get("accuracy"), 100) for t in probes]
        lines.append("| " + " | ".join(cells) + " |")
    # Greedy CTC output stays empty (WER = CER = 100%) until a model leaves the blank-only plateau; the test CTC loss
    # (per character) moves before that and still ranks the objectives.
    loss_head = ["objective"] + [f"{name} {m} min" for m in minutes for name in ("CTC loss", "blank %")]
    loss_lines = ["| " + " | ".join(loss_head) + " |", "|" + "---|" * len(loss_head)]
    for objective, entry in summary["objectives"].items():
        cells = [f"`{objective}`"]
        for m in minutes:
            asr = entry["asr"].get(m, {})
            cells += [_fmt(asr.get("loss"), digits=3), _fmt(asr.get("blank_fraction"), 100, 0)]
        loss_lines.append("| " + " | ".join(cells) + " |")
    # what pretraining put into the encoder before any label: linear phone probe (best layer) and HuBERT label PNMI
    diag_lines = [
        "| objective | phone probe: checkpoint | random init (same config) | MFCC | label PNMI per iteration | "
        "updates trained / scored (ASR, per label amount) |",
        "|---|---|---|---|---|---|",
    ]
    for objective, entry in summary["objectives"].items():
        pre = entry["pretraining"] or {}
        probe = pre.get("phone_probe") or {}
        quality = pre.get("label_quality") or {}
        pnmi = ", ".join(f"{k.split('-')[-1]}: {v.get('pnmi', float('nan')):.3f}" for k, v in quality.items())
        updates = "; ".join(
            f"{m} min: {_fmt(entry['asr'].get(m, {}).get('updates'), digits=0)} / "
            f"{_fmt(entry['asr'].get(m, {}).get('scored_update'), digits=0)}"
            for m in minutes
        )
        cells = [f"`{objective}`"] + [
            f"{100 * probe[k]:.1f}" if probe.get(k) is not None else "–" for k in ("checkpoint", "random", "mfcc")
        ]
        diag_lines.append("| " + " | ".join([*cells, pnmi or "–", updates]) + " |")
    target = summary["target"]
    verdicts = []
    for metric in ("wer", "cer", "lm_wer"):
        t = target.get(metric)
        if t:
            verdicts.append(
                f"{metric.upper().replace('_', ' ')}: best pretrained `{t['best_objective']}` {100 * t['best']:.1f}% vs "
                f"{100 * t['baseline']:.1f}% without pretraining = {100 * t['relative_reduction']:.0f}% relative "
                f"reduction ({'met' if t['met'] else 'NOT met'})"
            )
    hw = payload["hardware"]
    device = hw.get("gpu_name") or f"{hw.get('cpu_count')} x {hw.get('cpu_model')}"
    seeds = ", ".join(str(s) for s in payload["seeds"])
    return "\n".join(
        [
            f"# Label efficiency (`--preset {payload['preset']}`)",
            "",
            f"{preset_line(payload)}. Test split of the offline corpora (unseen speakers and sentences); mean ± "
            f"sample standard deviation over seeds {seeds} (per-seed values in `{payload['name']}.json`), in %. "
            "WER/CER: full CTC fine-tuning on the labeled minutes, greedy decoding, no language model"
            + (
                "; LM WER/CER: the same models decoded by a lexicon beam search with a word bigram LM of the labeled "
                "transcripts, weights tuned on validation (`recipes/decode_asr.py`)."
                if lm
                else "."
            )
            + (
                " Keyword spotting (12 classes) and prosody (4 classes): frozen-encoder probe (SUPERB), whole train "
                "split."
                if probes
                else ""
            ),
            "",
            *lines,
            "",
            "Test CTC loss per character (lower is better; it moves before greedy decoding emits anything) and the "
            "share of test utterances decoded as empty:",
            "",
            *loss_lines,
            "",
            "Before any label: frame accuracy (%) of a linear phone probe of the pretrained encoder's best layer "
            "(test split), of a random encoder of the same config and of MFCCs; PNMI of HuBERT's k-means labels "
            "per iteration; and the ASR updates each fine-tune trained and the update whose model was scored "
            "(mean over seeds):",
            "",
            *diag_lines,
            "",
            f"Target (≥ {100 * TARGET_RELATIVE_REDUCTION:.0f}% lower relative test WER or CER than no pretraining at "
            f"{target['label_minutes']:g} minutes of labels): " + ("; ".join(verdicts) or "not measured") + ".",
            "",
            f"Hardware: {device}, torch {hw.get('torch')}, {payload.get('jobs', 1)} sub-run(s) at a time with "
            f"{payload.get('threads_per_job') or hw.get('torch_threads')} torch thread(s) each. Sub-runs: "
            f"{payload['timings']['sum_of_runs_s'] / 60:.1f} min in all (sum of their wall times); wall time of the benchmark "
            f"{(payload['timings']['total_s'] or 0.0) / 60:.1f} min"
            + (
                f" over {payload['timings']['invocations']} invocations (killed and rerun)"
                if (payload["timings"].get("invocations") or 1) > 1
                else ""
            )
            + f". Plot: `{payload['name']}.png`.",
        ]
    )


def preset_line(payload: dict[str, Any]) -> str:
    p = payload["preset_settings"]
    corpus = (p.get("corpus_configs") or {}).get(LIBRISPEECH)
    asr = f"{p['asr_updates']} updates (ASR)"
    if p.get("early_stopping_patience"):
        asr = (
            f"ASR until validation CER stopped improving ({p['early_stopping_patience']} evaluations of every "
            f"{p['asr_eval_steps']} updates without a lower one"
            + (f", counted from update {p['asr_min_updates']}" if p.get("asr_min_updates") else "")
            + f"; cap {p['asr_updates']}; the best update scored)"
        )
    return (
        f"Encoder `{p['model_size']}`; every objective pretrained for {p['pretrain_updates']} updates of "
        f"{p['pretrain_batch_size']} clips cropped to {p['pretrain_crop_s']:g} s (HuBERT: "
        + _hubert_split(p)
        + ")"
        + (f" on `{LIBRISPEECH}` `{corpus}`" if corpus else "")
        + f"; fine-tuning {asr}"
        + (f", {p['cls_updates']} updates (probes)" if set(payload.get("tasks", TASKS)) - {"asr"} else "")
    )


def _hubert_split(p: dict[str, Any]) -> str:
    """HuBERT's updates per iteration as the report states them (older payloads have no share: an even split)."""
    first, second = hubert_iteration_updates(p["pretrain_updates"], p.get("hubert_iteration_1_share", 0.5))
    continued = ", continuing iteration 1's encoder" if p.get("hubert_continue_iterations") else ""
    if first == second:
        return f"{first} per iteration, 2 iterations{continued}"
    return f"{first} updates on MFCC labels, then {second} on labels of iteration 1's layer{continued}"


def plot(payload: dict[str, Any], path: Path) -> None:
    """Test WER, CER and CTC loss (mean; error bars: std over seeds) against labeled minutes, one line per objective.

    The CTC-loss panel is there because greedy decoding stays empty (WER = CER = 100%) until a model leaves CTC's
    blank-only plateau, while the loss already separates the objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = payload["preset_settings"]["label_minutes"]
    panels = (
        ("wer", "test WER (%)", 100.0),
        ("cer", "test CER (%)", 100.0),
        ("loss", "test CTC loss per character", 1.0),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4), constrained_layout=True)
    for ax, (metric, label, scale) in zip(axes, panels, strict=True):
        values: list[float] = []
        for objective, entry in payload["summary"]["objectives"].items():
            points = [(m, entry["asr"].get(f"{m:g}", {}).get(metric)) for m in minutes]
            points = [(m, s) for m, s in points if s and s.get("mean") is not None]
            if not points:
                continue
            values += [scale * (s["mean"] + sign * (s["std"] or 0.0)) for _, s in points for sign in (-1, 1)]
            ax.errorbar(
                [m for m, _ in points],
                [scale * s["mean"] for _, s in points],
                yerr=[scale * (s["std"] or 0.0) for _, s in points],
                marker="o",
                capsize=3,
                label=objective,
                linestyle="--" if objective == "none" else "-",
            )
        ax.ticklabel_format(axis="y", useOffset=False)
        if scale == 100.0 and values and max(values) - min(values) < 5.0:  # e.g. every WER at 100%: show a range
            ax.set_ylim(max(values) - 6.0, max(values) + 1.0)
        ax.set_xscale("log")
        ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
        ax.minorticks_off()
        ax.set_xlabel("labeled minutes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"Label efficiency ({payload['preset']} preset, {payload['preset_settings']['model_size']} encoder; "
        f"mean ± std over seeds {', '.join(str(s) for s in payload['seeds'])})"
    )
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu",
        help="Sizes: smoke (tiny corpora, a few updates, minutes), tiny (tiny encoder, default corpora, 47 min on 2 "
        "cores, measured), cpu (cpu encoder, 10-h corpus for pretraining, early-stopped fine-tuning; ASR only: 170 "
        "min on 2 cores, measured; 114 min without simclr-utterance and the 60-min fine-tunes), cpu-long (10x the "
        "pretraining, fine-tuning capped at 3000 updates; 8-10 h on 2 cores, run it over several sessions: a rerun "
        "resumes), gpu (bf16; needs CUDA; not run yet). Default: cpu.",
    )  # fmt: skip
    parser.add_argument(
        "--objectives", default=",".join(OBJECTIVES),
        help=f"Comma-separated subset of {', '.join(OBJECTIVES)} (development; the report needs `none` for the "
        "target). Default: all.",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", default=",".join(TASKS),
        help=f"Comma-separated subset of {', '.join(TASKS)} (development). Default: all.",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default=None,
        help="Comma-separated fine-tuning seeds; at least 2 for a spread. Default: the preset's (0,1; gpu 0,1,2).",
    )  # fmt: skip
    parser.add_argument(
        "--label_minutes", default=None,
        help="Comma-separated labeled minutes of the ASR fine-tunes (development). Default: the preset's (10,60; "
        "smoke 0.5,1).",
    )  # fmt: skip
    parser.add_argument(
        "--runs_dir", type=Path, default=RESULTS_DIR / "label_efficiency_runs",
        help="Folder of the sub-runs; each preset gets its own subfolder. Finished sub-runs there are skipped. "
        "Default: benchmarks/results/label_efficiency_runs (git-ignored).",
    )  # fmt: skip
    parser.add_argument(
        "--results_dir", type=Path, default=RESULTS_DIR,
        help="Where the JSON, markdown and PNG go. Default: benchmarks/results.",
    )  # fmt: skip
    parser.add_argument(
        "--results_name", default=None,
        help="File stem of the results. Default: label_efficiency for the cpu preset, label_efficiency_{preset} "
        "for the others.",
    )  # fmt: skip
    parser.add_argument(
        "--torch_threads", type=int, default=None,
        help="torch.set_num_threads for every sub-run. Default: torch's (all cores). On a CPU machine that other "
        "jobs share, 1 is faster: with 2 threads each update waits for the thread that was descheduled (measured "
        "2.8x slower on a loaded 2-core machine).",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="Sub-runs at a time, each in its own process with (cores / jobs) torch threads unless --torch_threads "
        "says otherwise; a fine-tune waits for its pretraining. Default: the preset's (cpu 2, others 1: one process, "
        "sub-runs in turn).",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="Check a preset's orchestration on any machine: its structure (objectives, tasks, early stopping, seeds "
        "per label amount) at the smoke preset's sizes (tiny corpora and encoder, a few updates, fp32, no CUDA "
        "needed); results `<name>_smoke.*`, runs in `<runs_dir>/<preset>-smoke`. Numbers are meaningless.",
    )  # fmt: skip
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child of --jobs: run this sub-run only
    parser.add_argument(
        "--report_only", action="store_true",
        help="Run nothing: rebuild the JSON/markdown/PNG from the sub-runs that finished.",
    )  # fmt: skip
    parser.add_argument(
        "--dry_run", action="store_true", help="Print every sub-run's recipe command and exit.",
    )  # fmt: skip
    parser.add_argument(
        "--keep_checkpoints", action="store_true",
        help="Keep the sub-runs' resumable checkpoint-*/ folders after they finish (default: deleted; the final "
        "models stay).",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [o for o in args.objectives if o not in OBJECTIVES] + [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown objective(s)/task(s): {unknown}")
    preset = PRESETS[args.preset]
    if args.smoke:
        preset = smoke_version(preset)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else preset.seeds
    minutes = tuple(float(m) for m in args.label_minutes.split(",")) if args.label_minutes else preset.label_minutes
    args.settings = dataclasses.replace(preset, seeds=seeds, label_minutes=minutes)  # what this invocation uses
    args.seeds = list(seeds)
    args.jobs = args.jobs or preset.jobs
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    # torch threads of each child process with --jobs > 1 (None: one process, torch's own default)
    args.threads_per_job = args.torch_threads or (
        max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    )
    args.results_name = args.results_name or (
        "label_efficiency" if args.preset == "cpu" else f"label_efficiency_{args.preset}"
    ) + ("_smoke" if args.smoke and not args.results_name else "")
    return args


def smoke_version(preset: Preset) -> Preset:
    """`preset`'s structure at the `smoke` preset's sizes (what `--smoke` runs)."""
    smoke = PRESETS["smoke"]
    sizes = (
        "model_size", "corpus_kwargs", "corpus_configs", "pretrain_updates", "pretrain_batch_size",
        "pretrain_crop_s", "pretrain_eval_samples", "asr_updates", "asr_batch_size", "asr_eval_samples",
        "cls_updates", "cls_batch_size", "mixed_precision", "dataloader_num_workers", "eval_batch_size",
        "logging_steps", "needs_cuda", "hubert_flags", "pretrain_flags", "asr_flags", "save_every",
    )  # fmt: skip
    label_minutes = smoke.label_minutes[: len(preset.label_minutes)]
    single = tuple(label_minutes[preset.label_minutes.index(m)] for m in preset.single_seed_minutes)
    return dataclasses.replace(
        preset,
        **{name: getattr(smoke, name) for name in sizes},
        label_minutes=label_minutes,
        single_seed_minutes=single,
        asr_eval_steps=smoke.asr_eval_steps if preset.early_stopping_patience else None,
        asr_min_updates=smoke.asr_min_updates if preset.early_stopping_patience and preset.asr_min_updates else 0,
        description=f"smoke check of the {preset.description}",
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")  # everything here is offline; never reach for the Hub
    preset: Preset = args.settings
    runs_dir = (args.runs_dir / (f"{args.preset}-smoke" if args.smoke else args.preset)).resolve()
    runs = plan_runs(preset, args.objectives, args.tasks, args.seeds)
    if args.dry_run:
        for run in runs:
            print(f"[{run.name}] python recipes/{run.recipe}.py {shlex.join(run.resolved_argv(runs_dir))}")
        return {}
    if len(args.seeds) < 2:
        logger.warning("Only one seed (%s): the report has no spread", args.seeds)

    if preset.needs_cuda and not torch.cuda.is_available() and not args.report_only:
        raise SystemExit(f"--preset {args.preset} needs a CUDA GPU; none is visible (use --preset cpu)")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.only:  # a child process of --jobs
        [run] = [r for r in runs if r.name == args.only]
        execute(run, runs_dir, keep_checkpoints=args.keep_checkpoints)
        return {}
    start = time.perf_counter()
    timings: dict[str, Any] = {"corpora_s": {}, "runs_s": {}}
    records: list[RunRecord] = []
    if args.report_only:
        for run in runs:
            path = runs_dir / run.name / RUN_RECORD
            if path.is_file():
                record = RunRecord(**json.loads(path.read_text()))
                if record.argv == run.argv:
                    records.append(record)
                else:
                    logger.warning("%s was made with other arguments than this preset's; left out", run.name)
    # wall time over every invocation that ran sub-runs (a multi-session preset is killed and rerun)
    clock_path = runs_dir / BENCHMARK_CLOCK
    with contextlib.nullcontext() if args.report_only else AttemptClock(clock_path):
        if not args.report_only:
            timings["corpora_s"] = build_corpora(preset, args.tasks)
        if not args.report_only and args.jobs > 1:
            records = run_parallel(runs, runs_dir, args, start)
        elif not args.report_only:
            for i, run in enumerate(runs, 1):
                logger.info("sub-run %d/%d: %s (%.1f min so far)", i, len(runs), run.name,
                            (time.perf_counter() - start) / 60)  # fmt: skip
                before = time.perf_counter()
                records.append(execute(run, runs_dir, keep_checkpoints=args.keep_checkpoints))
                if time.perf_counter() - before > 1.0:  # ran (not skipped): project the rest from runs of its kind
                    log_projection(records[-1], runs[i:], time.perf_counter() - start)
    timings["runs_s"] = {r.name: r.wall_time_s for r in records}
    timings["total_s"] = round(time.perf_counter() - start, 1)
    timings["sum_of_runs_s"] = round(sum(r.wall_time_s for r in records), 1)
    previous = load_results(args.results_name, results_dir=args.results_dir) or {}
    hardware = hardware_info()
    if args.report_only and previous.get("timings", {}).get("runs_s") == timings["runs_s"]:
        # the same finished sub-runs: keep the wall time and machine state of the invocation that ran them
        timings.update(corpora_s=previous["timings"].get("corpora_s", {}), total_s=previous["timings"].get("total_s"))
        hardware = previous.get("hardware", hardware)
    if clock_path.is_file():  # the benchmark's own wall time over all its invocations, the report's too
        spent = _read_json(clock_path)
        timings.update(total_s=spent.get("total_s"), invocations=spent.get("attempts"))

    payload = {
        "benchmark": "label_efficiency",
        "name": args.results_name,
        "preset": args.preset,
        "preset_settings": dataclasses.asdict(preset),
        "objectives": args.objectives,
        "tasks": args.tasks,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "threads_per_job": args.threads_per_job,
        "protocol": {
            "pretraining": {
                o: (f"recipes/{v[0]}.py {' '.join(v[1])}".strip() if v else None)
                for o, v in OBJECTIVES.items()
                if o in args.objectives
            },
            "asr": "recipes/finetune_asr.py: full fine-tuning, character CTC, greedy decoding (and with --lm_decoding "
            "a lexicon beam search with a word bigram LM); test WER/CER",
            "keyword_spotting": "recipes/finetune_audio_classification.py --task keyword_spotting --probe; test "
            "accuracy (12 classes)",
            "prosody": "recipes/finetune_audio_classification.py --task emotion_recognition --probe; test accuracy "
            "(4 prosody classes)",
            "hubert_budget": "pretrain_updates split over 2 iterations by hubert_iteration_1_share (--iteration_max_steps)",
        },  # fmt: skip
        "summary": summarize(records, args.objectives, preset.label_minutes),
        "runs": [dataclasses.asdict(r) for r in records],
        "timings": timings,
        "command": "python benchmarks/label_efficiency.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "hardware": hardware,
    }
    markdown = markdown_report(payload)
    write_results(args.results_name, payload, markdown, results_dir=args.results_dir)
    plot(payload, args.results_dir / f"{args.results_name}.png")
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
