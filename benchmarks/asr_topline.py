#!/usr/bin/env python
"""Supervised topline: CTC from scratch on all training labels of the offline corpus, greedy and with a word LM.

What label efficiency is measured against: `recipes/finetune_asr.py --model_name_or_path none` (the `cpu` encoder,
randomly initialised) on every train utterance of the default `synthetic-librispeech` (2 h), then
`recipes/decode_asr.py` on the model it tested (lexicon beam search + word bigram LM, weights tuned on validation).
The project's target: test CER <= 25% and WER <= 60% within 60 minutes on 2 CPU cores.

Steps, each skipped when its output exists (so a killed run is rerun with the same command and resumes; the recipe
resumes from its newest checkpoint):
1. the fine-tune (`--threads` torch threads), scored on the first `--max_eval_samples` validation utterances every
   `--eval_steps` updates, the best validation CER's model tested (`--load_best_model_at_end`);
2. the LM decoding of the same validation and test utterances;
3. the report: validation curve (CER, WER, CTC loss per evaluation), test greedy and LM WER/CER, wall times,
   hardware, in `benchmarks/results/{--results_name}.{json,md}`.

Default flags (`TOPLINE_FLAGS`), measured 2026-12-03..07 on the 2-core AMD EPYC (README "Supervised topline"):
5000 updates of 8 clips, peak learning rate 2e-3 on the fairseq tri-stage schedule, dropout 0 (dropout 0.1 cost 6-7
CER points at every update while the model underfits), SpecAugment time masks over 15% of the frames (0.05 let the
model overfit after 3500 updates).

Examples:
    python benchmarks/asr_topline.py                       # about 50 min on 2 cores
    python benchmarks/asr_topline.py --output_dir /work/exp/topline --extra "--mask_time_prob 0.3"
    python benchmarks/asr_topline.py --smoke               # orchestration check on the tiny corpus
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, hardware_info, write_results
from hf_speech_cl.training import read_metrics

#: the topline's fine-tuning flags (see the module docstring for why each)
TOPLINE_FLAGS = [
    "--model_name_or_path", "none",
    "--model_size", "cpu",
    "--max_steps", "5000",
    "--learning_rate", "2e-3",
    "--lr_scheduler_type", "tri_stage",
    "--hidden_dropout", "0", "--attention_dropout", "0", "--activation_dropout", "0", "--final_dropout", "0",
    "--mask_time_prob", "0.15",
    "--eval_steps", "500",
    "--save_steps", "500",
    "--logging_steps", "50",
    "--max_eval_samples", "100",
    "--metric_for_best_model", "cer",
    "--load_best_model_at_end", "true",
]  # fmt: skip
SMOKE_FLAGS = [
    "--model_name_or_path", "none",
    "--model_size", "tiny",
    "--max_steps", "4",
    "--eval_steps", "2",
    "--save_steps", "2",
    "--logging_steps", "1",
    "--warmup_steps", "1",
    "--per_device_train_batch_size", "4",
    "--max_eval_samples", "4",
    "--load_best_model_at_end", "true",
]  # fmt: skip
TARGET = {"test_cer": 0.25, "test_wer": 0.60, "minutes_on_2_cores": 60}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/asr-topline", help="The fine-tune's output folder.")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads of the fine-tune. Default: 2.")
    parser.add_argument(
        "--extra", default="", help="More finetune_asr.py flags, one string (they override the defaults)."
    )
    parser.add_argument("--results_name", default=None, help="Default: asr_topline (asr_topline_smoke).")
    parser.add_argument("--results_dir", default=None, help="Default: benchmarks/results.")
    parser.add_argument("--lm_flags", default="", help='decode_asr.py flags, one string (e.g. "--beam_size 100").')
    parser.add_argument(
        "--recipe_wall_s",
        type=float,
        default=None,
        help="Wall time of a fine-tune that ran before this script adopted its --output_dir (the recipe's own "
        "train_results.json counts training only), recorded in the report.",
    )
    parser.add_argument("--smoke", action="store_true", help="Tiny corpus and encoder, 4 updates.")
    args = parser.parse_args(argv)
    args.results_name = args.results_name or ("asr_topline_smoke" if args.smoke else "asr_topline")
    return args


def _data_flags(args: argparse.Namespace) -> list[str]:
    if not args.smoke:
        return []
    from hf_speech_cl.data.synthetic import TINY_PARAMS

    return ["--dataset_kwargs", json.dumps(TINY_PARAMS["synthetic-librispeech"])]


def _run(cmd: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start = time.time()
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    return time.time() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    python = sys.executable
    finetune = [
        python, "recipes/finetune_asr.py", *(SMOKE_FLAGS if args.smoke else TOPLINE_FLAGS), *_data_flags(args),
        *shlex.split(args.extra), "--output_dir", str(out),
    ]  # fmt: skip
    timings_file = out.parent / f"{out.name}.timings.json"  # kept across reruns that skip finished steps
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if not (out / "all_results.json").is_file():
        print(f"[topline] fine-tuning into {out} (log: {log})", flush=True)
        timings["finetune_wall_s"] = _run(finetune, args.threads, log)
    results = json.loads((out / "all_results.json").read_text())
    decoded_file = out / "lm_decoding_results.json"
    decode = [
        python, "recipes/decode_asr.py", "--model_name_or_path", str(out), *_data_flags(args),
        "--max_eval_samples", finetune[finetune.index("--max_eval_samples") + 1], *shlex.split(args.lm_flags),
    ]  # fmt: skip
    if not decoded_file.is_file():
        print("[topline] beam search + word LM on validation and test", flush=True)
        timings["decode_wall_s"] = _run(decode, args.threads, log)
    decoded = json.loads(decoded_file.read_text())
    if args.recipe_wall_s is not None:
        timings.setdefault("finetune_wall_s", args.recipe_wall_s)
    timings_file.write_text(json.dumps(timings) + "\n")
    curve = [
        {k: r[k] for k in ("step", "eval_cer", "eval_wer", "eval_loss") if k in r}
        for r in read_metrics(out / "logs")
        if "eval_cer" in r
    ]
    train = json.loads((out / "train_results.json").read_text())
    test = {k: v for k, v in results.items() if k.startswith("test_")}
    payload = {
        "benchmark": "asr_topline",
        "finetune_command": f"OMP_NUM_THREADS={args.threads} " + shlex.join(finetune[1:]),
        "decode_command": f"OMP_NUM_THREADS={args.threads} " + shlex.join(decode[1:]),
        "threads": args.threads,
        "validation_curve": curve,
        "train": {k: train.get(k) for k in ("global_step", "best_step", "model_step", "best_metric", "wall_time_s")},
        "test_greedy": test,
        "lm_decoding": decoded,
        "timings": timings,
        "target": TARGET,
        "met": {
            "test_cer_greedy": test.get("test_cer", 1.0) <= TARGET["test_cer"],
            "test_wer_greedy": test.get("test_wer", 1.0) <= TARGET["test_wer"],
            "test_cer_lm": decoded.get("test_lm_cer", 1.0) <= TARGET["test_cer"],
            "test_wer_lm": decoded.get("test_lm_wer", 1.0) <= TARGET["test_wer"],
        },
        "hardware": hardware_info(),
    }
    write_results(
        args.results_name,
        payload,
        markdown(payload),
        results_dir=Path(args.results_dir) if args.results_dir else None,
    )
    print(markdown(payload))
    return payload


def markdown(payload: dict[str, Any]) -> str:
    curve = payload["validation_curve"]
    decoded, test, train = payload["lm_decoding"], payload["test_greedy"], payload["train"]
    lines = [
        "# Supervised topline (`benchmarks/asr_topline.py`)",
        "",
        f"Fine-tune: `{payload['finetune_command']}`; decoding: `{payload['decode_command']}`.",
        "",
        "| update | " + " | ".join(str(r["step"]) for r in curve) + " |",
        "|---|" + "---|" * len(curve),
        "| validation CER % | " + " | ".join(f"{100 * r['eval_cer']:.1f}" for r in curve) + " |",
        "| validation WER % | " + " | ".join(f"{100 * r['eval_wer']:.1f}" for r in curve) + " |",
        "| validation CTC loss | " + " | ".join(f"{r['eval_loss']:.2f}" for r in curve) + " |",
        "",
        f"Model of update {train.get('model_step')} (best validation CER at update {train.get('best_step')}) on "
        f"{int(test.get('test_num_utterances', 0))} test utterances:",
        "",
        "| decoding | test CER % | test WER % |",
        "|---|---|---|",
        f"| greedy (no LM) | {100 * test.get('test_cer', float('nan')):.1f} | "
        f"{100 * test.get('test_wer', float('nan')):.1f} |",
        f"| lexicon beam search + word bigram LM (lm_weight {decoded['lm_weight']:g}, word_score "
        f"{decoded['word_score']:g}, beam {decoded.get('beam_size', 50)}) | {100 * decoded['test_lm_cer']:.1f} | "
        f"{100 * decoded['test_lm_wer']:.1f} |",
        "",
        f"Training {train.get('wall_time_s', 0) / 60:.1f} min"
        + (
            f" ({payload['timings']['finetune_wall_s'] / 60:.1f} min with data preparation and testing)"
            if "finetune_wall_s" in payload["timings"]
            else ""
        )
        + "; LM decoding "
        f"{decoded.get('wall_time_s', 0) / 60:.1f} min. Target: test CER <= {100 * TARGET['test_cer']:.0f}% and WER <= "
        f"{100 * TARGET['test_wer']:.0f}% within {TARGET['minutes_on_2_cores']} min on 2 cores: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in payload["met"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
