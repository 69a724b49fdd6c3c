#!/usr/bin/env python
"""Pretraining throughput per objective and model size, and the cost of the input pipeline.

Every measurement runs a pretraining recipe's own `main(argv)` (recipes/pretrain_simclr.py, pretrain_wav2vec2.py,
pretrain_hubert.py), so the model, data pipeline (decoding, resampling, cropping, collation, SimCLR augmentation
on the device), hooks and training loop are exactly the recipe's. The benchmark only replaces the recipe's call of
`hf_speech_cl.training.train` by a wrapper that runs the same loop twice:

1. `preloaded`: on the batches the data pipeline would deliver, decoded, collated (and for SimCLR augmented) in
   advance and held on the training device, on a copy of the freshly built model;
2. `pipeline`: on the recipe's real DataLoader and augmentation, the run the recipe then saves as usual.

Both runs see the same batches (the order is a function of the seed; checked by comparing input shapes). Step time
is the time between the starts of consecutive updates (forward, backward, optimizer, the loop's bookkeeping and, in
the pipeline run, fetching and augmenting the next batch), after `--warmup_steps` updates. Reported per run:

- audio-seconds per second: seconds of input clips (attention-mask sums, before the two SimCLR views are made)
  per second of training, as the training loop logs it;
- step time (mean and median, s); peak memory: CUDA `max_memory_allocated`, or on CPU the process's peak resident
  set size sampled during the run (includes the dataset and Python, not only tensors);
- FLOPs per update: forward + backward of the model measured with `torch.utils.flop_counter.FlopCounterMode` on
  the first timed batch and scaled to the other batches by input size (optimizer and augmentation not counted);
  achieved TFLOP/s, and on a GPU model FLOPs utilization (MFU) against its dense bf16 peak (`GPU_BF16_PEAK_TFLOPS`);
- input-pipeline overhead = pipeline step time / preloaded step time - 1 (target: <= 10 %: the model, not the
  data, sets the pace); and the same from its parts, timed while preloading the same batches: (DataLoader fetch +
  augmentation time) / preloaded step time. On a shared machine the first compares two runs taken minutes apart
  and swings with the load; the second is the steadier estimate (an upper bound with DataLoader workers).

On a GPU the runs use bf16 autocast (`--mixed_precision bf16`); on the CPU fp32. CPU threads are what `accelerate
launch` gives a recipe ($OMP_NUM_THREADS, else 1; `--torch_threads` changes it). Each (device, objective, size)
runs in its own process (clean memory peaks, one accelerate state per process); finished ones are stored in
`benchmarks/results/throughput.json` at once and skipped when the command is repeated (`--overwrite` redoes them).

Examples:
    nice -n 19 python benchmarks/throughput.py                       # CPU: tiny and small, all four objectives
    python benchmarks/throughput.py --device cuda --sizes tiny,small,base --steps 20 --warmup_steps 5
    python benchmarks/throughput.py --objectives hubert --sizes tiny --steps 3 --warmup_steps 1 \\
        --dataset_kwargs '{"train_hours": 0.05, "eval_hours": 0.005}'
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, hardware_info, load_recipe, load_results, write_results  # noqa: E402

logger = logging.getLogger("benchmarks.throughput")

RESULTS_NAME = "throughput"
VERSION = 3  # part of every run's key: results of an older version of this script are redone, not mixed in
OVERHEAD_TARGET = 0.10  # the data pipeline may slow an update by at most 10 %

# objective → (recipe, extra recipe arguments)
OBJECTIVES: dict[str, tuple[str, list[str]]] = {
    "simclr_utterance": ("pretrain_simclr", ["--granularity", "utterance"]),
    "simclr_frame": ("pretrain_simclr", ["--granularity", "frame"]),
    "wav2vec2": ("pretrain_wav2vec2", []),
    # one labelling iteration on MFCC k-means labels (K=100); later iterations train the same model
    "hubert": ("pretrain_hubert", ["--iterations", "1", "--num_clusters", "100"]),
}
SIZES = ("tiny", "small", "cpu", "gpu", "base")  # hf_speech_cl.presets.ENCODER_PRESETS
DEFAULT_SIZES = {"cpu": "tiny,small", "cuda": "tiny,small,base"}  # base on 2 CPU cores: ~15 s per update
DEFAULT_STEPS = {"cpu": (4, 1), "cuda": (20, 5)}  # (timed, warm-up) updates; CPU: ~10 min for the default

# Dense bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets (without sparsity), matched on the device name.
GPU_BF16_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "A100": 312.0,
}


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the GPU called `name` (first matching key of `GPU_BF16_PEAK_TFLOPS`), or None."""
    for key, peak in GPU_BF16_PEAK_TFLOPS.items():
        if all(part.lower() in name.lower() for part in key.split()):
            return peak
    return None


