"""Kill-and-resume of the README's main job at its real size, and 2-process runs of every pretraining objective.

Two parts, each skipped when its results are already in `benchmarks/results/fault_tolerance.json` (rerun with
`--force PART` to redo one):

- `kill_resume`: the README's first command (`accelerate launch recipes/pretrain_simclr.py`, its defaults, one
  thread) three ways: uninterrupted into `WORK/reference`; into `WORK/killed` with `kill -9` of the whole process
  group as soon as `logs/metrics.jsonl` shows update `--kill_at` (between two checkpoints); the same command again,
  which resumes from the newest complete checkpoint. Table: update, uninterrupted loss, resumed loss.
- `distributed`: `torchrun --nproc_per_node 2` (gloo) of `pretrain_simclr`, `pretrain_wav2vec2` and `pretrain_hubert`
  with their default layer drop and a short budget; wall time of each, and whether every process ends with the
  same parameters (via `tests/fault_driver.py`'s parameter dump).

    python benchmarks/fault_tolerance.py                       # both parts, ~20 min on 2 cores
    python benchmarks/fault_tolerance.py --parts distributed --distributed_steps 20

Not part of CI (the tests in tests/test_fault_tolerance.py and tests/test_distributed_training.py cover the same
mechanisms at toy size).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import load_results, write_results  # noqa: E402

NAME = "fault_tolerance"
BIN = Path(sys.executable).parent


def _read_rows(logs: Path) -> list[dict]:
    path = logs / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            pass
    return rows


def _losses(logs: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _read_rows(logs) if "loss" in r and "lr" in r}


def _launch(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    print(f"[{NAME}] $ {' '.join(cmd)}", flush=True)
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_resume(work: Path, kill_at: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [str(BIN / "accelerate"), "launch", "recipes/pretrain_simclr.py"]
    reference, killed = work / "reference", work / "killed"
    walls = {}

    start = time.perf_counter()
    proc = _launch([*base, "--output_dir", str(reference)], work / "reference.log", env)
    if proc.wait() != 0:
        raise SystemExit(f"uninterrupted run failed, see {work / 'reference.log'}")
    walls["uninterrupted_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    proc = _launch([*base, "--output_dir", str(killed)], work / "killed.log", env)
    while proc.poll() is None:
        steps = [r["step"] for r in _read_rows(killed / "logs") if "lr" in r]
        if steps and max(steps) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the launcher and its training process
            break
        time.sleep(0.2)
    rc = proc.wait()
    walls["killed_s"] = round(time.perf_counter() - start, 1)
    killed_rows = [r["step"] for r in _read_rows(killed / "logs") if "lr" in r]
    checkpoints = sorted(p.name for p in killed.glob("checkpoint-*"))
    print(f"[{NAME}] killed (rc {rc}) with updates {killed_rows[-3:]} logged, checkpoints {checkpoints}", flush=True)

    start = time.perf_counter()
    proc = _launch([*base, "--output_dir", str(killed)], work / "resumed.log", env)
    if proc.wait() != 0:
        raise SystemExit(f"resumed run failed, see {work / 'resumed.log'}")
    walls["resumed_s"] = round(time.perf_counter() - start, 1)
    resumed_from = json.loads((killed / "train_results.json").read_text()).get("resumed_from")

    ref, res = _losses(reference / "logs"), _losses(killed / "logs")
    rows = [{"update": s, "uninterrupted": ref[s], "resumed": res.get(s)} for s in sorted(ref)]
    logged_steps = [r["step"] for r in _read_rows(killed / "logs") if "lr" in r]
    return {
        "command": " ".join(["accelerate", "launch", "recipes/pretrain_simclr.py", "--output_dir", "DIR"]),
        "kill_at_update": kill_at,
        "killed_return_code": rc,
        "last_update_logged_by_killed_run": max(killed_rows) if killed_rows else None,
        "checkpoints_when_killed": checkpoints,
        "resumed_from": Path(resumed_from).name if resumed_from else None,
        "one_row_per_update": logged_steps == sorted(set(logged_steps)),
        "max_abs_difference": max(abs(r["uninterrupted"] - r["resumed"]) for r in rows if r["resumed"] is not None),
        "rows": rows,
        "wall": walls,
    }


DISTRIBUTED = {
    "pretrain_simclr": ["--layerdrop", "0.1"],
    "pretrain_wav2vec2": [],  # Wav2Vec2Config's layerdrop 0.1
    "pretrain_hubert": ["--iterations", "1"],  # HubertPretrainingConfig's layerdrop 0.05
}


def distributed(work: Path, steps: int) -> dict:
    import torch

    results = {}
    for recipe, extra in DISTRIBUTED.items():
        out, dump = work / f"ddp-{recipe}", work / f"ddp-{recipe}-params"
        dump.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FAULT_DRIVER_DUMP_PARAMS": str(dump)}
        args = [
            "--output_dir",
            str(out),
            "--model_size",  # the size measured in benchmarks/results/fault_tolerance.json
            "tiny",
            "--max_steps",
            str(steps),
            "--save_steps",
            str(steps),
            "--eval_split",
            "none",
        ]
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "tests/fault_driver.py", recipe, "none", "--"]
        start = time.perf_counter()
        proc = _launch([*cmd, *args, *extra], work / f"ddp-{recipe}.log", env)
        rc = proc.wait()
        wall = round(time.perf_counter() - start, 1)
        entry = {"command": f"torchrun --nproc_per_node 2 recipes/{recipe}.py {' '.join(args + extra)}", "rc": rc}
        entry["wall_s"] = wall
        if rc == 0:
            a, b = (torch.load(dump / f"rank{i}.pt") for i in (0, 1))
            entry["identical_parameters"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            losses = _losses(out / "iteration-1" / "model" / "logs" if recipe == "pretrain_hubert" else out / "logs")
            entry["first_loss"], entry["last_loss"] = (
                (losses[min(losses)], losses[max(losses)]) if losses else (None,) * 2
            )
        print(f"[{NAME}] {recipe}: {entry}", flush=True)
        results[recipe] = entry
    return results


def markdown(payload: dict) -> str:
    lines = ["# Fault tolerance at the main job's size", ""]
    kr = payload.get("kill_resume")
    if kr:
        lines += [
            f"`{kr['command']}` (README's first command), `kill -9` of the process group at update "
            f"{kr['last_update_logged_by_killed_run']} (checkpoints then: {', '.join(kr['checkpoints_when_killed'])}), "
            f"the same command again: resumed from `{kr['resumed_from']}`; one metrics row per update: "
            f"{kr['one_row_per_update']}; largest loss difference {kr['max_abs_difference']:.2e}. Wall: "
            f"uninterrupted {kr['wall']['uninterrupted_s']} s, killed run {kr['wall']['killed_s']} s, "
            f"resumed run {kr['wall']['resumed_s']} s.",
            "",
            "| update | uninterrupted loss | resumed loss |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {r['update']} | {r['uninterrupted']:.6f} | {r['resumed']:.6f} |" for r in kr["rows"]]
        lines.append("")
    dist = payload.get("distributed")
    if dist:
        lines += ["## 2 processes (gloo), layer drop on", "", "| command | rc | wall (s) | same parameters | loss |"]
        lines.append("|---|---:|---:|---|---|")
        for entry in dist.values():
            loss = f"{entry.get('first_loss', 0):.3f} → {entry.get('last_loss', 0):.3f}" if entry["rc"] == 0 else "-"
            lines.append(
                f"| `{entry['command']}` | {entry['rc']} | {entry['wall_s']} | {entry.get('identical_parameters')} "
                f"| {loss} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/fault_tolerance"), help="run folders")
    parser.add_argument("--parts", nargs="+", default=["kill_resume", "distributed"], help="which parts to run")
    parser.add_argument("--force", nargs="*", default=[], help="parts to redo even if their results exist")
    parser.add_argument("--kill_at", type=int, default=160, help="kill -9 once this update is logged")
    parser.add_argument("--distributed_steps", type=int, default=30, help="updates of each 2-process run")
    args = parser.parse_args(argv)
    payload = load_results(NAME) or {}
    for part in args.parts:
        if part in payload and part not in args.force:
            print(f"[{NAME}] {part}: already in results, skipped (--force {part} to redo)")
            continue
        work = args.work_dir / part
        if work.exists():
            import shutil

            shutil.rmtree(work)
        work.mkdir(parents=True)
        payload[part] = (
            kill_resume(work, args.kill_at) if part == "kill_resume" else distributed(work, args.distributed_steps)
        )
        payload.pop("hardware", None)
        write_results(NAME, payload, markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
