"""Resumable, atomically written checkpoints.

A checkpoint is the folder `output_dir/checkpoint-{step}` holding what `Accelerator.save_state` writes (model,
optimizer, scheduler, grad scaler and every process's RNG states) plus our `trainer_state.json` (step, epoch,
position in the epoch, counters). It is first written to `output_dir/.tmp-checkpoint-{step}` and renamed once
complete, so a run killed while saving never leaves a checkpoint that looks finished: the next run resumes from the
newest *complete* one and removes the leftovers.

Output folders: a run starts only in a folder that is missing, empty or one of our runs (`is_our_run`), so that a
typo in `--output_dir` does not write checkpoints and a model over someone else's files; `--overwrite_output_dir`
lifts the check (transformers' convention). `claim_output_dir` checks and then marks the folder with `RUN_MARKER`
before anything else is written, so a run killed at any point is still recognised as ours when it is rerun.

Files written by `atomic_write_text` get the permissions of a plain `open()`, `0o666 & ~umask`, not `mkstemp`'s 0o600;
`apply_default_modes` gives the same to files other writers create 0o600 (safetensors >= 0.8 writes through a
temporary file: safetensors/safetensors#782).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_MARKER",
    "TRAINER_STATE_NAME",
    "apply_default_modes",
    "atomic_write_text",
    "check_output_dir",
    "claim_output_dir",
    "default_file_mode",
    "default_folder_mode",
    "find_last_checkpoint",
    "is_our_run",
    "list_checkpoints",
    "prune_checkpoints",
    "read_trainer_state",
    "remove_incomplete_checkpoints",
]

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
#: Written by `claim_output_dir` into every output folder when a run starts (before anything else).
RUN_MARKER = ".hf_speech_cl_run"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What else marks a folder as ours (runs made before RUN_MARKER existed, or whose marker was deleted): checkpoints and
# their temporary folders, the loop's logs and results, and pretrain_hubert.py's stages (`iteration-{i}/iteration.json`
# is the first file it writes, before features, labels and k-means; `stage_complete.json` marks its final model).
_OUR_FILES = ("train_results.json", "logs/metrics.jsonl", "logs/hparams.json", "stage_complete.json")
_OUR_FOLDER_RE = re.compile(r"^(checkpoint-\d+|\.tmp-checkpoint-\d+)$")
_HUBERT_ITERATION_RE = re.compile(r"^iteration-\d+$")


def _umask() -> int:
    """The process's umask, read from /proc/self/status (Linux >= 4.7) where possible.

    The portable way, setting it and putting it back (`old = os.umask(x)`, `os.umask(old)`), changes it for a moment
    for every thread of the process: a file another thread creates in between gets mode `0o666 & ~x`. That race is
    accepted as the fallback where /proc is missing (macOS), with x = 0o022, the usual umask, to keep it harmless."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # racy across threads (see above); only where /proc is missing
    os.umask(old)
    return old


def default_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: `0o666 & ~umask` (0o644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """The mode `os.mkdir(path)` would give a new folder: `0o777 & ~umask` (0o755 under the usual umask 022)."""
    return 0o777 & ~_umask()


def apply_default_modes(path: str | os.PathLike) -> None:
    """Give `path`, and everything under it if it is a folder, the modes a plain `open()`/`mkdir()` would have given
    (`default_file_mode()`, `default_folder_mode()`). For freshly written output only: modes set on purpose are lost.
    Symbolic links are left alone."""
    path = Path(path)
    file_mode, folder_mode = default_file_mode(), default_folder_mode()
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, folder_mode)
    for root, folders, files in os.walk(path):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace` (atomic on POSIX).

    The file gets the mode a plain `open()` would give it (`default_file_mode()`), not `tempfile.mkstemp`'s 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_our_run(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` holds (part of) a run of ours, which a rerun continues: `RUN_MARKER`, a `checkpoint-{n}`
    or `.tmp-checkpoint-{n}` folder, `train_results.json`, `logs/metrics.jsonl` or `logs/hparams.json`, or HuBERT's
    `stage_complete.json` or `iteration-{i}/iteration.json` (pretrain_hubert.py's label stages)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    if (output_dir / RUN_MARKER).exists() or any((output_dir / name).is_file() for name in _OUR_FILES):
        return True
    for child in output_dir.iterdir():
        if _OUR_FOLDER_RE.match(child.name) and child.is_dir():
            return True
        if _HUBERT_ITERATION_RE.match(child.name) and (child / "iteration.json").is_file():
            return True
    return False


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to start a run in a folder that holds something else.

    Passes when `overwrite` is true, when `output_dir` does not exist or is empty, and when it is one of our runs
    (`is_our_run`: a rerun resumes there). Writes nothing. Every process of a run may call it on the same folder:
    they all see the same files, so they all pass or all raise.

    Raises:
        ValueError: `output_dir` exists, is not empty and is not one of our runs (as transformers' example scripts
            raise ValueError for a non-empty output directory). The message names a few of the files found and the
            flag that lifts the check, `--overwrite_output_dir`. Also raised when `output_dir` is a file.
    """
    output_dir = Path(output_dir)
    if overwrite or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder: pass another --output_dir.")
    found = sorted(child.name + ("/" if child.is_dir() else "") for child in output_dir.iterdir())
    if not found or is_our_run(output_dir):
        return
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise ValueError(
        f"Output directory {output_dir} already exists, is not empty ({shown}) and is not a run of hf_speech_cl "
        "(no checkpoint-*/, logs/metrics.jsonl, train_results.json or " + RUN_MARKER + "). Its files could be "
        "overwritten: pass another --output_dir, or --overwrite_output_dir to write into it anyway."
    )


def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """`check_output_dir`, then create `output_dir` and mark it as ours with `RUN_MARKER` (kept if it exists).

    The first thing a run writes (`make_accelerator`, `make_partial_state`): any folder a run leaves, even one killed
    at once, is recognised by the rerun. Safe on every process at once: the marker is created with `O_EXCL` and never
    through a temporary file, so another process checking meanwhile sees either nothing or the marker.

    Raises:
        ValueError: see `check_output_dir`.
    """
    check_output_dir(output_dir, overwrite)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(output_dir / RUN_MARKER, "x") as f:
            f.write(
                json.dumps(
                    {
                        "written_by": "hf_speech_cl",
                        "meaning": "this folder is an hf_speech_cl run: rerunning a recipe here resumes it",
                    }
                )
                + "\n"
            )
    except FileExistsError:
        pass
    return output_dir


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (by step)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    with open(Path(checkpoint_dir) / TRAINER_STATE_NAME) as f:
        return json.load(f)


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete `.tmp-checkpoint-*` folders left by a run that was killed while saving."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for child in output_dir.iterdir():
        if child.name.startswith(".tmp-checkpoint-") and child.is_dir():
            logger.warning("Removing incomplete checkpoint %s (the run that wrote it was interrupted)", child)
            shutil.rmtree(child, ignore_errors=True)


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> None:
    """Delete the oldest complete checkpoints so that at most `keep` remain (None keeps all)."""
    if keep is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
