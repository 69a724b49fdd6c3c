"""Resumable, atomically written checkpoints.

A checkpoint is the folder `output_dir/checkpoint-{step}` holding what `Accelerator.save_state` writes (model,
optimizer, scheduler, grad scaler and every process's RNG states) plus our `trainer_state.json` (step, epoch,
position in the epoch, counters). It is first written to `output_dir/.tmp-checkpoint-{step}` and renamed once
complete, so a run killed while saving never leaves a checkpoint that looks finished: the next run resumes from the
newest *complete* one and removes the leftovers.
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
    "TRAINER_STATE_NAME",
    "atomic_write_text",
    "find_last_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "read_trainer_state",
    "remove_incomplete_checkpoints",
]

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