def front_end_share(size: str, *, batch_size: int = 8, seconds: float = 4.0, steps: int = 3, seed: int = 0):
    """Wall-time split of one `Wav2Vec2ForCTC` update of preset `size` between the front end and the Transformer.

    Times forward + backward of (a) the whole model on `batch_size` random clips of `seconds` s with a CTC loss and
    (b) the front end alone (`feature_extractor` + `feature_projection`, backward from the sum of its outputs),
    median over `steps` repetitions after one warm-up, on the current device and thread count.

    Returns:
        dict: `params_m` (millions), `front_end_params_m`, `update_s` (a), `front_end_s` (b), `transformer_s`
        (a - b), `front_end_share` (b / a).
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from hf_speech_cl.presets import encoder_preset

    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**encoder_preset(size), vocab_size=32, mask_time_prob=0.0)).train()
    audio = torch.randn(batch_size, int(seconds * 16000))
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(audio.shape[1])))
    labels = torch.randint(1, 32, (batch_size, max(1, frames // 4)))

    def full() -> None:
        model(input_values=audio, labels=labels).loss.backward()

    def front() -> None:
        hidden = model.wav2vec2.feature_extractor(audio).transpose(1, 2)
        projected, _ = model.wav2vec2.feature_projection(hidden)
        projected.sum().backward()

    def median_time(fn) -> float:
        times = []
        for i in range(steps + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            if i:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    update_s, front_s = median_time(full), median_time(front)
    params = sum(p.numel() for p in model.parameters())
    front_params = sum(p.numel() for p in model.wav2vec2.feature_extractor.parameters()) + sum(
        p.numel() for p in model.wav2vec2.feature_projection.parameters()
    )
    return {
        "size": size,
        "params_m": round(params / 1e6, 2),
        "front_end_params_m": round(front_params / 1e6, 2),
        "update_s": round(update_s, 3),
        "front_end_s": round(front_s, 3),
        "transformer_s": round(update_s - front_s, 3),
        "front_end_share": round(front_s / update_s, 3),
    }


def run_front_end_share(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.torch_threads or int(os.environ.get("OMP_NUM_THREADS") or 1))
    sizes = [s.strip() for s in (args.sizes or "tiny,small,cpu").split(",") if s.strip()]
    seconds = args.crop_s or 4.0
    rows = []
    for size in sizes:
        rows.append(front_end_share(size, batch_size=args.batch_size, seconds=seconds, steps=args.steps or 3))
        logger.info("%s", rows[-1])
    payload = {
        "benchmark": "front_end_share",
        "settings": {"batch_size": args.batch_size, "seconds": seconds, "threads": torch.get_num_threads()},
        "hardware": hardware_info(),
        "rows": rows,
    }
    lines = [
        f"# Front end vs Transformer: one CTC update, {args.batch_size} x {seconds:g} s, "
        f"{torch.get_num_threads()} thread(s)",
        "",
        "| preset | params (M) | front-end params (M) | update (s) | front end (s) | Transformer (s) | front-end share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params_m']} | {r['front_end_params_m']} | {r['update_s']:.3f} | "
            f"{r['front_end_s']:.3f} | {r['transformer_s']:.3f} | {100 * r['front_end_share']:.0f}% |"
        )
    markdown_text = "\n".join(lines) + "\n"
    results_dir = Path(args.results_dir) if args.results_dir else None
    write_results("front_end_share", payload, markdown_text, results_dir=results_dir)
    print(markdown_text)
    return payload


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--objectives",
        default=",".join(OBJECTIVES),
        help=f"Comma-separated objectives among {', '.join(OBJECTIVES)}. Default: all.",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="Comma-separated encoder presets (hf_speech_cl/presets.py: tiny, small, base). Default: tiny,small on "
        "the CPU (base takes ~15 s per update on 2 cores: allowed, not default), tiny,small,base on a GPU.",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="Comma-separated devices among cpu, cuda. Default: cpu, plus cuda when a GPU is visible (bf16 there).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Timed updates per run. Default: 4 on the CPU, 20 on a GPU.",
    )
    parser.add_argument(
        "--warmup_steps",
        type=int,
        default=None,
        help="Untimed updates before them (allocator, autotuning, caches). Default: 1 on the CPU, 5 on a GPU.",
    )
    parser.add_argument(
        "--batch_size", type=int, default=8, help="Clips per update (before SimCLR's two views). Default: 8 (recipes)."
    )
    parser.add_argument(
        "--crop_s",
        type=float,
        default=None,
        help="Random crop length in seconds (--max_train_crop_s). Default: each recipe's own (SimCLR 3 s, wav2vec "
        "2.0 and HuBERT 4 s).",
    )
    parser.add_argument(
        "--dataset_name", default="synthetic-librispeech", help="Training data (the recipes' --dataset_name)."
    )
    parser.add_argument(
        "--dataset_kwargs",
        default=None,
        help='JSON object passed as the recipes\' --dataset_kwargs, e.g. \'{"train_hours": 0.05, "eval_hours": '
        "0.005}' for a small corpus. Default: none (the default 2 h offline corpus, as the recipes).",
    )
    parser.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="Train on the first N clips of the split (bounds HuBERT's k-means labelling stage; the per-clip "
        "pipeline cost does not depend on it). Default: enough for every update, 1.5 x batch_size x updates.",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes (--dataloader_num_workers). Default: 0, the recipes' default.",
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="CPU threads of each run (OMP_NUM_THREADS and torch.set_num_threads). Default: what `accelerate "
        "launch` gives a recipe: $OMP_NUM_THREADS if set, else 1.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="The recipes' --seed (order, crops, augmentation). Default: 42, the recipes' default.",
    )
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="GPU dense bf16 peak for MFU (default: from the GPU name)."
    )
    parser.add_argument(
        "--work_dir", default=None, help="Scratch folder for the recipes' outputs (default: a temporary folder)."
    )
    parser.add_argument(
        "--results_dir", default=None, help="Where throughput.json/.md are written (default: benchmarks/results/)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Redo runs whose results already exist.")
    parser.add_argument(
        "--front_end_share",
        action="store_true",
        help="Instead of the recipe runs: per preset of --sizes (default: tiny,small,cpu), the share of a CTC update "
        "(forward + backward, batch_size x crop_s s, default 8 x 4 s) spent in the convolutional front end "
        "(feature encoder + projection) against the Transformer. Written to benchmarks/results/front_end_share.*.",
    )
    parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)  # internal: one run, in a child process
    args = parser.parse_args(argv)
    if args.run_one is not None:
        return args
    args.objective_list = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in args.objective_list if o not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; choose among {list(OBJECTIVES)}")
    if args.device is None:
        import torch

        args.device = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    args.device_list = [d.strip() for d in args.device.split(",") if d.strip()]
    if any(d not in ("cpu", "cuda") for d in args.device_list):
        parser.error(f"--device takes cpu and/or cuda, got {args.device!r}")
    if args.sizes is not None and any(s.strip() not in SIZES for s in args.sizes.split(",") if s.strip()):
        parser.error(f"--sizes takes presets among {SIZES}, got {args.sizes!r}")
    if args.dataset_kwargs is not None:
        try:
            if not isinstance(json.loads(args.dataset_kwargs), dict):
                raise ValueError
        except ValueError:
            parser.error(f"--dataset_kwargs must be a JSON object, got {args.dataset_kwargs!r}")
    return args


def run_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One spec per (device, objective, size): everything a child process needs."""
    specs = []
    for device in args.device_list:
        steps, warmup = DEFAULT_STEPS[device]
        steps = args.steps if args.steps is not None else steps
        warmup = args.warmup_steps if args.warmup_steps is not None else warmup
        sizes = [s.strip() for s in (args.sizes or DEFAULT_SIZES[device]).split(",") if s.strip()]
        max_steps = warmup + steps + 1  # the last update is not timed: the loop saves right after it
        max_train_samples = args.max_train_samples or max(64, math.ceil(1.5 * args.batch_size * max_steps))
        # `accelerate launch` runs a script with OMP_NUM_THREADS=$OMP_NUM_THREADS or 1 (accelerate/commands/launch.py)
        torch_threads = args.torch_threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
        for objective in args.objective_list:
            for size in sizes:
                specs.append(
                    {
                        "version": VERSION,
                        "device": device,
                        "objective": objective,
                        "size": size,
                        "steps": steps,
                        "warmup_steps": warmup,
                        "batch_size": args.batch_size,
                        "crop_s": args.crop_s,
                        "dataset_name": args.dataset_name,
                        "dataset_kwargs": args.dataset_kwargs,
                        "max_train_samples": max_train_samples,
                        "num_workers": args.num_workers,
                        "seed": args.seed,
                        "torch_threads": torch_threads,
                        "peak_tflops": args.peak_tflops,
                    }
                )
    return specs


def spec_key(spec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec.items() if k != "peak_tflops"}, sort_keys=True)


def recipe_argv(spec: dict[str, Any], output_dir: Path) -> list[str]:
    """The recipe command line of one run."""
    _, extra = OBJECTIVES[spec["objective"]]
    max_steps = spec["warmup_steps"] + spec["steps"] + 1
    argv = [
        "--output_dir", str(output_dir),
        "--model_size", spec["size"],
        "--max_steps", str(max_steps),
        "--per_device_train_batch_size", str(spec["batch_size"]),
        "--logging_steps", str(max_steps),  # log (and synchronise) only after the last update
        "--save_steps", str(max_steps),
        "--eval_split", "none",
        "--report_to", "none",
        "--seed", str(spec["seed"]),
        "--dataset_name", spec["dataset_name"],
        "--max_train_samples", str(spec["max_train_samples"]),
        "--dataloader_num_workers", str(spec["num_workers"]),
        "--mixed_precision", "bf16" if spec["device"] == "cuda" else "no",
        *extra,
    ]  # fmt: skip
    if spec["crop_s"] is not None:
        argv += ["--max_train_crop_s", str(spec["crop_s"])]
    if spec["dataset_kwargs"]:
        argv += ["--dataset_kwargs", spec["dataset_kwargs"]]
    return argv


# ---------------------------------------------------------------------------------------------------------------------
# One run (child process): the recipe's main() with an instrumented training loop
# ---------------------------------------------------------------------------------------------------------------------


class _PeakRSS:
    """Samples the process's resident set size (/proc/self/statm) every `interval` s in a thread; `peak` in bytes."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _sample(self) -> None:
        try:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * self._page)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class _PreloadedBatches:
    """A map-style dataset whose items are whole collated batches (used with `batch_size=1`, `_first_item`)."""

    def __init__(self, batches: list[dict[str, Any]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batches[index]


def _first_item(items: list[Any]) -> Any:
    return items[0]


def count_flops(model, batch: dict[str, Any]) -> int:
    """FLOPs of one forward + backward pass of `model` on `batch` (`FlopCounterMode`: matmuls, convolutions,
    attention; elementwise ops are not counted). Gradients are cleared afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class InstrumentedTrain:
    """Stands in for `hf_speech_cl.training.train` inside a recipe: times a preloaded run, then the real one."""

    def __init__(self, spec: dict[str, Any], scratch: Path):
        self.spec = spec
        self.scratch = scratch
        self.report: dict[str, Any] = {}

    # -- helpers ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _sync(device) -> None:
        import torch

        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _preload(self, loader, accelerator, batch_transform, seed: int, count: int, sampling_rate: int):
        """The first `count` batches the training loop would draw (epoch by epoch), on the device, transformed as the
        loop transforms them.

        Returns:
            `(batches, audio_seconds, fetch_seconds, augment_seconds)`: per batch, its audio-seconds (before the
            transform), the time the DataLoader took to deliver it (decoding, resampling, cropping, collation) and
            the time of the transform (SimCLR augmentation on the device; empty list without one).
        """
        from accelerate.utils import send_to_device

        from hf_speech_cl.training import step_generator  # the loop's own per-update seeding

        device = accelerator.device
        batches, audio, fetch, augment = [], [], [], []
        epoch = 0
        while len(batches) < count:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            iterator = iter(loader)
            yielded = False
            while len(batches) < count:
                started = time.perf_counter()
                batch = next(iterator, StopIteration)
                if batch is StopIteration:
                    break
                yielded = True
                if batch is None:
                    continue
                fetch.append(time.perf_counter() - started)
                mask = batch.get("attention_mask")
                audio.append(float(mask.sum() if mask is not None else batch["input_values"].numel()) / sampling_rate)
                batch = send_to_device(batch, device)
                if batch_transform is not None:
                    step = len(batches)
                    generator = step_generator(device, seed, step, accelerator.process_index, step)
                    self._sync(device)
                    started = time.perf_counter()
                    batch = batch_transform(batch, generator)
                    self._sync(device)
                    augment.append(time.perf_counter() - started)
                batches.append(batch)
            if not yielded:
                raise ValueError("The training DataLoader yielded no batch.")
            epoch += 1
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(0)
        return batches, audio, fetch, augment

    def _timed(self, train_fn, model, loader, args, *, accelerator, step_callbacks, batch_transform, **kwargs):
        """Run the training loop; return the update start times, input shapes, peak memory, and the loop's result."""
        import torch

        device = accelerator.device
        ticks: list[float] = []
        shapes: list[list[int]] = []
        transform_seconds: list[float] = []

        def tick(_model, _step) -> None:
            self._sync(device)
            ticks.append(time.perf_counter())

        def record_shape(_module, _args, kwargs):
            values = kwargs.get("input_values")
            if values is not None:
                shapes.append(list(values.shape))

        timed_transform = None
        if batch_transform is not None:

            def timed_transform(batch, generator):
                self._sync(device)
                started = time.perf_counter()
                out = batch_transform(batch, generator)
                self._sync(device)
                transform_seconds.append(time.perf_counter() - started)
                return out

        handle = model.register_forward_pre_hook(record_shape, with_kwargs=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with _PeakRSS() as rss:
                result = train_fn(
                    model, loader, args, accelerator=accelerator, step_callbacks=[*step_callbacks, tick],
                    batch_transform=timed_transform, **kwargs,
                )  # fmt: skip
        finally:
            handle.remove()
        memory = {"peak_rss_gib": rss.peak / 1024**3}
        if device.type == "cuda":
            memory["peak_cuda_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 1024**3
            memory["peak_cuda_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 1024**3
        return result, {"ticks": ticks, "shapes": shapes, "transform_seconds": transform_seconds, **memory}

    def _summarise(self, timing: dict[str, Any], audio: list[float], numel: list[int]) -> dict[str, Any]:
        warmup, steps = self.spec["warmup_steps"], self.spec["steps"]
        intervals = [b - a for a, b in zip(timing["ticks"], timing["ticks"][1:])][warmup : warmup + steps]
        if len(intervals) < steps:
            raise RuntimeError(f"Timed {len(intervals)} updates, expected {steps}.")
        seconds = sum(intervals)
        out = {
            "step_seconds_mean": seconds / len(intervals),
            "step_seconds_median": statistics.median(intervals),
            "step_seconds": intervals,
            "audio_seconds_per_second": sum(audio[warmup : warmup + steps]) / seconds,
            "padded_samples_per_second": sum(numel[warmup : warmup + steps]) / seconds,
            **{k: v for k, v in timing.items() if k.startswith("peak_")},
        }
        if timing["transform_seconds"]:
            out["augment_seconds_mean"] = statistics.fmean(timing["transform_seconds"][warmup : warmup + steps])
        return out

    # -- the stand-in -------------------------------------------------------------------------------------------------

    def __call__(self, model, train_dataloader, args, *, accelerator, sampling_rate, batch_transform=None,
                 step_callbacks=(), **kwargs):  # fmt: skip
        import torch

        from hf_speech_cl.training import train as train_fn

        device = accelerator.device
        callbacks = list(step_callbacks)
        count = args.max_steps
        logger.info("preloading %d batches on %s", count, device)
        batches, audio, fetch, augment = self._preload(
            train_dataloader, accelerator, batch_transform, args.seed, count, sampling_rate
        )
        numel = [int(b["input_values"].numel()) for b in batches]

        shadow = copy.deepcopy(model).to(device)  # the fresh model, before the recipe's run touches it
        first = self.spec["warmup_steps"]
        last = first + self.spec["steps"]
        logger.info("counting FLOPs of one update (input %s)", list(batches[first]["input_values"].shape))
        flops = count_flops(shadow, batches[first])
        flops_per_sample = flops / numel[first]

        logger.info("preloaded run: %d updates", count)
        loader = torch.utils.data.DataLoader(_PreloadedBatches(batches), batch_size=1, collate_fn=_first_item)
        preloaded_args = dataclasses.replace(args, output_dir=str(self.scratch / "preloaded"), resume=False)
        _, preloaded = self._timed(
            train_fn, shadow, loader, preloaded_args, accelerator=accelerator, sampling_rate=sampling_rate,
            step_callbacks=callbacks, batch_transform=None, **kwargs,
        )  # fmt: skip
        del shadow, loader, batches
        # drop accelerate's references to the preloaded run's model, optimizer and loader, so they are freed before
        # the pipeline run (its memory peak is its own)
        accelerator.free_memory()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

        logger.info("pipeline run: %d updates", count)
        result, pipeline = self._timed(
            train_fn, model, train_dataloader, args, accelerator=accelerator, sampling_rate=sampling_rate,
            step_callbacks=callbacks, batch_transform=batch_transform, **kwargs,
        )  # fmt: skip

        modes = {
            "preloaded": self._summarise(preloaded, audio, numel),
            "pipeline": self._summarise(pipeline, audio, numel),
        }
        for mode in modes.values():
            mode["tflops_per_second"] = flops_per_sample * mode["padded_samples_per_second"] / 1e12
        self.report = {
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_update_first_timed": flops,
            "flops_per_update_mean": flops_per_sample * statistics.fmean(numel[first : first + self.spec["steps"]]),
            "timed_input_shapes": preloaded["shapes"][first : first + self.spec["steps"]],
            "same_batches": preloaded["shapes"] == pipeline["shapes"],
            "audio_seconds_per_update": statistics.fmean(audio[first : first + self.spec["steps"]]),
            "overhead": modes["pipeline"]["step_seconds_mean"] / modes["preloaded"]["step_seconds_mean"] - 1,
            # the same cost from its parts, timed while preloading (robust to load changes between the two runs;
            # an upper bound with DataLoader workers, which overlap fetching with compute)
            "fetch_seconds_per_update": statistics.fmean(fetch[first:last]),
            "augment_seconds_per_update": statistics.fmean(augment[first:last]) if augment else 0.0,
            "overhead_from_parts": (
                statistics.fmean(fetch[first:last]) + (statistics.fmean(augment[first:last]) if augment else 0.0)
            )
            / modes["preloaded"]["step_seconds_mean"],
            "mixed_precision": accelerator.mixed_precision,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **modes,
        }
        return result


def run_one(spec: dict[str, Any], output_path: Path) -> None:
    """Child process: run the recipe of `spec` with the instrumented loop and write the report to `output_path`."""
    import torch

    torch.set_num_threads(spec["torch_threads"])
    recipe_name, _ = OBJECTIVES[spec["objective"]]
    recipe = load_recipe(recipe_name)
    with tempfile.TemporaryDirectory(dir=output_path.parent, prefix=".scratch-") as scratch:
        scratch = Path(scratch)
        probe = InstrumentedTrain(spec, scratch)
        recipe.train = probe  # the recipe calls `train(...)` by this module-level name
        argv = recipe_argv(spec, scratch / "recipe")
        logger.info("%s %s", recipe_name, " ".join(argv))
        started = time.perf_counter()
        recipe.main(argv)
        report = {
            **spec,
            "recipe": f"recipes/{recipe_name}.py",
            "recipe_argv": argv,
            "wall_seconds": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(),
            "hardware": hardware_info(),
            **probe.report,
        }
    output_path.write_text(json.dumps(report, indent=2))


# ---------------------------------------------------------------------------------------------------------------------
# Orchestration (parent process)
# ---------------------------------------------------------------------------------------------------------------------


def run_in_child(spec: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Run one spec in a fresh Python process (CPU runs see no GPU) and return its report."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TQDM_DISABLE", "1")
    if spec["device"] == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    output = work_dir / f"{spec['device']}-{spec['objective']}-{spec['size']}.json"
    output.unlink(missing_ok=True)
    env["BENCH_THROUGHPUT_OUTPUT"] = str(output)  # where the child writes its report
    env["OMP_NUM_THREADS"] = str(spec["torch_threads"])
    command = [sys.executable, str(Path(__file__).resolve()), "--run_one", json.dumps(spec)]
    completed = subprocess.run(command, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    if completed.returncode != 0 or not output.is_file():
        raise RuntimeError(f"The run {spec['device']}/{spec['objective']}/{spec['size']} failed "
                           f"(exit code {completed.returncode}); its log is above.")  # fmt: skip
    return json.loads(output.read_text())


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _flag(overhead: float) -> str:
    return f"{overhead:+.1%}" + ("" if overhead <= OVERHEAD_TARGET else " ⚠")


def _order(run: dict[str, Any]) -> tuple:
    objectives, sizes = list(OBJECTIVES), list(SIZES)
    return (run["device"], objectives.index(run["objective"]), sizes.index(run["size"]))


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Pretraining throughput",
        "",
        "Each run is the recipe's own `main()` (batch size, crop and everything else at the recipe's defaults "
        "unless the settings say otherwise). `preloaded`: the same updates on batches decoded, collated and "
        "augmented in advance; overhead = pipeline / preloaded step time - 1 (target <= "
        f"{OVERHEAD_TARGET:.0%}). audio-s/s: seconds of input clips per second. FLOPs: forward + backward "
        "(FlopCounterMode). MFU: against the GPU's dense bf16 peak. Memory: CUDA peak allocated on a GPU, peak "
        "process RSS on the CPU.",
        "",
    ]
    for device in sorted({r["device"] for r in payload["runs"]}):
        runs = sorted((r for r in payload["runs"] if r["device"] == device), key=_order)
        first = runs[0]
        hardware = first.get("hardware") or payload["hardware"]
        load = ", ".join(f"{x:.1f}" for x in hardware.get("load_average") or [])
        lines += [
            f"## {device}: {first['device_name'] if device == 'cuda' else hardware['cpu_model']}",
            "",
            f"{hardware['cpu_count']} CPUs, torch {hardware['torch']} with {first['torch_threads']} thread(s), "
            f"precision {first['mixed_precision']}, batch {first['batch_size']} clips, {first['warmup_steps']} "
            f"warm-up + {first['steps']} timed updates; load average {load} when the first run started "
            "(a shared machine slows every run).",
            "",
            "| objective | size | params | audio-s/update | audio-s/s (pipeline) | audio-s/s (preloaded) | step s "
            "(pipeline) | step s (preloaded) | overhead measured | fetch s | augment s | overhead from parts "
            "| peak memory (GiB) | GFLOPs/update | TFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            pipe, pre = r["pipeline"], r["preloaded"]
            memory = pipe.get("peak_cuda_allocated_gib", pipe["peak_rss_gib"])
            mfu = r.get("mfu")
            lines.append(
                f"| {r['objective']} | {r['size']} | {r['num_parameters'] / 1e6:.1f} M | "
                f"{r['audio_seconds_per_update']:.1f} | {pipe['audio_seconds_per_second']:.1f} | "
                f"{pre['audio_seconds_per_second']:.1f} | {pipe['step_seconds_mean']:.3f} | "
                f"{pre['step_seconds_mean']:.3f} | {_flag(r['overhead'])} | {r['fetch_seconds_per_update']:.3f} | "
                f"{r['augment_seconds_per_update']:.3f} | {_flag(r['overhead_from_parts'])} | {memory:.2f} | "
                f"{r['flops_per_update_mean'] / 1e9:.1f} | {pipe['tflops_per_second']:.3f} | "
                f"{_fmt(mfu and 100 * mfu, '.1f')}{'%' if mfu else ''} |"
            )
        lines.append("")
    summary = payload["summary"]
    measured, parts = summary["over_target_measured"], summary["over_target_from_parts"]
    lines += [
        "## Input pipeline",
        "",
        f"Target: the pipeline adds <= {OVERHEAD_TARGET:.0%} to an update. Measured (pipeline vs preloaded run): "
        f"{summary['runs'] - len(measured)} of {summary['runs']} runs within it"
        + (f" (over: {', '.join(f'{k} {v:+.1%}' for k, v in measured.items())})" if measured else "")
        + f". From its parts (fetch + augmentation time / preloaded update): {summary['runs'] - len(parts)} of "
        f"{summary['runs']} within it"
        + (f" (over: {', '.join(f'{k} {v:+.1%}' for k, v in parts.items())})" if parts else "")
        + ". The measured figure compares two runs and swings with the machine's load; the parts are timed on the "
        "same batches and are the steadier estimate (an upper bound with DataLoader workers, which overlap).",
        "",
    ]
    return "\n".join(lines)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def name(r: dict[str, Any]) -> str:
        return f"{r['device']}/{r['objective']}/{r['size']}"

    return {
        "runs": len(runs),
        "over_target_measured": {name(r): r["overhead"] for r in runs if r["overhead"] > OVERHEAD_TARGET},
        "over_target_from_parts": {
            name(r): r["overhead_from_parts"] for r in runs if r["overhead_from_parts"] > OVERHEAD_TARGET
        },
        "overhead_by_objective": {
            objective: {
                f"{r['device']}/{r['size']}": {"measured": r["overhead"], "from_parts": r["overhead_from_parts"]}
                for r in runs
                if r["objective"] == objective
            }
            for objective in dict.fromkeys(r["objective"] for r in runs)
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.run_one is not None:
        spec = json.loads(args.run_one)
        run_one(spec, Path(os.environ.get("BENCH_THROUGHPUT_OUTPUT") or ""))
        return None

    if args.front_end_share:
        return run_front_end_share(args)
    results_dir = Path(args.results_dir) if args.results_dir else None
    hardware = hardware_info()
    previous = load_results(RESULTS_NAME, results_dir=results_dir) or {}
    done = {} if args.overwrite else {r["key"]: r for r in previous.get("runs", []) if "key" in r}
    specs = run_specs(args)
    # runs of other (device, objective, size) triples stay in the results, e.g. CPU runs when only cuda is rerun
    current = {(spec["device"], spec["objective"], spec["size"]) for spec in specs}
    kept = [
        r
        for r in previous.get("runs", [])
        if r.get("version") == VERSION and (r["device"], r["objective"], r["size"]) not in current
    ]
    runs: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        payload = {
            "benchmark": RESULTS_NAME,
            "settings": {k: v for k, v in vars(args).items() if k not in ("run_one",)},
            "hardware": hardware,
            "gpu_bf16_peak_tflops_table": GPU_BF16_PEAK_TFLOPS,
            "runs": sorted(runs + kept, key=_order),
            "summary": summarise(sorted(runs + kept, key=_order)),
        }
        write_results(RESULTS_NAME, payload, markdown(payload), results_dir=results_dir)
        return payload

    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="hf_speech_cl-throughput-") as work:
        work_dir = Path(work)
        for index, spec in enumerate(specs, start=1):
            key = spec_key(spec)
            name = f"{spec['device']}/{spec['objective']}/{spec['size']}"
            if key in done:
                logger.info("[%d/%d] %s: result exists, skipped", index, len(specs), name)
                runs.append(done[key])
                continue
            logger.info("[%d/%d] %s ...", index, len(specs), name)
            run = run_in_child(spec, work_dir)
            peak = spec["peak_tflops"] or (gpu_peak_tflops(run["device_name"]) if spec["device"] == "cuda" else None)
            run["gpu_bf16_peak_tflops"] = peak
            run["mfu"] = run["pipeline"]["tflops_per_second"] / peak if peak else None
            run["mfu_preloaded"] = run["preloaded"]["tflops_per_second"] / peak if peak else None
            run["key"] = key
            runs.append(run)
            logger.info(
                "%s: %.1f audio-s/s, step %.3f s (preloaded %.3f s, overhead %+.1f%%, from parts %+.1f%%), "
                "%.1f GFLOPs/update",
                name, run["pipeline"]["audio_seconds_per_second"], run["pipeline"]["step_seconds_mean"],
                run["preloaded"]["step_seconds_mean"], 100 * run["overhead"], 100 * run["overhead_from_parts"],
                run["flops_per_update_mean"] / 1e9,
            )  # fmt: skip
            save()
    payload = save()
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
