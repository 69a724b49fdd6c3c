"""The HuBERT pseudo-label iteration (Hsu et al. 2021) as a Python API: features → k-means → labels → label quality →
masked-prediction training, each stage resumable; `recipes/pretrain_hubert.py` is its command line.

The method (Hsu et al. 2021 §II-B, §IV-C; fairseq `examples/hubert`): iteration 1 clusters 39-d MFCCs (13 + Δ + ΔΔ)
of the training split into K=100 clusters (`simple_kmeans/dump_mfcc_feature.py`, `learn_kmeans.py`), labels every
split (`dump_km_label.py`) and trains a `HubertForPreTraining` to predict the labels of masked frames. Iteration
i > 1 clusters hidden layer L of iteration i-1's model (`HubertArguments.label_layer`, default `default_label_layer`
of its depth N: N // 2, i.e. 6 of BASE's 12 as in the paper and 1 of `tiny`'s 2; 9 for N >= 24) into K=500
clusters, relabels, and trains a fresh model on the new labels. Fresh, not continued (unless `init_from` or
`continue_iterations`), as in the paper (§IV-C: each iteration trains a new model on the new targets) and fairseq's
recipe: the prediction head changes size with K anyway, and each iteration's model then depends only on its labels.
`continue_iterations` starts iteration i from iteration i-1's encoder instead (a new head): on a CPU budget a fresh
iteration-2 model would spend its few updates relearning what iteration 1 knew. Label quality (phone purity, cluster
purity, PNMI: §IV-E, fairseq `measure_teacher_quality.py`) is measured on every split with phone alignments.

With `init_from` (continued pretraining) a HuBERT checkpoint (stock `HubertModel` / `HubertForCTC` or one of these
outputs) plays iteration 1's model: the run starts at iteration 2, whose labels come from layer `label_layer` of the
checkpoint and whose training starts from its encoder weights with a new prediction head; each further iteration
continues from the model its labels came from. The checkpoint's architecture is kept (`check_fits`).

Layout of `training_args.output_dir`:

    iteration-{i}/iteration.json    the iteration's settings (a rerun with other settings is refused)
    iteration-{i}/features/{split}/ features k-means is fitted on (memory-mapped float32)
    iteration-{i}/labeler/          `HubertPseudoLabeler.from_pretrained(...)` + centroids, kmeans.json, label_info.json
    iteration-{i}/labels/{split}/   the labels beside the dataset (`save_to_disk`: `labels`, `id`) + label_info.json
    iteration-{i}/metrics/{split}/  phone purity, cluster purity, PNMI when the dataset has phone alignments
    iteration-{i}/model/            checkpoints, logs, the trained model, its card and phone_probe.json (a linear
                                    frame-level phone probe of its frozen layers, MFCC and a random encoder as
                                    references; `PhoneProbeArguments(phone_probe=False)` skips it)
    config.json, model.safetensors, README.md, ...   the last iteration's model: `AutoModelForPreTraining` (after
                                    `import hf_speech_cl`), stock `HubertForCTC.from_pretrained(out)`

Resumability: every labelling stage is published atomically with a completion marker (`run_stage`), so an interrupted
one restarts cleanly and a finished one is skipped; training continues from its newest checkpoint and a finished
training (`iteration-{i}/model/stage_complete.json`) is skipped; `iteration.json` refuses to resume an iteration that
was started with other settings. The training arguments (`max_steps`, `learning_rate`, ...) apply to EACH
iteration's training (`--iteration_max_steps 3000,1000` gives the iterations different numbers of updates). Under `torchrun` / `accelerate launch` the labels are made once (main process first, the others
then find them complete) and training is data-parallel.

One iteration or one stage from a notebook (the recipe's defaults are `PretrainingArguments(max_steps=300,
per_device_train_batch_size=8, learning_rate=2e-3)` and `DataArguments(max_train_crop_s=2.0)`):

    import hf_speech_cl
    from hf_speech_cl.data import DataArguments
    from hf_speech_cl.finetuning import PhoneProbeArguments
    from hf_speech_cl.hubert_iteration import HubertArguments, HubertIterator
    from hf_speech_cl.training import PretrainingArguments

    iterator = HubertIterator(
        HubertArguments(iterations=2, num_clusters="100,500"),
        DataArguments(max_train_crop_s=2.0),
        PretrainingArguments(output_dir="outputs/hubert-notebook", learning_rate=2e-3),
        PhoneProbeArguments(phone_probe=False),
    )
    labels = iterator.label(1)     # MFCC → k-means → labels → quality; again: every stage skipped
    result = iterator.train(1)     # masked prediction on them; again: skipped
    iterator.label(2)              # layer features of iteration 1's model
    iterator.history[-1]["metrics"]   # {split: {"phone_purity": ..., "cluster_purity": ..., "pnmi": ...}}
    out = iterator.run()           # whatever is left, the final model in outputs/hubert-notebook
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from transformers import AutoConfig, PretrainedConfig, Wav2Vec2FeatureExtractor

from .continued_pretraining import (
    check_fits,
    checkpoint_config,
    checkpoint_normalizes,
    encoder_architecture,
    load_hubert_for_continued_pretraining,
    matching_preset,
)
from .data import DataArguments, build_pretraining_dataloaders, load_split
from .finetuning import PhoneProbe, PhoneProbeArguments
from .models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig
from .presets import ENCODER_PRESETS, default_model_size, encoder_preset
from .pseudo_labels import (
    CROP_OFFSET_COLUMN,
    DataCollatorForHubertPretraining,
    PseudoLabelArguments,
    PseudoLabelResult,
    is_stage_complete,
    run_pseudo_label_iteration,
)
from .training import (
    PretrainingArguments,
    TrainResult,
    finalize_pretraining,
    make_accelerator,
    make_partial_state,
    push_folder_to_hub,
)
from .training import train as train_model
from .training.checkpointing import atomic_write_text

__all__ = [
    "CITATION",
    "OBJECTIVE_SETTINGS",
    "QUALITY_METRICS",
    "SETTINGS_FILE",
    "STAGE_MARKER",
    "HubertArguments",
    "HubertIterator",
    "build_config",
    "check_settings",
    "default_label_layer",
    "finalize",
    "finish",
    "hubert_loss_normalizer",
    "limit_threads",
    "load_label_splits",
    "model_size_of",
    "objective_description",
    "pick_label_layer",
    "quality_rows",
    "quality_table",
    "report_labels",
    "stage_for_hub",
    "started_from_text",
]

logger = logging.getLogger(__name__)

STAGE_MARKER = "stage_complete.json"  # the marker `hf_speech_cl.pseudo_labels.is_stage_complete` looks for
SETTINGS_FILE = "iteration.json"
#: `--objective` choices: HubertPretrainingConfig fields (`paper` = the config's defaults, from fairseq's BASE recipe).
OBJECTIVE_SETTINGS = {
    "paper": {"pred_nomask_weight": 0.0, "feature_penalty_weight": 10.0, "feature_grad_mult": 0.1},
    "cpu": {"pred_nomask_weight": 1.0, "feature_penalty_weight": 0.0, "feature_grad_mult": 0.1},
}
#: Label quality measures of `hf_speech_cl.pseudo_labels.label_quality`, in the order of the table.
QUALITY_METRICS = ("phone_purity", "cluster_purity", "pnmi")
CITATION = (
    "Hsu, Bolte, Tsai, Lakhotia, Salakhutdinov, Mohamed. HuBERT: Self-Supervised Speech Representation Learning by "
    "Masked Prediction of Hidden Units. IEEE/ACM TASLP 29, 2021. arXiv:2106.07447"
)


@dataclass
class HubertArguments:
    """The HuBERT iteration's own settings (`HfArgumentParser`-ready: the `--iterations`, `--num_clusters`,
    `--label_layer`, ... flags of `recipes/pretrain_hubert.py`); the data, training and phone-probe settings are
    `DataArguments`, `PretrainingArguments` and `PhoneProbeArguments`. Defaults follow Hsu et al. 2021 §IV-C and
    fairseq's `hubert_base_librispeech.yaml` / `simple_kmeans` (K=100 then 500, 10% of the utterances for k-means).

    Raises:
        ValueError: (at construction) a value out of range, naming its flag: `iterations` < 1 (< 2 with
            `init_from`), an unknown `kmeans_backend`, `objective` or `model_size`, `kmeans_sample_fraction` outside
            (0, 1], a negative `labeling_threads` or `label_layer`, `num_clusters` that are not integers >= 2.
    """

    iterations: int = field(
        default=2,
        metadata={
            "help": "Labelling + training rounds: 1 = MFCC targets only; paper BASE: 2. The last iteration's number: "
            "with --init_from (which plays iteration 1) the run trains iterations 2..N, one by default."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Continue pretraining from this HuBERT checkpoint (folder or Hub id: stock HubertModel / "
            "HubertForCTC such as facebook/hubert-base-ls960, or one of this recipe's outputs). It plays iteration "
            "1's model: iteration 2 clusters its layer --label_layer and trains from its encoder weights with a new "
            "prediction head. Its architecture is kept (a --model_size or --config_overrides that changes it is an "
            "error)."
        },
    )
    continue_iterations: bool = field(
        default=False,
        metadata={
            "help": "Start iteration i > 1 from the encoder weights of iteration i-1's model (a new prediction head "
            "for the new K) instead of a fresh model. The paper (§IV-C) and fairseq train every iteration from "
            "scratch, which on a budget of a few thousand updates starts iteration 2 over: a fresh cpu-preset model "
            "probed 38.8%% after 1000 updates, the 3000-update iteration-1 model its labels would come from 48.6%% "
            "(README, pretraining curves). With --init_from every iteration already continues."
        },
    )
    num_clusters: str = field(
        default="100,500",
        metadata={
            "help": "K (k-means clusters = label classes) per iteration, comma-separated; the last value is reused "
            "for further iterations. Paper: 100 on MFCCs, 500 on the layer features afterwards."
        },
    )
    iteration_max_steps: str | None = field(
        default=None,
        metadata={
            "help": "Updates of each iteration's training, comma-separated (the last value reused), e.g. 3000,1000: "
            "iteration 1 needs enough updates to carry more phone information than its MFCC targets before its "
            "re-clustered layer can give better labels (about 3000 of 8 x 4 s for the cpu preset, README). "
            "Default: --max_steps for every iteration. The warm-up follows each iteration's updates with "
            "--warmup_ratio; an explicit --warmup_steps is the same for every iteration."
        },
    )
    label_layer: int | None = field(
        default=None,
        metadata={
            "aliases": ["--layer"],
            "help": "Hidden layer of the previous iteration's model (or of --init_from) clustered from iteration 2 "
            "on, counted as `hidden_states[layer]` (0 = Transformer input, N = last block). Default from the depth "
            "N: N // 2 up to 23 layers (the paper's layer 6 of BASE's 12, fairseq iteration 2), 9 from 24 layers "
            "(LARGE / X-LARGE: the paper's layer 9). `--layer` is the old name.",
        },
    )
    kmeans_backend: str = field(
        default="faiss",
        metadata={"help": "faiss (Lloyd iterations, GPU if available) or sklearn (fairseq's MiniBatchKMeans)."},
    )
    kmeans_sample_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of training utterances k-means is fitted on (fairseq: 0.1)."}
    )
    kmeans_max_dump_utterances: int | None = field(
        default=None,
        metadata={
            "help": "Dump the features of only this many random training utterances (bounds the disk k-means "
            "needs: MFCCs of LibriSpeech 960 h take 52 GB); the rest is labelled from the audio. Default: all."
        },
    )
    labeling_threads: int | None = field(
        default=1,
        metadata={
            "help": "CPU threads for features, k-means and labelling (0: the libraries' default). On a shared "
            "2-core machine, 1 thread ran MFCC 9x and faiss k-means 7x faster than 2 (threads spin-waiting)."
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": f"Encoder preset of the models trained: {', '.join(ENCODER_PRESETS)}. Default: cpu on a machine without CUDA, gpu with it (`hf_speech_cl.presets.default_model_size`), "
            "or with --init_from the checkpoint's architecture (given, it must be the checkpoint's)."
        },
    )
    objective: str = field(
        default="auto",
        metadata={
            "help": "Loss settings of the models trained. `paper`: masked frames only (α = 1, pred_nomask_weight 0), "
            "feature penalty 10, gradient into the conv feature encoder x 0.1 (Hsu et al. 2021 §IV-C, fairseq "
            "hubert_base_librispeech.yaml). `cpu`: unmasked frames predicted too (pred_nomask_weight 1, the paper's "
            "α = 0.5) and no feature penalty (it shrank the tiny model's conv features 100-fold): with the paper's "
            "settings the tiny model learned nothing in a CPU budget (masked accuracy 4.4%% after 300 updates, PNMI of its "
            "layer-1 units no better than an untrained model's), see the README. `auto`: `cpu` for the tiny "
            "and cpu presets (sized for CPU budgets), `paper` otherwise. --config_overrides still wins."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated `field=value` pairs applied to every iteration's HubertPretrainingConfig, "
            "e.g. 'mask_time_prob=0.65,final_dim=128'. See HubertPretrainingConfig's docstring."
        },
    )
    id_column: str = field(
        default="id", metadata={"help": "Column naming each utterance uniquely; labels are matched to audio by it."}
    )
    alignment_column: str = field(
        default="phone_alignment",
        metadata={"help": "Column of phone alignments ({phone, start, end} in s) for label quality, if present."},
    )

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {self.iterations}")
        if self.kmeans_backend not in ("faiss", "sklearn"):
            raise ValueError(f"--kmeans_backend must be faiss or sklearn, got {self.kmeans_backend!r}")
        if not 0 < self.kmeans_sample_fraction <= 1:
            raise ValueError(f"--kmeans_sample_fraction must lie in (0, 1], got {self.kmeans_sample_fraction}")
        if self.labeling_threads is not None and self.labeling_threads < 0:
            raise ValueError(f"--labeling_threads must be >= 0, got {self.labeling_threads}")
        if self.objective not in OBJECTIVE_SETTINGS and self.objective != "auto":
            raise ValueError(f"--objective must be auto, paper or cpu, got {self.objective!r}")
        if self.label_layer is not None and self.label_layer < 0:
            raise ValueError(f"--label_layer must be >= 0, got {self.label_layer}")
        if self.model_size is not None and self.model_size not in ENCODER_PRESETS:
            raise ValueError(f"--model_size must be one of {', '.join(ENCODER_PRESETS)}, got {self.model_size!r}")
        if self.init_from and self.iterations < 2:
            raise ValueError(
                f"--init_from plays iteration 1's model, so the run starts at iteration 2: --iterations (the last "
                f"iteration) must be >= 2, got {self.iterations}"
            )
        _ = self.clusters_per_iteration
        _ = self.steps_per_iteration(1)

    @property
    def first_iteration(self) -> int:
        """1, or 2 with --init_from (the checkpoint is iteration 1's model)."""
        return 2 if self.init_from else 1

    def steps_per_iteration(self, default: int) -> list[int]:
        """Updates of iterations 1..`iterations`: `--iteration_max_steps` (last value repeated), else `default`
        (`--max_steps`) for each.

        Raises:
            ValueError: on a value that is not a positive integer.
        """
        if not self.iteration_max_steps:
            return [default] * self.iterations
        try:
            values = [int(v) for v in self.iteration_max_steps.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--iteration_max_steps must be comma-separated integers, got {self.iteration_max_steps!r}"
            ) from None
        if not values or min(values) < 1:
            raise ValueError(f"--iteration_max_steps needs integers >= 1, got {self.iteration_max_steps!r}")
        return [values[min(i, len(values) - 1)] for i in range(self.iterations)]

    @property
    def clusters_per_iteration(self) -> list[int]:
        """K of iterations 1..`iterations` (the last value of `--num_clusters` repeated)."""
        try:
            values = [int(v) for v in self.num_clusters.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--num_clusters must be comma-separated integers, got {self.num_clusters!r}") from None
        if not values or min(values) < 2:
            raise ValueError(f"--num_clusters needs integers >= 2, got {self.num_clusters!r}")
        return [values[min(i, len(values) - 1)] for i in range(self.iterations)]


def default_label_layer(num_layers: int) -> int:
    """Layer clustered for the next iteration's labels, counted as `hidden_states[layer]`.

    N // 2 (6 of BASE's 12: Hsu et al. 2021 §IV-C, fairseq's iteration 2), 9 for 24 layers and more (the paper's
    LARGE / X-LARGE targets: layer 9).

    Args:
        num_layers: the model's Transformer layers N (`config.num_hidden_layers`).

    Returns:
        The layer index, in 0..N.
    """
    return 9 if num_layers >= 24 else num_layers // 2


def pick_label_layer(hubert_args: HubertArguments, num_layers: int, source: str) -> int:
    """`hubert_args.label_layer`, or `default_label_layer(num_layers)` when it is unset.

    Args:
        hubert_args: the iteration's settings.
        num_layers: Transformer layers of the model the labels come from.
        source: that model's name, for the error.

    Returns:
        The layer index.

    Raises:
        ValueError: the layer is not one of the model's 0..num_layers.
    """
    layer = hubert_args.label_layer if hubert_args.label_layer is not None else default_label_layer(num_layers)
    if not 0 <= layer <= num_layers:
        raise ValueError(
            f"--label_layer {layer} is outside 0..{num_layers}, the hidden layers of {source} "
            f"(num_hidden_layers={num_layers})."
        )
    return layer


@contextlib.contextmanager
def limit_threads(num_threads: int | None, backend: str) -> Iterator[None]:
    """Run the labelling stages with `num_threads` CPU threads in torch, the k-means backend and BLAS.

    Args:
        num_threads: the thread count; None or 0 leaves the libraries' defaults.
        backend: `faiss` or `sklearn`; its OpenMP runtime is loaded first so that the limit reaches it.

    Yields:
        Nothing; torch's previous thread count is restored on exit.
    """
    if not num_threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    with contextlib.suppress(ImportError):  # load the backend's OpenMP runtime so that the limit reaches it
        __import__("faiss" if backend == "faiss" else "sklearn.cluster")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with threadpool_limits(limits=num_threads):
            yield
    finally:
        torch.set_num_threads(previous)


def load_label_splits(data_args: DataArguments, state: PartialState) -> dict[str, datasets.Dataset]:
    """The training (and evaluation) split to label, map-style, with `max_*_samples` applied as the loaders do.

    Args:
        data_args: dataset, splits and limits.
        state: the process state; the main process loads first (an offline corpus is built once).

    Returns:
        `{split name: dataset}`: `data_args.train_split`, and `data_args.eval_split` unless it is None.
    """
    splits = {}
    for split, limit in (
        (data_args.train_split, data_args.max_train_samples),
        (data_args.eval_split, data_args.max_eval_samples),
    ):
        if split is None:
            continue
        with state.main_process_first():  # an offline corpus is built once
            dataset = load_split(data_args, split, streaming=False)  # k-means and labels need the whole split
        splits[split] = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
    return splits


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record an iteration's settings in `folder/iteration.json`, or refuse to resume an iteration that was started
    with other ones.

    Args:
        folder: the iteration's folder (`iteration-{i}/`), created if missing.
        settings: JSON-able settings that decide its labels and model.

    Raises:
        ValueError: `folder` holds an iteration made with different settings (names them).
    """
    path = folder / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
        if changed:
            raise ValueError(
                f"{folder} was made with other settings ({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in changed.items())}). "
                "Its labels and model would not match this command: use another --output_dir, or delete the folder "
                "to redo it."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2))


def quality_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per iteration and split with label quality.

    Args:
        history: per-iteration records (`HubertIterator.history`).

    Returns:
        Rows with `iteration`, `source`, `num_clusters`, `label_rate` (Hz), `split` and the `QUALITY_METRICS`.
    """
    return [
        {
            "iteration": h["iteration"],
            "source": h["source"],
            "num_clusters": h["num_clusters"],
            "label_rate": h["label_rate"],
            "split": split,
            **{k: metrics[k] for k in QUALITY_METRICS},
        }
        for h in history
        for split, metrics in h["metrics"].items()
    ]


def quality_table(history: list[dict[str, Any]], note: str | None) -> str:
    """Markdown table of `quality_rows(history)`.

    Args:
        history: per-iteration records.
        note: shown instead of the table when no split had phone alignments.

    Returns:
        The table, `note`, or "Label quality was not measured."
    """
    rows = quality_rows(history)
    if not rows:
        return note or "Label quality was not measured."
    lines = [
        "| iteration | labels from | K | label rate (Hz) | split | phone purity | cluster purity | PNMI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['iteration']} | {r['source']} | {r['num_clusters']} | {r['label_rate']:g} | {r['split']} | "
        f"{r['phone_purity']:.3f} | {r['cluster_purity']:.3f} | {r['pnmi']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def model_size_of(hubert_args: HubertArguments, init_config: PretrainedConfig | None = None) -> str | None:
    """The preset trained: `model_size`, else the preset the checkpoint's architecture is, else the machine's
    default (`hf_speech_cl.presets.default_model_size`: cpu, or gpu with CUDA).

    Args:
        hubert_args: the iteration's settings.
        init_config: config of the checkpoint training continues from (None: a fresh model).

    Returns:
        A preset name, or None when the checkpoint's architecture is none of the presets.
    """
    if hubert_args.model_size or init_config is None:
        return hubert_args.model_size or default_model_size()
    return matching_preset(init_config)


def build_config(
    hubert_args: HubertArguments,
    num_clusters: int,
    label_rate: float,
    sampling_rate: int,
    init_config: PretrainedConfig | None = None,
    init_source: str | None = None,
) -> HubertPretrainingConfig:
    """The `HubertPretrainingConfig` of an iteration: the preset's encoder, or that of `init_config` (its
    architecture fields only; the pretraining settings are these), the objective (`OBJECTIVE_SETTINGS`), then
    `config_overrides`.

    Args:
        hubert_args: the iteration's settings.
        num_clusters: K, the label classes.
        label_rate: labels per second (100 for MFCC, 50 for HuBERT layers).
        sampling_rate: Hz of the audio.
        init_config: config of the checkpoint training continues from (None: a fresh model).
        init_source: that checkpoint's name, for the error.

    Returns:
        The config.

    Raises:
        ValueError: with `init_config`, an encoder that differs from the checkpoint's (names the fields).
    """
    size = model_size_of(hubert_args, init_config)
    objective = hubert_args.objective
    if objective == "auto":
        objective = "cpu" if size in ("tiny", "cpu") else "paper"
    encoder = encoder_architecture(init_config) if init_config is not None else {}
    if hubert_args.model_size or init_config is None:  # a preset, over the checkpoint's other fields (conv_bias, ...)
        encoder.update(encoder_preset(size))
    config = HubertPretrainingConfig(
        **encoder,
        **OBJECTIVE_SETTINGS[objective],
        num_clusters=num_clusters,
        label_rate=label_rate,
        sampling_rate=sampling_rate,
    )
    if hubert_args.config_overrides:
        config.update_from_string(hubert_args.config_overrides)
    if init_config is not None:
        asked_by = " and ".join(
            f"--{name} {value}"
            for name, value in (
                ("model_size", hubert_args.model_size),
                ("config_overrides", hubert_args.config_overrides),
            )
            if value
        )
        check_fits(init_source, init_config, config, asked_by=asked_by or "the config asked for")
    return config


def objective_description(config: HubertPretrainingConfig, history: list[dict[str, Any]], note: str | None) -> str:
    """The card's objective section: masked prediction with `config`'s settings, the current iteration
    (`history[-1]`), and the label quality table of `history`.

    Args:
        config: the trained model's config.
        history: per-iteration records up to the current one.
        note: shown instead of the quality table when nothing was measured.

    Returns:
        Markdown.
    """
    current = history[-1]
    return (
        f"Masked prediction of k-means pseudo-labels (Hsu et al. 2021, §II): spans of {config.mask_time_length} "
        f"frames starting at a fraction {config.mask_time_prob} of the encoder frames are masked; each masked frame "
        f"predicts its frame's cluster among K={config.num_clusters} by cosine similarity to learned cluster "
        f"embeddings / {config.logit_temperature} (cross-entropy on masked frames only, weight "
        f"{config.pred_masked_weight}; feature penalty {config.feature_penalty_weight}). This is iteration "
        f"{current['iteration']}: labels from {current['source']} at {current['label_rate']:g} Hz (the labeler that "
        f"reproduces them is in `iteration-{current['iteration']}/labeler/` of the training output). "
        + started_from_text(current)
        + "\n\n"
        "### Label quality\n\n"
        "Frame labels against the corpus's phone alignments (Hsu et al. 2021 §IV-E, fairseq "
        "`measure_teacher_quality.py`): phone purity = E_z[max_y p(y|z)], cluster purity = E_y[max_z p(z|y)], "
        "PNMI = I(y; z) / H(y).\n\n" + quality_table(history, note)
    )


def started_from_text(current: dict[str, Any]) -> str:
    """What an iteration's training started from, for the card.

    Args:
        current: the iteration's record (`started_from`, `init_summary`).

    Returns:
        One or two sentences.
    """
    if not current.get("started_from"):
        return "This iteration trained a fresh model."
    head = current.get("init_summary") or "newly initialised: final_proj, label_embs_concat"
    prefix = "Training" if own_previous_iteration(current) else "Continued pretraining: training"
    return f"{prefix} started from the encoder weights of {started_from_name(current)}, with a new prediction head ({head})."


def own_previous_iteration(current: dict[str, Any]) -> bool:
    """Whether an iteration's training continued this run's previous iteration (`continue_iterations`) rather than
    an `init_from` checkpoint; `current` is the iteration's record."""
    return bool(current.get("started_from")) and "of the iteration-" in current.get("source", "")


def started_from_name(current: dict[str, Any]) -> str:
    """What an iteration's training started from, named for a card: `path` of an `init_from` checkpoint, or "the
    iteration-(i-1) model of this run" (`continue_iterations`)."""
    if own_previous_iteration(current):
        return f"the iteration-{current['iteration'] - 1} model of this run (`--continue_iterations`)"
    return f"`{current['started_from']}`"


def stage_for_hub(output_dir: Path) -> Path:
    """A folder of hard links (copies across file systems) to what is worth uploading: the final model and each
    iteration's settings, labeler and metrics (not the features, labels or checkpoints).

    Args:
        output_dir: the run's output root.

    Returns:
        `output_dir/.tmp-hub`, replaced if it existed; the caller removes it after the upload.
    """
    staging = output_dir / ".tmp-hub"
    shutil.rmtree(staging, ignore_errors=True)
    wanted = [p for p in output_dir.iterdir() if p.is_file()]
    for iteration in sorted(output_dir.glob("iteration-*")):
        wanted += [iteration / SETTINGS_FILE] + [
            p for sub in ("labeler", "metrics") for p in (iteration / sub).rglob("*") if p.is_file()
        ]
    for path in wanted:
        target = staging / path.relative_to(output_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return staging


def hubert_loss_normalizer(batch: dict[str, Any], outputs: Any) -> tuple[Any, Any]:
    """The shared loop's `loss_normalizer` for `HubertForPreTraining`: fairseq divides the summed loss of all
    micro-batches and processes of an update by their masked (+ unmasked, when predicted) frames.

    Args:
        batch: the micro-batch (unused).
        outputs: the model's output, with `loss` (per frame) and `sample_size` (frames).

    Returns:
        (summed loss, sample_size).
    """
    return outputs.loss * outputs.sample_size, outputs.sample_size


def finish(folder: Path, **record: Any) -> None:
    """Mark a training stage done: `folder/stage_complete.json` (read back by `is_stage_complete`), written
    atomically.

    Args:
        folder: the stage's folder.
        **record: JSON-able facts kept in the marker (`iteration`, `global_step`, `init`, `source`).
    """
    atomic_write_text(folder / STAGE_MARKER, json.dumps(record, indent=2))


def report_labels(
    history: list[dict[str, Any]], labels: PseudoLabelResult, state: PartialState, log: logging.Logger = logger
) -> None:
    """Print the current iteration's stage times and label quality; warn when PNMI did not improve on the previous
    iteration's.

    Args:
        history: per-iteration records, the current one last.
        labels: what the current iteration's labelling did.
        state: the process state (prints on the main process).
        log: where the warning goes.
    """
    current = history[-1]
    times = ", ".join(f"{s.name} {'skipped' if s.skipped else f'{s.seconds:.1f} s'}" for s in labels.stages)
    state.print(
        f"iteration {current['iteration']}: labels from {current['source']}, K={current['num_clusters']} "
        f"(k-means {labels.kmeans['backend']}: {labels.kmeans['fit_seconds']:.1f} s on {labels.kmeans['num_frames']} "
        f"frames); {times}"
    )
    if not current["metrics"]:
        return
    state.print(quality_table(history[-1:], None))
    if len(history) > 1 and history[-2]["metrics"]:
        split = list(current["metrics"])[-1]  # the evaluation split when there is one: held-out audio
        before, now = history[-2]["metrics"][split]["pnmi"], current["metrics"][split]["pnmi"]
        if now <= before:
            log.warning(
                "Iteration %d labels (%s) have a PNMI of %.3f on %s, no better than iteration %d's %.3f: layer features of "
                "the previous model carry less phone information than its targets did. Small models trained for a few "
                "hundred updates are in this regime (the README's HuBERT section measures it on the offline corpus, "
                "whose clean synthetic speech makes MFCC units unusually phonetic); train longer (--max_steps), a "
                "larger --model_size, or try another --layer.",
                current["iteration"],
                current["source"],
                now,
                split,
                current["iteration"] - 1,
                before,
            )


def finalize(
    accelerator: Any,
    model: HubertForPreTraining,
    result: TrainResult,
    args: PretrainingArguments,
    hubert_args: HubertArguments,
    data_args: DataArguments,
    history: list[dict[str, Any]],
    note: str | None,
    feature_extractor: Wav2Vec2FeatureExtractor,
    phone_probe: PhoneProbe | None = None,
) -> Path:
    """Save an iteration's model with its feature extractor, card (label quality included) and phone probe into
    `args.output_dir` (`finalize_pretraining`).

    Args:
        accelerator: the run's accelerator (the main process writes).
        model: the trained model.
        result: its training result (the card's metrics).
        args: training arguments; `output_dir` is where it goes.
        hubert_args: the iteration's settings.
        data_args: the data (the card's dataset).
        history: per-iteration records up to the model's iteration.
        note: why label quality was not measured, if it was not.
        feature_extractor: saved beside the model.
        phone_probe: probes the saved model (None: no probe).

    Returns:
        The output folder.
    """
    config = accelerator.unwrap_model(model).config
    started_from = history[-1].get("started_from")
    # the architecture is a checkpoint's only with init_from; continue_iterations keeps the run's own preset
    size = model_size_of(hubert_args, config if hubert_args.init_from else None)
    return finalize_pretraining(
        accelerator=accelerator,
        model=model,
        result=result,
        args=args,
        savables=(feature_extractor,),
        objective_name=f"HuBERT (masked prediction of k-means units), iteration {history[-1]['iteration']}",
        objective_description=objective_description(config, history, note),
        recipe="recipes/pretrain_hubert.py",
        dataset=data_args.dataset_name,
        train_split=data_args.train_split,
        dataset_note=data_args.dataset_note,
        architecture=(
            f"`HubertForPreTraining` ({f'`{size}`, ' if size else ''}feat_extract_norm={config.feat_extract_norm}): "
            f"{config.num_hidden_layers} Transformer layers of {config.hidden_size} units, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters with the prediction head "
            f"(final_dim {config.final_dim}, {config.num_clusters} cluster embeddings). Its encoder loads with stock "
            "`HubertForCTC` / `HubertForSequenceClassification`."
            + (
                f" Encoder initialised from {started_from_name(history[-1])}"
                + ("." if own_previous_iteration(history[-1]) else " (continued pretraining).")
                if started_from
                else ""
            )
        ),
        usage=(
            "import hf_speech_cl  # registers the hubert_pretraining model type\n"
            "from transformers import AutoModelForPreTraining, HubertForCTC\n"
            f"model = AutoModelForPreTraining.from_pretrained('{args.hub_model_id or args.output_dir}')\n"
            f"ctc = HubertForCTC.from_pretrained('{args.hub_model_id or args.output_dir}', vocab_size=32)"
        ),
        finetune_command=(
            f"accelerate launch recipes/finetune_asr.py --model_name_or_path {args.output_dir} --train_minutes 10"
        ),
        citation=CITATION,
        hyperparameters={
            "iteration": history[-1]["iteration"],
            "K": config.num_clusters,
            "label rate (Hz)": config.label_rate,
            "labels from": history[-1]["source"],
            "mask_time_prob": config.mask_time_prob,
            "mask_time_length": config.mask_time_length,
            "crop (s)": data_args.max_train_crop_s,
            "k-means": f"{hubert_args.kmeans_backend}, {hubert_args.kmeans_sample_fraction:g} of the utterances",
            **({"initialised from": f"{started_from_name(history[-1])} (encoder; new head)"} if started_from else {}),
        },
        tags=["hubert", "masked-prediction", "pseudo-labels"],
        phone_probe=phone_probe,
    )


@dataclass
class _LabelSource:
    """Where an iteration's labels come from and what its training starts from."""

    previous: str | Path | None  # the model of iteration i-1 (or init_from); None: MFCC
    previous_config: PretrainedConfig | None
    layer: int | None
    description: str  # "39-d MFCC (13 + Δ + ΔΔ)", "layer 1 of the iteration-1 model", ...
    continue_from: str | None  # training starts from this checkpoint's encoder (continued pretraining)


class HubertIterator:
    """The HuBERT k-means pseudo-label iterator over `hubert_args.iterations` iterations, one stage at a time or all.

    `label(i)` makes iteration i's labels (features → k-means → labels → label quality), `train(i)` trains iteration
    i's model on them, `finalize_output()` writes the last iteration's model to the output root, `push_to_hub()`
    uploads it; `run()` does all of it, as `recipes/pretrain_hubert.py` does. Every stage resumes from what is on disk
    (a finished one is skipped), and each runs the stages it depends on first: `train(i)` labels iteration i if this
    iterator has not, `label(i)` for i > 1 trains (or finds trained) iteration i-1's model. All processes of a
    distributed launch call the same methods: the labels are made on the main process first, training is
    data-parallel.

    Constructing it checks an `init_from` checkpoint (before anything is written), claims
    `training_args.output_dir`, and loads the splits to label.

    Args:
        hubert_args: the iteration's settings (iterations, K, label layer, k-means, model size, objective).
        data_args: dataset, splits, crops and limits (`max_train_samples`, `max_eval_samples` also bound labelling).
        training_args: every iteration's training (`output_dir` is the run's root; iteration i trains into
            `iteration-{i}/model`).
        probe_args: phone probe of every trained model (None: `PhoneProbeArguments()`, the probe on).
        logger: where the iterator logs (the recipe passes its own, `pretrain_hubert`).
        label_fn: replaces `run_pseudo_label_iteration` (same signature), e.g. to observe the labelling stages.
        train_fn: replaces `hf_speech_cl.training.train` (same signature), e.g. to wrap training with a callback.
        push_fn: replaces `push_folder_to_hub` (same signature).

    Raises:
        ValueError: an `init_from` checkpoint that is not HuBERT, whose architecture `model_size` /
            `config_overrides` would change, or whose layers do not include `label_layer` (names the field); an
            `output_dir` that is not ours and not empty (without `overwrite_output_dir`).
    """

    def __init__(
        self,
        hubert_args: HubertArguments,
        data_args: DataArguments,
        training_args: PretrainingArguments,
        probe_args: PhoneProbeArguments | None = None,
        *,
        logger: logging.Logger | None = None,
        label_fn: Callable[..., PseudoLabelResult] | None = None,
        train_fn: Callable[..., TrainResult] | None = None,
        push_fn: Callable[..., Any] | None = None,
    ):
        self.hubert_args = hubert_args
        self.data_args = data_args
        self.args = training_args
        self.logger = logger if logger is not None else logging.getLogger(__name__)
        self._label_fn = label_fn
        self._train_fn = train_fn
        self._push_fn = push_fn

        normalize = True  # hf_speech_cl's models see per-utterance normalised waveforms
        if hubert_args.init_from:  # a checkpoint that does not fit is refused before anything is written or labelled
            init_config = checkpoint_config(
                hubert_args.init_from, ("hubert", HubertPretrainingConfig.model_type), "HuBERT"
            )
            k = hubert_args.clusters_per_iteration[hubert_args.first_iteration - 1]
            build_config(hubert_args, k, 50.0, data_args.sampling_rate, init_config, hubert_args.init_from)
            pick_label_layer(hubert_args, init_config.num_hidden_layers, hubert_args.init_from)
            normalize = checkpoint_normalizes(hubert_args.init_from)
            if normalize is None:
                self.logger.info(
                    "%s has no preprocessor_config.json: input normalised per utterance", hubert_args.init_from
                )
                normalize = True

        self.state = make_partial_state(training_args)  # several processes also on CPU (gloo); claims output_dir
        # every iteration's model and the final one (a copy of the last iteration's: probed once, the result cached)
        self.phone_probe = PhoneProbe(
            probe_args or PhoneProbeArguments(), data_args, seed=training_args.seed, device=self.state.device
        )
        self.output_dir = Path(training_args.output_dir)
        self.feature_extractor = Wav2Vec2FeatureExtractor(
            sampling_rate=data_args.sampling_rate, do_normalize=normalize, return_attention_mask=True
        )
        self.splits = load_label_splits(data_args, self.state)
        has_phones = [s for s, d in self.splits.items() if hubert_args.alignment_column in d.column_names]
        self.note = (
            None
            if has_phones
            else f"Not measured: the dataset has no `{hubert_args.alignment_column}` column of phone alignments."
        )
        self._records: dict[int, dict[str, Any]] = {}
        self._labels: dict[int, PseudoLabelResult] = {}
        self._results: dict[int, TrainResult] = {}

    # -- where things are -------------------------------------------------------------------------------------------

    @property
    def iterations(self) -> range:
        """The iterations this run makes: 1..N, or 2..N with `init_from` (N = `hubert_args.iterations`)."""
        return range(self.hubert_args.first_iteration, self.hubert_args.iterations + 1)

    def iteration_dir(self, iteration: int) -> Path:
        """`output_dir/iteration-{iteration}`: the iteration's settings, features, labeler, labels, metrics, model."""
        return self.output_dir / f"iteration-{iteration}"

    def model_dir(self, iteration: int) -> Path:
        """`output_dir/iteration-{iteration}/model`: the iteration's checkpoints, logs and trained model."""
        return self.iteration_dir(iteration) / "model"

    @property
    def history(self) -> list[dict[str, Any]]:
        """The records of the iterations labelled so far, in order: `iteration`, `source` (what was clustered),
        `num_clusters`, `label_rate` (Hz), `metrics` (`{split: {phone_purity, cluster_purity, pnmi, ...}}`, empty
        without phone alignments), `started_from` (continued pretraining), and after training `init_summary`. The
        card's label quality table and the final summary are made from them."""
        return [self._records[i] for i in sorted(self._records)]

    def _history_until(self, iteration: int) -> list[dict[str, Any]]:
        return [self._records[i] for i in sorted(self._records) if i <= iteration]

    def _check_iteration(self, iteration: int) -> None:
        if iteration not in self.iterations:
            first, last = self.iterations.start, self.iterations.stop - 1
            why = " (--init_from plays iteration 1's model)" if self.hubert_args.init_from else ""
            raise ValueError(
                f"iteration {iteration} is not one of this run's iterations {first}..{last}{why}: set --iterations "
                f"(now {self.hubert_args.iterations}) to include it."
            )

    def _source(self, iteration: int) -> _LabelSource:
        """The model iteration `iteration`'s labels come from (iteration i-1's, or `init_from` for the first)."""
        init_from = self.hubert_args.init_from
        if iteration == self.hubert_args.first_iteration:
            previous = init_from  # None: MFCC
        else:
            previous = self.model_dir(iteration - 1)
        layer = previous_config = None
        if previous is not None:
            previous_config = AutoConfig.from_pretrained(previous)
            layer = pick_label_layer(self.hubert_args, previous_config.num_hidden_layers, str(previous))
        if previous is None:
            description = "39-d MFCC (13 + Δ + ΔΔ)"
        elif str(previous) == init_from:
            description = f"layer {layer} of {init_from}"
        else:
            description = f"layer {layer} of the iteration-{iteration - 1} model"
        # continued pretraining: every iteration starts from the model its labels came from
        continues = init_from or self.hubert_args.continue_iterations
        continue_from = str(previous) if continues and previous is not None else None
        return _LabelSource(previous, previous_config, layer, description, continue_from)

    # -- the stages -------------------------------------------------------------------------------------------------

    def label(self, iteration: int) -> PseudoLabelResult:
        """Iteration `iteration`'s labels: features (MFCC, or layer `label_layer` of the previous iteration's model)
        of the training split → k-means (K of `num_clusters`) → labels of every split → label quality where the
        dataset has phone alignments. Prints the stage times and the quality table; warns when PNMI did not improve.

        Resumable: finished stages are skipped (a second call skips them all and rewrites nothing), an interrupted
        one restarts. For iteration i > 1 it first trains iteration i-1 (`train(i - 1)`, itself skipped when done).

        Args:
            iteration: one of `iterations`.

        Returns:
            `PseudoLabelResult`: the labeler and label folders, metrics per split, k-means facts, what each stage did.

        Raises:
            ValueError: `iteration` is not one of this run's, or `iteration-{i}/iteration.json` records other
                settings (names them: use another `output_dir` or delete the folder).
        """
        self._check_iteration(iteration)
        if iteration > self.hubert_args.first_iteration and (
            iteration - 1 not in self._records or not is_stage_complete(self.model_dir(iteration - 1))
        ):
            self.train(iteration - 1)
        hubert_args, data_args, args, state = self.hubert_args, self.data_args, self.args, self.state
        num_clusters = hubert_args.clusters_per_iteration[iteration - 1]
        folder = self.iteration_dir(iteration)
        source = self._source(iteration)
        label_args = PseudoLabelArguments(
            output_dir=str(folder),
            iteration=iteration,
            feature_type="mfcc" if source.previous is None else "hubert",
            encoder_name_or_path=str(source.previous) if source.previous is not None else None,
            layer=source.layer,
            num_clusters=num_clusters,
            kmeans_backend=hubert_args.kmeans_backend,
            sample_fraction=hubert_args.kmeans_sample_fraction,
            max_dump_utterances=hubert_args.kmeans_max_dump_utterances,
            seed=args.seed,
            fit_split=data_args.train_split,
            sampling_rate=data_args.sampling_rate,
            audio_column=data_args.audio_column,
            id_column=hubert_args.id_column,
            alignment_column=hubert_args.alignment_column,
            normalize_input=self.feature_extractor.do_normalize,  # features of the encoder's input as it was trained
            device=str(state.device),
        )
        settings = {
            **{k: v for k, v in dataclasses.asdict(label_args).items() if k not in ("output_dir", "device")},
            "dataset": [
                data_args.dataset_name,
                data_args.dataset_config,
                data_args.dataset_kwargs_dict,
                sorted(self.splits),
                data_args.max_train_samples,
                data_args.max_eval_samples,
            ],
            "model": [
                hubert_args.model_size if hubert_args.init_from else (hubert_args.model_size or default_model_size()),
                hubert_args.config_overrides,
            ],
            "init_from": source.continue_from,
            "training": {
                k: getattr(args, k)
                for k in (
                    "max_steps",
                    "per_device_train_batch_size",
                    "learning_rate",
                    "gradient_accumulation_steps",
                    "seed",
                )
            },
            "crop_s": data_args.max_train_crop_s,
            # only when set, so runs started before the flag existed still resume
            **(
                {"iteration_max_steps": hubert_args.steps_per_iteration(args.max_steps)}
                if hubert_args.iteration_max_steps
                else {}
            ),
        }
        if state.is_main_process:
            check_settings(folder, settings)
        label_fn = self._label_fn or run_pseudo_label_iteration
        with state.main_process_first(), limit_threads(hubert_args.labeling_threads, hubert_args.kmeans_backend):
            labels = label_fn(self.splits, label_args, progress=state.is_local_main_process)
        label_rate = json.loads((labels.labeler_dir / "label_info.json").read_text())["label_rate"]
        record = {
            "iteration": iteration,
            "source": source.description,
            "num_clusters": num_clusters,
            "label_rate": label_rate,
            "metrics": labels.metrics,
            "started_from": source.continue_from,
        }
        if "init_summary" in self._records.get(iteration, {}):  # labelled again after training
            record["init_summary"] = self._records[iteration]["init_summary"]
        self._records[iteration] = record
        self._labels[iteration] = labels
        report_labels(self._history_until(iteration), labels, state, self.logger)
        return labels

    def train(self, iteration: int) -> TrainResult:
        """Train iteration `iteration`'s `HubertForPreTraining` on its labels (masked prediction, Hsu et al. 2021
        §II; fairseq's loss normalisation) into `model_dir(iteration)`, with its card and phone probe: a fresh model
        of the preset, or with `init_from` one that starts from the encoder of the model its labels came from.

        Resumable: training continues from the newest checkpoint; a finished training is skipped (its
        `train_results.json` is returned). Labels the iteration first (`label(iteration)`) when this iterator has not.

        Args:
            iteration: one of `iterations`.

        Returns:
            `TrainResult` of the iteration's training.

        Raises:
            ValueError: see `label`; a config that does not fit the `init_from` checkpoint (names the fields).
        """
        self._check_iteration(iteration)
        if iteration not in self._labels:
            self.label(iteration)
        hubert_args, data_args, args, state = self.hubert_args, self.data_args, self.args, self.state
        labels, record = self._labels[iteration], self._records[iteration]
        num_clusters = record["num_clusters"]
        model_dir = self.model_dir(iteration)
        iteration_args = dataclasses.replace(
            args,
            max_steps=hubert_args.steps_per_iteration(args.max_steps)[iteration - 1],
            output_dir=str(model_dir),
            push_to_hub=False,
            run_name=f"{args.run_name or self.output_dir.name}-iteration-{iteration}",
        )
        if is_stage_complete(model_dir):
            state.print(f"iteration {iteration}: training already complete in {model_dir}, skipped")
            result = TrainResult(**json.loads((model_dir / "train_results.json").read_text()))
            record["init_summary"] = json.loads((model_dir / STAGE_MARKER).read_text()).get("init")
            self._results[iteration] = result
            return result
        source = self._source(iteration)
        continue_from = source.continue_from
        accelerator = make_accelerator(iteration_args)
        config = build_config(
            hubert_args,
            num_clusters,
            record["label_rate"],
            self.feature_extractor.sampling_rate,
            # with init_from the checkpoint's architecture; with continue_iterations the run's own (the same as
            # the previous iteration's), so objective settings follow the run's preset, not a guess from the config
            init_config=source.previous_config if hubert_args.init_from else None,
            init_source=continue_from if hubert_args.init_from else None,
        )
        if continue_from:
            model, init_report = load_hubert_for_continued_pretraining(continue_from, config)
            record["init_summary"] = init_report.summary()
            if accelerator.is_main_process:
                self.logger.info("iteration %d: %s", iteration, init_report.summary())
        else:
            model = HubertForPreTraining(config)
        collator = DataCollatorForHubertPretraining(
            self.feature_extractor, list(labels.label_dirs.values()), id_column=hubert_args.id_column
        )
        with accelerator.main_process_first():
            train_loader, eval_loader = build_pretraining_dataloaders(
                data_args,
                self.feature_extractor,
                config,
                batch_size=args.per_device_train_batch_size,
                seed=args.seed,
                collator=collator,
                keep_columns=(hubert_args.id_column, CROP_OFFSET_COLUMN),
            )
        train_fn = self._train_fn or train_model
        result = train_fn(
            model,
            train_loader,
            iteration_args,
            accelerator=accelerator,
            sampling_rate=self.feature_extractor.sampling_rate,
            eval_dataloader=eval_loader,
            # fairseq: summed loss / masked frames of all micro-batches and processes of the update
            loss_normalizer=hubert_loss_normalizer,
            # layer drop (paper: 0.05) skips whole layers: DDP must expect parameters without gradient
            find_unused_parameters=config.layerdrop > 0,
            hparams={
                "iteration": iteration,
                "num_clusters": num_clusters,
                "label_source": record["source"],
                "model_size": model_size_of(hubert_args, config if hubert_args.init_from else None),
                "init_from": continue_from,
            },
        )
        finalize(
            accelerator,
            model,
            result,
            iteration_args,
            hubert_args,
            data_args,
            self._history_until(iteration),
            self.note,
            self.feature_extractor,
            self.phone_probe,
        )
        if accelerator.is_main_process:
            finish(model_dir, iteration=iteration, global_step=result.global_step, init=record.get("init_summary"))
        accelerator.wait_for_everyone()
        self._results[iteration] = result
        return result

    def finalize_output(self) -> Path:
        """Write the last iteration's model, its card (label quality of every iteration) and phone probe to the
        output root, as `AutoModelForPreTraining` / stock `HubertForCTC` load it; skipped when the root already holds
        that iteration's model. Trains (or finds trained) the iterations first when this iterator has not.

        Returns:
            The output root.

        Raises:
            ValueError: see `label` and `train`.
        """
        args, state = self.args, self.state
        final_iteration = self.hubert_args.iterations
        if (
            is_stage_complete(self.output_dir)
            and json.loads((self.output_dir / STAGE_MARKER).read_text()).get("iteration") == final_iteration
        ):
            state.print(f"final model of iteration {final_iteration} already in {self.output_dir}, skipped")
            return self.output_dir
        if final_iteration not in self._results:
            self.train(final_iteration)
        source = self.model_dir(final_iteration)
        accelerator = make_accelerator(dataclasses.replace(args, push_to_hub=False, report_to="none"))
        model = HubertForPreTraining.from_pretrained(source)
        finalize(
            accelerator,
            model,
            self._results[final_iteration],
            # the card describes the final iteration's training: its own --iteration_max_steps value
            dataclasses.replace(
                args, push_to_hub=False, max_steps=self.hubert_args.steps_per_iteration(args.max_steps)[-1]
            ),
            self.hubert_args,
            self.data_args,
            self._history_until(final_iteration),
            self.note,
            self.feature_extractor,
            self.phone_probe,
        )
        if accelerator.is_main_process:
            finish(self.output_dir, iteration=final_iteration, source=str(source))
        return self.output_dir

    def push_to_hub(self) -> None:
        """Upload the final model and each iteration's settings, labeler and metrics (`stage_for_hub`; not the
        features, labels or checkpoints) to `hub_model_id`, from the main process (the others do nothing). Call
        after `finalize_output`."""
        if not self.state.is_main_process:
            return
        args = self.args
        staging = stage_for_hub(self.output_dir)
        push_fn = self._push_fn or push_folder_to_hub
        push_fn(staging, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        shutil.rmtree(staging, ignore_errors=True)

    def run(self) -> Path:
        """Every iteration (`label(i)`, `train(i)`), the final model (`finalize_output`), the upload when
        `push_to_hub` is set, and a summary with the label quality table: what `recipes/pretrain_hubert.py` does.
        A rerun of a finished run skips everything and rewrites nothing.

        Returns:
            The output root, holding the last iteration's model.

        Raises:
            ValueError: see `label` and `train`.
        """
        for iteration in self.iterations:
            self.label(iteration)
            self.train(iteration)
        output_dir = self.finalize_output()
        if self.args.push_to_hub:
            self.push_to_hub()
        self.state.wait_for_everyone()
        final_iteration = self.hubert_args.iterations
        started = f" from {self.hubert_args.init_from}" if self.hubert_args.init_from else ""
        self.state.print(
            f"done: {len(self.iterations)} iteration(s){started}, the last is iteration {final_iteration}; final "
            f"model in {output_dir}\n" + quality_table(self.history, self.note)
        )
        return output_dir
