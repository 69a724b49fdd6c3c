"""A dependency-free accelerate tracker: one JSON object per logged step in `logs/metrics.jsonl`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

from .checkpointing import atomic_write_text

__all__ = ["JSONLinesTracker", "read_metrics", "truncate_metrics"]


class JSONLinesTracker(GeneralTracker):
    """Appends `{"step": ..., "time": ..., **values}` lines to `{logging_dir}/metrics.jsonl`.

    Works where neither TensorBoard nor W&B is installed, and is what tests and model cards read back. A resumed run
    appends to the same file, so the file holds the whole run's history: the training loop first drops, with
    `truncate_metrics`, the rows a killed run wrote after the checkpoint the new run continues from.
    """

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        config_path = self.path.parent / "hparams.json"
        config_path.write_text(json.dumps(values, indent=2, default=str, sort_keys=True))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(logging_dir: str | os.PathLike) -> list[dict]:
    """The records a `JSONLinesTracker` wrote, in order."""
    path = Path(logging_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(logging_dir: str | os.PathLike, last_step: int) -> int:
    """Drop the rows of `{logging_dir}/metrics.jsonl` whose `step` is after `last_step`; return how many.

    Called when a run (re)starts at update `last_step` (0 for a fresh start): the rows a killed run logged after its
    last complete checkpoint are replaced by those the resumed run logs, so the file shows one history. The file is
    rewritten atomically (temporary file + `os.replace`); rows without a step, and a torn last line, are dropped too.
    """
    path = Path(logging_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                dropped += 1
                continue
            step = record.get("step")
            if isinstance(step, int) and step <= last_step:
                kept.append(json.dumps(record) + "\n")
            else:
                dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped
