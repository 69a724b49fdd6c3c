#!/usr/bin/env python
"""k-means for HuBERT iteration-1 pseudo-labels: the package's faiss default against fairseq's scikit-learn settings.

Both backends of `hf_speech_cl.pseudo_labels.fit_kmeans` cluster the SAME 39-d MFCC frames (13 + Δ + ΔΔ, fairseq
`dump_mfcc_feature.py`, computed by `HubertPseudoLabeler.for_mfcc` and `dump_features`) of the sample fairseq's
`learn_kmeans.py --percent 0.1` fits on: whole utterances, 10 % of the training split. For every K we measure

- fit time (`KMeansResult.fit_seconds`: the fit alone, features already in RAM);
- labelling time of every sampled frame: ours is the package's own path (`assign_clusters` over `FeatureStore`
  blocks, as `label_split` does); fairseq's is `dump_km_label.py`'s `ApplyKmeans` (numpy, one utterance at a time);
- inertia: mean squared distance of a frame to its centroid (the same formula for both, `mean_squared_distance`);
- PNMI, phone purity, cluster purity against the corpus's `phone_alignment` (Hsu et al. 2021 §IV-E, the package's
  `label_quality`; frames aligned on their window centre as the HuBERT recipe does).

Runs per K:
- `fairseq`: `MiniBatchKMeans` with fairseq's `learn_kmeans.py` defaults (batch 10000, k-means++, n_init 20,
  max_iter 100, tol 0, max_no_improvement 100, reassignment_ratio 0; `SKLEARN_DEFAULTS`), the libraries' own
  thread count (fairseq sets none).
- `default`: `faiss.Kmeans` with the package defaults (`FAISS_DEFAULTS`: niter 100, every sampled frame) and the
  HuBERT recipe's default `--labeling_threads 1`.
- a sweep of faiss `niter` × threads (and scikit-learn on 1 thread), to find what meets the target when the
  default does not.

Target (the project's): the default fits and labels >= 10x faster than `fairseq` at equal PNMI (within 0.01).

Results go to `benchmarks/results/kmeans.json` and `.md`; every finished run is stored at once and skipped when the
command is repeated (`--overwrite` redoes them). The feature dump is cached under
`{HF_SPEECH_CL_CACHE or ~/.cache/hf_speech_cl}/benchmarks/` (a resumable stage).

Examples:
    nice -n 19 python benchmarks/kmeans.py
    python benchmarks/kmeans.py --num_clusters 100 --sweep_niter "" --dataset_kwargs '{"train_hours": 0.05}'
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import hardware_info, load_results, write_results  # noqa: E402

logger = logging.getLogger("benchmarks.kmeans")

RESULTS_NAME = "kmeans"
SPEEDUP_TARGET = 10.0  # the project's target: >= 10x faster than fairseq's settings ...
PNMI_TOLERANCE = 0.01  # ... at a PNMI no more than 0.01 below fairseq's


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as is, and every flag's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument(
        "--dataset_name",
        default="synthetic-librispeech",
        help="Dataset spec (as the recipes' --dataset_name); it needs a `phone_alignment` column for PNMI.",
    )
    parser.add_argument(
        "--dataset_kwargs",
        default=None,
        help="JSON object of corpus size parameters / load_dataset arguments, e.g. '{\"train_hours\": 0.05}' for "
        "a small corpus. None: the default 2 h synthetic-librispeech (built on first use, ~3 min), as the recipes.",
    )
    parser.add_argument("--split", default="train", help="Split whose features are clustered (fairseq: train).")
    parser.add_argument(
        "--sample_fraction",
        type=float,
        default=0.1,
        help="Fraction of the split's utterances (whole utterances) dumped and clustered; fairseq "
        "learn_kmeans.py --percent 0.1.",
    )
    parser.add_argument("--num_clusters", default="100,500", help="Comma-separated K values (HuBERT: 100, 500).")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the `default` faiss run: the HuBERT recipe's --labeling_threads default (1).",
    )
    parser.add_argument(
        "--sweep_niter",
        default="10,20,50",
        help="faiss `niter` values tried beside the default (100); empty: no sweep.",
    )
    parser.add_argument(
        "--sweep_threads", default="1,2", help="Thread counts of the sweep runs (faiss and scikit-learn)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the utterance sample and the k-means inits.")
    parser.add_argument(
        "--cache_dir",
        default=None,
        help="Cache folder of the corpora and the feature dump (None: the package's, $HF_SPEECH_CL_CACHE or "
        "~/.cache/hf_speech_cl).",
    )
    parser.add_argument(
        "--results_dir", default=None, help="Where kmeans.json/.md are written (None: benchmarks/results/)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Redo runs whose results already exist.")
    args = parser.parse_args(argv)
    args.clusters = [int(k) for k in args.num_clusters.split(",") if k.strip()]
    args.niters = [int(n) for n in args.sweep_niter.split(",") if n.strip()]
    args.sweep_thread_counts = [int(t) for t in args.sweep_threads.split(",") if t.strip()]
    args.corpus_kwargs = json.loads(args.dataset_kwargs) if args.dataset_kwargs else {}
    if not isinstance(args.corpus_kwargs, dict):
        parser.error(f"--dataset_kwargs must be a JSON object, got {args.dataset_kwargs!r}")
    if not 0 < args.sample_fraction <= 1:
        parser.error(f"--sample_fraction must lie in (0, 1], got {args.sample_fraction}")
    if not args.clusters or min(args.clusters) < 2:
        parser.error(f"--num_clusters needs integers >= 2, got {args.num_clusters!r}")
    return args


@contextlib.contextmanager
def threads(count: int | None, backend: str) -> Iterator[None]:
    """`count` CPU threads for torch, BLAS and the k-means backend's OpenMP (None: the libraries' defaults), via
    the HuBERT iterator's own `limit_threads`."""
    from hf_speech_cl.hubert_iteration import limit_threads

    with limit_threads(count, backend):
        yield


def fairseq_apply_kmeans(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid ids as fairseq's `examples/hubert/simple_kmeans/dump_km_label.py` `ApplyKmeans` computes them
    on the CPU: `|x|² - 2 x·Cᵀ + |C|²`, argmin, in numpy. The benchmark's baseline, called once per utterance as
    fairseq's `dump_label` does."""
    c_np = centroids.T
    c_norm = (c_np**2).sum(0, keepdims=True)
    dist = (features**2).sum(1, keepdims=True) - 2 * np.matmul(features, c_np) + c_norm
    return np.argmin(dist, axis=1)


def dump_sample_features(args: argparse.Namespace):
    """The MFCC features of the k-means sample (cached), the sampled rows' phone alignments and the frame offset.

    Returns:
        `(store, alignments, frame_offset_s, label_rate_hz, dump_info)`.
    """
    from hf_speech_cl.data import load_speech_dataset
    from hf_speech_cl.data.synthetic import default_cache_dir
    from hf_speech_cl.models.hubert_pretraining import HubertPseudoLabeler
    from hf_speech_cl.pseudo_labels import FeatureStore, dump_features, run_stage

    labeler = HubertPseudoLabeler.for_mfcc(2)  # K does not matter for the features
    dataset = load_speech_dataset(
        args.dataset_name,
        split=args.split,
        sampling_rate=labeler.config.sampling_rate,
        cache_dir=args.cache_dir,
        **args.corpus_kwargs,
    )
    if "phone_alignment" not in dataset.column_names:
        raise ValueError(f"{args.dataset_name!r} has no phone_alignment column; PNMI cannot be measured.")
    count = max(1, math.ceil(len(dataset) * args.sample_fraction))
    key = json.dumps([args.dataset_name, args.corpus_kwargs, args.split, len(dataset), count, args.seed])
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    folder = cache / "benchmarks" / f"kmeans-mfcc-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    logger.info(
        "MFCC features of %d of %d utterances of %s/%s in %s",
        count,
        len(dataset),
        args.dataset_name,
        args.split,
        folder,
    )
    with threads(1, "faiss"):  # the HuBERT recipe dumps with 1 thread (9x faster than 2 on a shared 2-core machine)
        stage = run_stage(
            "features",
            folder,
            lambda out: dump_features(dataset, labeler, out, max_utterances=count, seed=args.seed, progress=False),
        )
    store = FeatureStore(folder)
    rows = store.info["rows"] if store.info.get("rows") is not None else list(range(len(dataset)))
    alignments = dataset.select(rows).select_columns(["phone_alignment"])["phone_alignment"]
    info = {
        "folder": str(folder),
        "utterances": len(store),
        "split_utterances": len(dataset),
        "frames": store.num_frames,
        "dim": store.dim,
        "audio_hours": store.info["audio_seconds"] / 3600,
        "dump_seconds": store.info["seconds"],
        "reused": stage.skipped,
    }
    return store, list(alignments), labeler.config.frame_center_seconds, labeler.config.label_rate, info


