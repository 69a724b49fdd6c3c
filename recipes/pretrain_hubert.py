#!/usr/bin/env python
"""HuBERT pretraining (Hsu et al. 2021): k-means pseudo-labels → masked prediction → relabel with the new model.

Iteration 1 clusters 39-d MFCCs (13 + Δ + ΔΔ) of the training split into K=100 clusters, labels every split and
trains a `HubertForPreTraining` to predict the labels of masked frames. Iteration i > 1 clusters hidden layer L of
iteration i-1's model (`--label_layer`, default from its depth N: N // 2, i.e. 6 of BASE's 12 as in the paper and 1
of `tiny`'s 2; 9 for N >= 24) into K=500 clusters, relabels, and trains a fresh model on the new labels. Fresh, not
continued (unless `--init_from`, below), as in the paper (§IV-C: each iteration trains a new model on the new targets)
and fairseq's recipe: the prediction head changes size with K anyway, and each iteration's model then depends only
on its labels, so rerunning one iteration does not depend on where the previous training happened to stop.

With no arguments both iterations run on the offline `synthetic-librispeech` corpus (built on first use) with the
`tiny` encoder, in about 11 minutes on 2 CPU cores (measured). Layout of `--output_dir`:

    iteration-{i}/iteration.json    the iteration's settings (a rerun with other settings is refused)
    iteration-{i}/features/{split}/ features k-means is fitted on (memory-mapped float32)
    iteration-{i}/labeler/          `HubertPseudoLabeler.from_pretrained(...)` + centroids, kmeans.json, label_info.json
    iteration-{i}/labels/{split}/   the labels beside the dataset (`save_to_disk`: `labels`, `id`) + label_info.json
    iteration-{i}/metrics/{split}/  phone purity, cluster purity, PNMI when the dataset has phone alignments
    iteration-{i}/model/            checkpoints, logs, the trained model, its card and phone_probe.json (a linear
                                    frame-level phone probe of its frozen layers, MFCC and a random encoder as
                                    references; `--phone_probe false` skips it)
    config.json, model.safetensors, README.md, ...   the last iteration's model: `AutoModelForPreTraining` (after
                                    `import hf_speech_cl`), stock `HubertForCTC.from_pretrained(out)`

Every stage resumes: a rerun of the same command skips finished stages (each is published atomically, with a
completion marker, so an interrupted one restarts cleanly) and training continues from its newest checkpoint.

The training flags (`--max_steps`, `--learning_rate`, `--save_steps`, ...) apply to EACH iteration's training:
`--iterations 2 --max_steps 300` trains 2 x 300 updates.

Random crops (`--max_train_crop_s`) cut the labels with the audio (fairseq `collater_frm_label` offsets).

Continued pretraining (`--init_from PATH_OR_HUB_ID`): a HuBERT checkpoint (stock `HubertModel` / `HubertForCTC`, e.g.
facebook/hubert-base-ls960, or one of this recipe's outputs) plays iteration 1's model, so the run starts at
iteration 2: k-means on layer `--label_layer` of that checkpoint (K: the second value of `--num_clusters`, 500 by
default), then masked prediction that starts from the checkpoint's encoder weights with a new prediction head
(`final_proj`, `label_embs_concat`; the log and the card say what was newly initialised). With `--iterations 3` and
more, each further iteration also continues from the model its labels came from. The architecture is the
checkpoint's: `--model_size` / `--config_overrides` that change it (hidden size, conv layout, depth, ...) are an error
naming the fields; the input is normalised as the checkpoint's `preprocessor_config.json` says (if it has one).
Note that facebook/hubert-base-ls960 is itself the paper's iteration-2 BASE model; the paper's next targets (for
LARGE) came from its layer 9: `--label_layer 9`.

Examples:
    accelerate launch recipes/pretrain_hubert.py
    accelerate launch recipes/pretrain_hubert.py --iterations 3 --num_clusters 100,500,500 --label_layer 1
    accelerate launch recipes/pretrain_hubert.py --init_from facebook/hubert-base-ls960 --label_layer 9 \\
        --dataset_name openslr/librispeech_asr --dataset_config clean --train_split train.100 --max_steps 20000
    accelerate launch recipes/pretrain_hubert.py --dataset_name openslr/librispeech_asr --dataset_config clean \\
        --train_split train.100 --eval_split validation --model_size base --mixed_precision bf16 \\
        --kmeans_max_dump_utterances 20000 --max_steps 100000
    torchrun --nproc_per_node 2 recipes/pretrain_hubert.py      # labels made once (main process), then DDP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

import datasets
import torch
from accelerate import PartialState
from transformers import AutoConfig, HfArgumentParser, Wav2Vec2FeatureExtractor

from hf_speech_cl.continued_pretraining import (
    check_fits,
    checkpoint_config,
    checkpoint_normalizes,
    encoder_architecture,
    load_hubert_for_continued_pretraining,
    matching_preset,
)
from hf_speech_cl.data import DataArguments, build_pretraining_dataloaders, load_speech_dataset
from hf_speech_cl.finetuning import PhoneProbe, PhoneProbeArguments
from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig
from hf_speech_cl.presets import ENCODER_PRESETS, encoder_preset
from hf_speech_cl.pseudo_labels import (
    CROP_OFFSET_COLUMN,
    DataCollatorForHubertPretraining,
    PseudoLabelArguments,
    PseudoLabelResult,
    is_stage_complete,
    run_pseudo_label_iteration,
)
from hf_speech_cl.training import (
    PretrainingArguments,
    TrainResult,
    finalize_pretraining,
    make_accelerator,
    make_partial_state,
    push_folder_to_hub,
    train,
)

logger = logging.getLogger("pretrain_hubert")

STAGE_MARKER = "stage_complete.json"  # the marker `hf_speech_cl.pseudo_labels.is_stage_complete` looks for
SETTINGS_FILE = "iteration.json"
#: `--objective` choices: HubertPretrainingConfig fields (`paper` = the config's defaults, from fairseq's BASE recipe).
OBJECTIVE_SETTINGS = {
    "paper": {"pred_nomask_weight": 0.0, "feature_penalty_weight": 10.0, "feature_grad_mult": 0.1},
    "cpu": {"pred_nomask_weight": 1.0, "feature_penalty_weight": 0.0, "feature_grad_mult": 0.1},
}
QUALITY_METRICS = ("phone_purity", "cluster_purity", "pnmi")
CITATION = (
    "Hsu, Bolte, Tsai, Lakhotia, Salakhutdinov, Mohamed. HuBERT: Self-Supervised Speech Representation Learning by "
    "Masked Prediction of Hidden Units. IEEE/ACM TASLP 29, 2021. arXiv:2106.07447"
)


@dataclass
class HubertArguments:
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
    num_clusters: str = field(
        default="100,500",
        metadata={
            "help": "K (k-means clusters = label classes) per iteration, comma-separated; the last value is reused "
            "for further iterations. Paper: 100 on MFCCs, 500 on the layer features afterwards."
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
            "help": f"Encoder preset of the models trained: {', '.join(ENCODER_PRESETS)}. Default: tiny, or with "
            "--init_from the checkpoint's architecture (given, it must be the checkpoint's)."
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
            "preset, `paper` otherwise. --config_overrides still wins."
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

    @property
    def first_iteration(self) -> int:
        """1, or 2 with --init_from (the checkpoint is iteration 1's model)."""
        return 2 if self.init_from else 1

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
    """Layer clustered for the next iteration's labels: N // 2 (6 of BASE's 12: Hsu et al. 2021 §IV-C, fairseq's
    iteration 2), 9 for 24 layers and more (the paper's LARGE / X-LARGE targets: layer 9)."""
    return 9 if num_layers >= 24 else num_layers // 2


@contextlib.contextmanager
def limit_threads(num_threads: int | None, backend: str) -> Iterator[None]:
    """Run the labelling stages with `num_threads` CPU threads in torch, the k-means backend and BLAS."""
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
    """The training (and evaluation) split to label, map-style, with `max_*_samples` applied as the loaders do."""
    splits = {}
    for split, limit in (
        (data_args.train_split, data_args.max_train_samples),
        (data_args.eval_split, data_args.max_eval_samples),
    ):
        if split is None:
            continue
        with state.main_process_first():  # an offline corpus is built once
            dataset = load_speech_dataset(
                data_args.dataset_name,
                config=data_args.dataset_config,
                split=split,
                sampling_rate=data_args.sampling_rate,
                audio_column=data_args.audio_column,
                cache_dir=data_args.cache_dir,
                **data_args.dataset_kwargs_dict,
            )
        splits[split] = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
    return splits


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record an iteration's settings, or refuse to resume an iteration that was started with other ones.

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
    path.write_text(json.dumps(settings, indent=2))


def quality_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per iteration and split with label quality (purities, PNMI)."""
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
    """Markdown table of `quality_rows` (or `note` when no split had phone alignments)."""
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


def model_size_of(hubert_args: HubertArguments, init_config=None) -> str | None:
    """The preset trained: `--model_size`, else the preset the checkpoint's architecture is (None: none is), else
    tiny."""
    if hubert_args.model_size or init_config is None:
        return hubert_args.model_size or "tiny"
    return matching_preset(init_config)


def build_config(
    hubert_args: HubertArguments,
    num_clusters: int,
    label_rate: float,
    sampling_rate: int,
    init_config=None,
    init_source: str | None = None,
):
    """The `HubertPretrainingConfig` of an iteration: the preset's encoder, or that of `init_config` (the checkpoint
    training continues from: its architecture fields only, the pretraining settings are the recipe's), the objective,
    `--config_overrides`.

    Raises:
        ValueError: with `init_config`, an encoder that differs from the checkpoint's (names the fields).
    """
    size = model_size_of(hubert_args, init_config)
    objective = hubert_args.objective
    if objective == "auto":
        objective = "cpu" if size == "tiny" else "paper"
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
    """What the iteration's training started from, for the card."""
    if not current.get("started_from"):
        return "Each iteration trains a fresh model."
    return (
        f"Continued pretraining: training started from the encoder weights of `{current['started_from']}`, with a "
        f"new prediction head ({current.get('init_summary') or 'newly initialised: final_proj, label_embs_concat'})."
    )


def stage_for_hub(output_dir: Path) -> Path:
    """A folder of hard links to what is worth uploading: the final model and each iteration's labeler, settings
    and metrics (not the features, labels or checkpoints)."""
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
    """(summed loss, sample_size) of a `HubertForPreTraining` output, for the shared loop's `loss_normalizer`."""
    return outputs.loss * outputs.sample_size, outputs.sample_size


def finish(folder: Path, **record: Any) -> None:
    """Mark a training stage done (read back by `is_stage_complete`)."""
    (folder / STAGE_MARKER).write_text(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> Path:
    parser = HfArgumentParser(
        (HubertArguments, DataArguments, PretrainingArguments, PhoneProbeArguments), description=__doc__
    )
    parser.set_defaults(
        output_dir="outputs/hubert-tiny",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=2e-3,  # tiny preset, 300 updates: 5e-4 barely moved the loss (measured, see the README)
        max_train_crop_s=2.0,
        save_steps=100,
        logging_steps=10,
    )
    hubert_args, data_args, args, probe_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

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
            logger.info("%s has no preprocessor_config.json: input normalised per utterance", hubert_args.init_from)
            normalize = True

    state = make_partial_state(args)  # several processes also on a CPU-only machine (gloo); claims output_dir
    # every iteration's model and the final one (a copy of the last iteration's: probed once, the result cached)
    phone_probe = PhoneProbe(probe_args, data_args, seed=args.seed, device=state.device)
    output_dir = Path(args.output_dir)
    feature_extractor = Wav2Vec2FeatureExtractor(
        sampling_rate=data_args.sampling_rate, do_normalize=normalize, return_attention_mask=True
    )
    splits = load_label_splits(data_args, state)
    has_phones = [s for s, d in splits.items() if hubert_args.alignment_column in d.column_names]
    note = (
        None
        if has_phones
        else (f"Not measured: the dataset has no `{hubert_args.alignment_column}` column of phone alignments.")
    )
    history: list[dict[str, Any]] = []
    # the model the labels of the next iteration come from: --init_from plays iteration 1's
    previous: str | Path | None = hubert_args.init_from
    result: TrainResult | None = None
    model: HubertForPreTraining | None = None

    for iteration, num_clusters in enumerate(hubert_args.clusters_per_iteration, start=1):
        if iteration < hubert_args.first_iteration:
            continue
        folder = output_dir / f"iteration-{iteration}"
        layer = previous_config = None
        if previous is not None:
            previous_config = AutoConfig.from_pretrained(previous)
            layer = pick_label_layer(hubert_args, previous_config.num_hidden_layers, str(previous))
        if previous is None:
            source = "39-d MFCC (13 + Δ + ΔΔ)"
        elif str(previous) == hubert_args.init_from:
            source = f"layer {layer} of {hubert_args.init_from}"
        else:
            source = f"layer {layer} of the iteration-{iteration - 1} model"
        # continued pretraining: every iteration starts from the model its labels came from
        continue_from = str(previous) if hubert_args.init_from else None
        label_args = PseudoLabelArguments(
            output_dir=str(folder),
            iteration=iteration,
            feature_type="mfcc" if previous is None else "hubert",
            encoder_name_or_path=str(previous) if previous is not None else None,
            layer=layer,
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
            normalize_input=feature_extractor.do_normalize,  # features of the encoder's input as it was trained
            device=str(state.device),
        )
        settings = {
            **{k: v for k, v in dataclasses.asdict(label_args).items() if k not in ("output_dir", "device")},
            "dataset": [
                data_args.dataset_name,
                data_args.dataset_config,
                data_args.dataset_kwargs_dict,
                sorted(splits),
                data_args.max_train_samples,
                data_args.max_eval_samples,
            ],
            "model": [
                hubert_args.model_size if hubert_args.init_from else (hubert_args.model_size or "tiny"),
                hubert_args.config_overrides,
            ],
            "init_from": continue_from,
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
        }
        if state.is_main_process:
            check_settings(folder, settings)
        with state.main_process_first(), limit_threads(hubert_args.labeling_threads, hubert_args.kmeans_backend):
            labels: PseudoLabelResult = run_pseudo_label_iteration(
                splits, label_args, progress=state.is_local_main_process
            )
        label_rate = json.loads((labels.labeler_dir / "label_info.json").read_text())["label_rate"]
        history.append(
            {
                "iteration": iteration,
                "source": source,
                "num_clusters": num_clusters,
                "label_rate": label_rate,
                "metrics": labels.metrics,
                "started_from": continue_from,
            }
        )
        report_labels(history, labels, state)

        model_dir = folder / "model"
        iteration_args = dataclasses.replace(
            args,
            output_dir=str(model_dir),
            push_to_hub=False,
            run_name=f"{args.run_name or output_dir.name}-iteration-{iteration}",
        )
        if is_stage_complete(model_dir):
            state.print(f"iteration {iteration}: training already complete in {model_dir}, skipped")
            result = TrainResult(**json.loads((model_dir / "train_results.json").read_text()))
            history[-1]["init_summary"] = json.loads((model_dir / STAGE_MARKER).read_text()).get("init")
            accelerator = None
        else:
            accelerator = make_accelerator(iteration_args)
            config = build_config(
                hubert_args,
                num_clusters,
                label_rate,
                feature_extractor.sampling_rate,
                init_config=previous_config if continue_from else None,
                init_source=continue_from,
            )
            if continue_from:
                model, init_report = load_hubert_for_continued_pretraining(continue_from, config)
                history[-1]["init_summary"] = init_report.summary()
                if accelerator.is_main_process:
                    logger.info("iteration %d: %s", iteration, init_report.summary())
            else:
                model = HubertForPreTraining(config)
            collator = DataCollatorForHubertPretraining(
                feature_extractor, list(labels.label_dirs.values()), id_column=hubert_args.id_column
            )
            with accelerator.main_process_first():
                train_loader, eval_loader = build_pretraining_dataloaders(
                    data_args,
                    feature_extractor,
                    config,
                    batch_size=args.per_device_train_batch_size,
                    seed=args.seed,
                    collator=collator,
                    keep_columns=(hubert_args.id_column, CROP_OFFSET_COLUMN),
                )
            result = train(
                model,
                train_loader,
                iteration_args,
                accelerator=accelerator,
                sampling_rate=feature_extractor.sampling_rate,
                eval_dataloader=eval_loader,
                # fairseq: summed loss / masked frames of all micro-batches and processes of the update
                loss_normalizer=hubert_loss_normalizer,
                # layer drop (paper: 0.05) skips whole layers: DDP must expect parameters without gradient
                find_unused_parameters=config.layerdrop > 0,
                hparams={
                    "iteration": iteration,
                    "num_clusters": num_clusters,
                    "label_source": source,
                    "model_size": model_size_of(hubert_args, config if continue_from else None),
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
                history,
                note,
                feature_extractor,
                phone_probe,
            )
            if accelerator.is_main_process:
                finish(
                    model_dir,
                    iteration=iteration,
                    global_step=result.global_step,
                    init=history[-1].get("init_summary"),
                )
            accelerator.wait_for_everyone()
        previous = model_dir

    final_iteration = hubert_args.iterations
    if (
        is_stage_complete(output_dir)
        and json.loads((output_dir / STAGE_MARKER).read_text()).get("iteration") == final_iteration
    ):
        state.print(f"final model of iteration {final_iteration} already in {output_dir}, skipped")
    else:
        accelerator = make_accelerator(dataclasses.replace(args, push_to_hub=False, report_to="none"))
        model = HubertForPreTraining.from_pretrained(previous)
        finalize(
            accelerator,
            model,
            result,
            dataclasses.replace(args, push_to_hub=False),
            hubert_args,
            data_args,
            history,
            note,
            feature_extractor,
            phone_probe,
        )
        if accelerator.is_main_process:
            finish(output_dir, iteration=final_iteration, source=str(previous))
    if args.push_to_hub and state.is_main_process:
        staging = stage_for_hub(output_dir)
        push_folder_to_hub(staging, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trained = final_iteration - hubert_args.first_iteration + 1
    started = f" from {hubert_args.init_from}" if hubert_args.init_from else ""
    state.print(
        f"done: {trained} iteration(s){started}, the last is iteration {final_iteration}; final model in "
        f"{output_dir}\n" + quality_table(history, note)
    )
    return output_dir


def pick_label_layer(hubert_args: HubertArguments, num_layers: int, source: str) -> int:
    """`--label_layer`, or `default_label_layer` of a model of `num_layers`.

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


def report_labels(history: list[dict[str, Any]], labels: PseudoLabelResult, state: PartialState) -> None:
    """Print this iteration's stage times and label quality; warn when PNMI did not improve on the last iteration."""
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
            logger.warning(
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
    accelerator, model, result, args, hubert_args, data_args, history, note, feature_extractor, phone_probe=None
) -> Path:
    config = accelerator.unwrap_model(model).config
    started_from = history[-1].get("started_from")
    size = model_size_of(hubert_args, config if started_from else None)
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
            + (f" Encoder initialised from `{started_from}` (continued pretraining)." if started_from else "")
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
            **({"initialised from": f"`{started_from}` (encoder; new head)"} if started_from else {}),
        },
        tags=["hubert", "masked-prediction", "pseudo-labels"],
        phone_probe=phone_probe,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
