"""Command line: build (or find) the offline corpora and print what they hold.

    python -m hf_speech_cl.data.synthetic --corpus all --num-workers 2
    python -m hf_speech_cl.data.synthetic --corpus synthetic-librispeech --train-hours 10 --seed 1
    hf-speech-cl-corpora --help

Every field of `LibriSpeechParams`, `SpeechCommandsParams` and `ProsodyParams` is a flag; its help text is the
field's documentation. Fields that more than one corpus has (`train_speakers`, ...) carry the corpus in the flag
(`--librispeech-train-speakers`, `--speech-commands-train-speakers`, `--prosody-train-speakers`); `engines` and
`sampling_rate` apply to every corpus built.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import typing
from collections import Counter

from .corpora import (
    CORPORA,
    LibriSpeechParams,
    ProsodyParams,
    SpeechCommandsParams,
    build_corpus,
    corpus_folder,
    corpus_info,
    default_cache_dir,
)
from .engines import ENGINES, EngineNotFoundError

__all__ = ["build_parser", "main"]

_PARAMS = {
    "synthetic-librispeech": LibriSpeechParams,
    "synthetic-speech-commands": SpeechCommandsParams,
    "synthetic-prosody": ProsodyParams,
}
_PREFIX = {
    "synthetic-librispeech": "librispeech",
    "synthetic-speech-commands": "speech-commands",
    "synthetic-prosody": "prosody",
}
_SHARED = ("engines", "sampling_rate")


def _field_docs(cls) -> dict[str, str]:
    """`Args:` entries of a dataclass docstring, joined into one line each (the default is added by argparse)."""
    docs: dict[str, list[str]] = {}
    current = None
    for line in (cls.__doc__ or "").split("Args:", 1)[-1].splitlines():
        match = re.match(r"\s{8}(\w+) \(`[^`]*`.*\):\s*$", line)
        if match:
            current = match.group(1)
            docs[current] = []
        elif current and line.strip():
            docs[current].append(line.strip())
    return {name: " ".join(parts).replace("%", "%%") for name, parts in docs.items()}


def _flag_names() -> dict[str, dict[str, str]]:
    """corpus -> field -> flag (without the dashes)."""
    counts = Counter(f.name for cls in _PARAMS.values() for f in dataclasses.fields(cls) if f.name not in _SHARED)
    return {
        corpus: {
            f.name: (f.name if counts[f.name] == 1 else f"{_PREFIX[corpus]}_{f.name}").replace("_", "-")
            for f in dataclasses.fields(cls)
            if f.name not in _SHARED
        }
        for corpus, cls in _PARAMS.items()
    }


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (every corpus parameter is a flag that defaults to the dataclass default)."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_speech_cl.data.synthetic",
        description=(
            "Synthesize the offline speech corpora with espeak-ng, flite and festival, cache them with "
            "save_to_disk and print folder, hours, speakers, sentences and disk size. A corpus is rebuilt only when "
            "its parameters (or seed, or the builder version) change; otherwise the cached one is reported."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", choices=("all", *CORPORA), default="all", help="Which corpus to build.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of speakers, sentences, splits, jitter and noise.")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="Synthesis processes (default: the cores this process may use)."
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"Parent folder of the corpora (default: $HF_SPEECH_CL_CACHE or {default_cache_dir()}).",
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="Comma-separated engines to draw speakers from (espeak-ng, flite, festival), for every corpus built.",
    )
    parser.add_argument("--sampling-rate", type=int, default=16000, help="Sampling rate of the stored audio in Hz.")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only print the summary.")
    flags = _flag_names()
    for corpus, cls in _PARAMS.items():
        group = parser.add_argument_group(f"{corpus} ({cls.__name__})")
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _SHARED:
                continue
            hint = hints[f.name]
            kwargs: dict = {
                "default": f.default,
                "dest": f"{_PREFIX[corpus]}__{f.name}",
                "help": docs.get(f.name, ""),
                "metavar": f.name.upper(),
            }
            if hint is bool:
                kwargs.update(type=_bool, metavar="{true,false}")
            elif typing.get_origin(hint) is tuple:
                kwargs.update(type=float, nargs=2, metavar=("LOW", "HIGH"))
            else:
                kwargs.update(type=hint)
            group.add_argument(f"--{flags[corpus][f.name]}", **kwargs)
    return parser


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m hf_speech_cl.data.synthetic` and `hf-speech-cl-corpora`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    corpora = CORPORA if args.corpus == "all" else (args.corpus,)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    summaries = []
    for corpus in corpora:
        params = {
            f.name: getattr(args, f"{_PREFIX[corpus]}__{f.name}")
            for f in dataclasses.fields(_PARAMS[corpus])
            if f.name not in _SHARED
        }
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        params.update(engines=engines, sampling_rate=args.sampling_rate)
        try:
            cached = corpus_folder(corpus, cache_dir=args.cache_dir, seed=args.seed, **params).is_dir()
            folder = build_corpus(
                corpus, cache_dir=args.cache_dir, seed=args.seed, num_workers=args.num_workers, **params
            )
        except (EngineNotFoundError, ValueError) as err:
            parser.exit(1, f"error: {err}\n")
        summaries.append((folder, corpus_info(folder), cached))
    for folder, info, cached in summaries:
        print(f"\n{info['name']}  (seed {info['seed']}, key {info['key']})")
        print(f"  folder:     {folder}")
        built = f"built in {info['build_seconds']:.1f} s with {info['num_workers']} workers"
        print(f"  disk size:  {_size(info['disk_bytes'])}; {built}" + (" (cached: reused)" if cached else ""))
        for split, stats in info["splits"].items():
            line = f"  {split:<11} {stats['hours']:7.3f} h  {stats['utterances']:6d} utterances  {stats['speakers']:4d} speakers"
            if "sentences" in stats:
                line += f"  {stats['sentences']:5d} sentences"
            if "labels" in stats:
                line += "  labels " + " ".join(f"{k}:{v}" for k, v in stats["labels"].items())
            print(line)
    sys.stdout.flush()
    return 0
