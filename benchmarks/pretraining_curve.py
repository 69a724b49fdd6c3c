#!/usr/bin/env python
"""How much pretraining a representation needs: the phone probe of every checkpoint of one pretraining run.

The label-efficiency benchmark gives each objective one pretraining budget; this script answers the question its
results raise, "would more pretraining pay?", for one objective: it runs the objective's recipe once with a
checkpoint every `--probe_every` updates (all kept), then fits the linear frame-level phone probe
(`hf_speech_cl.finetuning.phone_probe`: the recipes' own probe, test-split frame accuracy, 40 phones) on every
checkpoint, beside the two references (39-d MFCC and a random encoder of the same config, computed once). The
table pairs each checkpoint's probe accuracy with the audio hours seen and the objective's training metrics
(loss, masked / retrieval / contrastive accuracy) logged at that update.

HuBERT runs one iteration (MFCC k-means targets): the probe curve of iteration 1 says when its layers carry more
phone information than the MFCCs it was trained on, which is when a second iteration can pay (Hsu et al. 2021,
§IV-E re-cluster after 250k updates).

Resumable: the recipe resumes from its newest checkpoint, and probes already fitted (kept in the JSON) are not
refitted. Results: `benchmarks/results/pretraining_curve_{objective}.{json,md}` (`--results_name`).

Examples:
    python benchmarks/pretraining_curve.py --objective hubert --max_steps 3200 --probe_every 400 \\
        --dataset_config large
    python benchmarks/pretraining_curve.py --smoke      # orchestration check on the tiny corpus (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, RESULTS_DIR, atomic_write_text, hardware_info, write_results

#: objective -> (recipe, its flags); the same objectives as benchmarks/label_efficiency.py, HuBERT one iteration.
OBJECTIVES: dict[str, tuple[str, list[str]]] = {
    "simclr-utterance": ("pretrain_simclr", ["--granularity", "utterance"]),
    "simclr-frame": ("pretrain_simclr", ["--granularity", "frame"]),
    "wav2vec2": ("pretrain_wav2vec2", []),
    "hubert": ("pretrain_hubert", ["--iterations", "1"]),
}
#: training metrics copied into the table when the recipe logs them
METRICS = ("loss", "accuracy_masked", "retrieval_accuracy", "contrastive_accuracy", "codevector_perplexity")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="hubert", help="Default: hubert.")
    parser.add_argument("--model_size", default="cpu", help="Encoder preset (hf_speech_cl.presets). Default: cpu.")
    parser.add_argument("--max_steps", type=int, default=3200, help="Pretraining updates. Default: 3200.")
    parser.add_argument(
        "--probe_every", type=int, default=400, help="A checkpoint, and a probe of it, every this many updates."
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Clips per update. Default: 8.")
    parser.add_argument("--crop_s", type=float, default=4.0, help="Random crop of every clip, s. Default: 4.")
    parser.add_argument(
        "--dataset_config",
        default=None,
        help="synthetic-librispeech size (`large`: 10 h of train audio). Default: the corpus default (2 h).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the pretraining and of the probes.")
    parser.add_argument(
        "--runs_dir",
        type=Path,
        default=RESULTS_DIR / "pretraining_curve_runs",
        help="Where the run's folder goes (ignored by git). Default: benchmarks/results/pretraining_curve_runs.",
    )
    parser.add_argument("--results_name", default=None, help="Default: pretraining_curve_{objective}[_smoke].")
    parser.add_argument(
        "--results_dir",
        type=Path,
        default=RESULTS_DIR,
        help="Where the JSON and table go. Default: benchmarks/results.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny corpus and tiny encoder, 4 updates probed every 2 (a CPU check)."
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.model_size, args.max_steps, args.probe_every, args.batch_size, args.crop_s = "tiny", 4, 2, 2, 1.5
    if args.probe_every < 1 or args.max_steps < args.probe_every:
        parser.error("--probe_every must be between 1 and --max_steps")
    args.results_name = args.results_name or f"pretraining_curve_{args.objective}" + ("_smoke" if args.smoke else "")
    return args


def recipe_argv(args: argparse.Namespace, out: Path) -> list[str]:
    recipe, flags = OBJECTIVES[args.objective]
    argv = [
        sys.executable, str(REPO_ROOT / "recipes" / f"{recipe}.py"),
        "--output_dir", str(out),
        "--model_size", args.model_size,
        "--max_steps", str(args.max_steps),
        "--save_steps", str(args.probe_every),
        "--save_total_limit", str(args.max_steps // args.probe_every + 1),
        "--per_device_train_batch_size", str(args.batch_size),
        "--max_train_crop_s", str(args.crop_s),
        "--seed", str(args.seed),
        "--logging_steps", str(min(50, args.probe_every)),
        "--phone_probe", "false",  # the last checkpoint is the final model: probed below with the others
        *flags,
    ]  # fmt: skip
    if args.smoke:
        from hf_speech_cl.data.synthetic import TINY_PARAMS

        argv += ["--dataset_kwargs", json.dumps(TINY_PARAMS["synthetic-librispeech"]), "--max_eval_samples", "4"]
        if args.objective == "hubert":
            argv += ["--num_clusters", "10", "--kmeans_sample_fraction", "1.0"]
    if args.dataset_config:
        argv += ["--dataset_config", args.dataset_config]
    return argv


def checkpoint_dirs(out: Path, objective: str) -> list[Path]:
    """The run's checkpoints, oldest first (HuBERT's are under `iteration-1/model/`)."""
    root = out / "iteration-1" / "model" if objective == "hubert" else out
    found = [p for p in root.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def logged_metrics(out: Path, objective: str) -> dict[int, dict[str, float]]:
    """`{update: training metrics logged at it}` from the recipe's `logs/metrics.jsonl`."""
    path = (out / "iteration-1" / "model" if objective == "hubert" else out) / "logs" / "metrics.jsonl"
    rows: dict[int, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "step" in record and "loss" in record:
                keys = (*METRICS, "audio_hours_seen")
                rows[int(record["step"])] = {k: record[k] for k in keys if k in record}
    return rows


def nearest_logged(rows: dict[int, dict[str, float]], step: int) -> dict[str, float]:
    earlier = [s for s in rows if s <= step]
    return dict(rows[max(earlier)]) if earlier else {}


def markdown(payload: dict[str, Any]) -> str:
    refs = payload["references"]
    lines = [
        f"# Phone probe by pretraining update: {payload['objective']} ({payload['model_size']})",
        "",
        f"`{payload['command']}`; {payload['wall_time_s'] / 60:.1f} min wall. Linear frame-level phone probe, "
        f"test split, best layer; references: MFCC {100 * refs.get('mfcc', float('nan')):.1f}%, random encoder "
        f"{100 * refs.get('random', float('nan')):.1f}%.",
        "",
        "| update | audio seen (h) | phone probe % (layer) | " + " | ".join(payload["metric_names"]) + " |",
        "|---|---|---|" + "---|" * len(payload["metric_names"]),
    ]
    for row in payload["curve"]:
        metrics = " | ".join(
            f"{row['metrics'][m]:.4g}" if m in row["metrics"] else "–" for m in payload["metric_names"]
        )
        lines.append(
            f"| {row['step']} | {row['audio_hours']:.2f} | {100 * row['accuracy']:.1f} ({row['best_layer']}) | "
            f"{metrics} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import hf_speech_cl  # noqa: F401  (after parsing: --help needs no torch)
    from hf_speech_cl.data import DataArguments
    from hf_speech_cl.finetuning import PhoneProbe, PhoneProbeArguments

    out = args.runs_dir / args.results_name
    start = time.perf_counter()
    command = "python benchmarks/pretraining_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"pretraining: {' '.join(recipe_argv(args, out)[1:])}", flush=True)
    subprocess.run(recipe_argv(args, out), check=True)  # resumes from its newest checkpoint

    partial = args.runs_dir / f"{args.results_name}.partial.json"
    saved = json.loads(partial.read_text()) if partial.exists() else {"references": {}, "curve": []}
    done = {row["step"]: row for row in saved["curve"]}
    references: dict[str, float] = saved["references"]
    data_args = DataArguments(dataset_config=args.dataset_config)
    if args.smoke:
        from hf_speech_cl.data.synthetic import TINY_PARAMS

        data_args = DataArguments(dataset_kwargs=json.dumps(TINY_PARAMS["synthetic-librispeech"]))
    probe = PhoneProbe(PhoneProbeArguments(), data_args, seed=args.seed)
    logged = logged_metrics(out, args.objective)
    for checkpoint in checkpoint_dirs(out, args.objective):
        step = int(checkpoint.name.split("-")[1])
        if step in done:
            continue
        report = probe(checkpoint)
        by_name = {r.name: r for r in report.results}
        references = {name: by_name[name].accuracy for name in ("mfcc", "random") if name in by_name}
        best = by_name["checkpoint"]
        metrics = nearest_logged(logged, step)
        done[step] = {
            "step": step,
            # logged by the loop (crops of shorter clips are shorter); else the upper bound of full crops
            "audio_hours": metrics.pop("audio_hours_seen", step * args.batch_size * args.crop_s / 3600),
            "accuracy": best.accuracy,
            "best_layer": best.best_layer,
            "layer_accuracy": best.layer_accuracy,
            "metrics": metrics,
        }
        print(f"update {step}: phone probe {100 * best.accuracy:.1f}% (layer {best.best_layer})", flush=True)
        curve = sorted(done.values(), key=lambda r: r["step"])
        atomic_write_text(partial, json.dumps({"references": references, "curve": curve}, indent=2, default=float))
    curve = sorted(done.values(), key=lambda r: r["step"])
    payload = {
        "benchmark": "pretraining_curve",
        "command": command,
        "objective": args.objective,
        "model_size": args.model_size,
        "batch_size": args.batch_size,
        "crop_s": args.crop_s,
        "dataset_config": args.dataset_config,
        "references": references,
        "metric_names": [m for m in METRICS if any(m in row["metrics"] for row in curve)],
        "curve": curve,
        "wall_time_s": time.perf_counter() - start,
        "hardware": hardware_info(),
    }
    write_results(args.results_name, payload, markdown(payload), results_dir=args.results_dir)
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