def warm_up(sample: np.ndarray, seed: int) -> None:
    """Import both backends and fit each once on a few frames, so no timed run pays one-time costs (imports, OpenMP
    thread pools, first-call dispatch)."""
    from hf_speech_cl.pseudo_labels import assign_clusters, fit_kmeans

    small = sample[: min(len(sample), 2000)]
    for backend, kwargs in (("sklearn", {"max_iter": 2, "n_init": 1}), ("faiss", {"niter": 2})):
        result = fit_kmeans(small, 2, backend, sample_fraction=1.0, seed=seed, **kwargs)
        assign_clusters(small, result.centroids)
        fairseq_apply_kmeans(small, result.centroids)


def run_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs per K: name, backend, backend kwargs, threads, labelling method."""
    from hf_speech_cl.pseudo_labels.kmeans import FAISS_DEFAULTS

    configs = [
        {"name": "fairseq", "backend": "sklearn", "kwargs": {}, "threads": None, "labeling": "fairseq"},
        {"name": "default", "backend": "faiss", "kwargs": {}, "threads": args.threads, "labeling": "package"},
    ]
    for count in args.sweep_thread_counts:
        if count != args.threads:
            configs.append(
                {
                    "name": f"faiss niter={FAISS_DEFAULTS['niter']} t={count}",
                    "backend": "faiss",
                    "kwargs": {},
                    "threads": count,
                    "labeling": "package",
                }
            )
        for niter in args.niters:
            configs.append(
                {
                    "name": f"faiss niter={niter} t={count}",
                    "backend": "faiss",
                    "kwargs": {"niter": niter},
                    "threads": count,
                    "labeling": "package",
                }
            )
    configs += [
        {"name": f"sklearn t={count}", "backend": "sklearn", "kwargs": {}, "threads": count, "labeling": "fairseq"}
        for count in args.sweep_thread_counts
    ]
    return configs


def run_key(config: dict[str, Any], k: int, dump_key: str) -> str:
    return json.dumps([dump_key, k, config["backend"], config["kwargs"], config["threads"], config["labeling"]])


def measure(config: dict[str, Any], k: int, store, sample: np.ndarray, phone_frames, seed: int) -> dict[str, Any]:
    """Fit, label and score one configuration."""
    from hf_speech_cl.pseudo_labels import assign_clusters, fit_kmeans, label_quality, paired_frames

    with threads(config["threads"], config["backend"]):
        result = fit_kmeans(sample, k, config["backend"], sample_fraction=1.0, seed=seed, **config["kwargs"])
        started = time.perf_counter()
        if config["labeling"] == "fairseq":
            labels = [fairseq_apply_kmeans(np.asarray(store[i]), result.centroids) for i in range(len(store))]
        else:  # the package's path: label_split(features=store) → iter_blocks → assign_clusters
            labels = []
            for first, last, block in store.iter_blocks():
                flat = assign_clusters(block, result.centroids)
                labels += np.split(flat, np.cumsum(store.lengths[first:last])[:-1])
        label_seconds = time.perf_counter() - started
    phones, frame_labels, _ = paired_frames(labels, phone_frames)
    quality = label_quality(phones, frame_labels)
    return {
        "name": config["name"],
        "num_clusters": k,
        "backend": config["backend"],
        "params": result.params,
        "threads": config["threads"],
        "labeling": config["labeling"],
        "fit_seconds": result.fit_seconds,
        "label_seconds": label_seconds,
        "total_seconds": result.fit_seconds + label_seconds,
        "inertia": result.inertia,
        "num_frames": result.num_frames,
        **{key: quality[key] for key in ("pnmi", "phone_purity", "cluster_purity", "num_labels")},
    }


def assess(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed-up over `fairseq` and whether each run meets the target, per K; the fastest run meeting it for every K."""
    by_k: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_k.setdefault(run["num_clusters"], {})[run["name"]] = run
    summary: dict[str, Any] = {"per_k": {}, "meets_target_for_every_k": {}}
    names = None
    for k, named in sorted(by_k.items()):
        if "fairseq" not in named:
            continue
        base = named["fairseq"]
        for run in named.values():
            run["speedup_vs_fairseq"] = base["total_seconds"] / run["total_seconds"]
            run["fit_speedup_vs_fairseq"] = base["fit_seconds"] / run["fit_seconds"]
            run["pnmi_delta_vs_fairseq"] = run["pnmi"] - base["pnmi"]
            run["meets_target"] = bool(
                run["speedup_vs_fairseq"] >= SPEEDUP_TARGET and run["pnmi_delta_vs_fairseq"] >= -PNMI_TOLERANCE
            )
        best_sklearn = min(
            (run for run in named.values() if run["backend"] == "sklearn"), key=lambda run: run["total_seconds"]
        )
        summary["per_k"][k] = {
            "fastest_sklearn": best_sklearn["name"],
            "default_speedup_vs_fastest_sklearn": (
                best_sklearn["total_seconds"] / named["default"]["total_seconds"] if "default" in named else None
            ),
            "default_speedup": named.get("default", {}).get("speedup_vs_fairseq"),
            "default_pnmi_delta": named.get("default", {}).get("pnmi_delta_vs_fairseq"),
            "default_meets_target": named.get("default", {}).get("meets_target"),
        }
        meeting = {name for name, run in named.items() if run.get("meets_target")}
        names = meeting if names is None else names & meeting
    for name in sorted(names or []):
        summary["meets_target_for_every_k"][name] = {
            k: by_k[k][name]["speedup_vs_fairseq"] for k in sorted(by_k) if name in by_k[k]
        }
    if names:
        fastest = max(names, key=lambda n: min(by_k[k][n]["speedup_vs_fairseq"] for k in by_k if n in by_k[k]))
        summary["recommended"] = fastest
    return summary


def markdown(payload: dict[str, Any]) -> str:
    dump = payload["features"]
    lines = [
        "# k-means for HuBERT labels: faiss (package default) vs fairseq's scikit-learn settings",
        "",
        f"MFCC (39-d) of {dump['utterances']} of {dump['split_utterances']} utterances "
        f"({dump['audio_hours']:.2f} h, {dump['frames']:,} frames) of `{payload['settings']['dataset_name']}` "
        f"`{payload['settings']['split']}` (sample fraction {payload['settings']['sample_fraction']}). "
        f"Machine: {payload['hardware']['cpu_model']}, {payload['hardware']['cpu_count']} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in payload['hardware']['load_average'])} at the start (shared machine: times "
        "are indicative). Labelling: every sampled frame; fairseq = `ApplyKmeans` (numpy, per utterance), package = "
        "`assign_clusters` (torch, blocks). Speed-up = fairseq's (fit + label) time / the run's.",
        "",
        f"Target: `default` >= {SPEEDUP_TARGET:g}x faster than `fairseq` with PNMI no more than {PNMI_TOLERANCE} "
        "below it.",
        "",
    ]
    for k in sorted({r["num_clusters"] for r in payload["runs"]}):
        lines += [
            f"## K = {k}",
            "",
            "| run | backend | threads | fit (s) | label (s) | speed-up | inertia | PNMI | ΔPNMI | phone purity "
            "| target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in (r for r in payload["runs"] if r["num_clusters"] == k):
            speedup = run.get("speedup_vs_fairseq")
            delta = run.get("pnmi_delta_vs_fairseq")
            lines.append(
                f"| {run['name']} | {run['backend']} | {run['threads'] or 'default'} | {run['fit_seconds']:.2f} | "
                f"{run['label_seconds']:.2f} | {f'{speedup:.1f}x' if speedup else '-'} | {run['inertia']:.2f} | "
                f"{run['pnmi']:.4f} | {f'{delta:+.4f}' if delta is not None else '-'} | {run['phone_purity']:.3f} | "
                f"{'yes' if run.get('meets_target') else 'no'} |"
            )
        lines.append("")
    summary = payload["summary"]
    lines += ["## Verdict", ""]
    for k, row in sorted(summary["per_k"].items(), key=lambda item: int(item[0])):
        if row["default_speedup"] is None:
            continue
        lines.append(
            f"- K={k}: default is {row['default_speedup']:.1f}x faster than fairseq's settings, PNMI "
            f"{row['default_pnmi_delta']:+.4f}: target {'met' if row['default_meets_target'] else 'NOT met'} "
            f"({row['default_speedup_vs_fastest_sklearn']:.1f}x against the fastest scikit-learn thread setting, "
            f"`{row['fastest_sklearn']}`)."
        )
    if summary.get("recommended"):
        lines.append(
            f"- Fastest run meeting the target at every K: `{summary['recommended']}` "
            f"({', '.join(f'K={k}: {v:.1f}x' for k, v in summary['meets_target_for_every_k'][summary['recommended']].items())})."
        )
    else:
        lines.append("- No run met the target at every K.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results_dir = Path(args.results_dir) if args.results_dir else None
    hardware = hardware_info()

    store, alignments, frame_offset, label_rate, dump_info = dump_sample_features(args)
    from hf_speech_cl.pseudo_labels import alignment_to_frames, phone_inventory

    inventory = phone_inventory(alignments)
    phone_frames = [
        alignment_to_frames(alignment, label_rate, inventory, int(length), frame_offset=frame_offset)
        for alignment, length in zip(alignments, store.lengths, strict=True)
    ]
    sample = store.gather(np.arange(len(store)))
    warm_up(sample, args.seed)
    dump_key = Path(dump_info["folder"]).name

    previous = load_results(RESULTS_NAME, results_dir=results_dir) or {}
    done = {} if args.overwrite else {run["key"]: run for run in previous.get("runs", []) if "key" in run}
    settings = {k: v for k, v in vars(args).items() if k not in ("corpus_kwargs",)}
    runs: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        payload = {
            "benchmark": RESULTS_NAME,
            "settings": settings,
            "hardware": hardware,
            "features": dump_info,
            "runs": runs,
            "summary": assess(runs),
        }
        write_results(RESULTS_NAME, payload, markdown(payload), results_dir=results_dir)
        return payload

    configs = run_configs(args)
    total = len(configs) * len(args.clusters)
    for k in args.clusters:
        for config in configs:
            key = run_key(config, k, dump_key)
            if key in done:
                logger.info("K=%d %s: result exists, skipped", k, config["name"])
                runs.append(done[key])
                continue
            logger.info("[%d/%d] K=%d %s ...", len(runs) + 1, total, k, config["name"])
            run = measure(config, k, store, sample, phone_frames, args.seed)
            run["key"] = key
            runs.append(run)
            logger.info(
                "K=%d %s: fit %.2f s, label %.2f s, inertia %.3f, PNMI %.4f",
                k,
                config["name"],
                run["fit_seconds"],
                run["label_seconds"],
                run["inertia"],
                run["pnmi"],
            )
            save()
    payload = save()
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
