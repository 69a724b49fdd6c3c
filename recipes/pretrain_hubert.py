#!/usr/bin/env python
"""HuBERT pretraining (Hsu et al. 2021): k-means pseudo-labels → masked prediction → relabel with the new model.

Iteration 1 clusters 39-d MFCCs (13 + Δ + ΔΔ) of the training split into K=100 clusters, labels every split and
trains a `HubertForPreTraining` to predict the labels of masked frames. Iteration i > 1 clusters hidden layer L of
iteration i-1's model (default: the middle layer, N // 2: 6 of BASE's 12 as in the paper, 1 of `tiny`'s 2) into K=500
clusters, relabels, and trains a fresh model on the new labels. Fresh, not continued, as in the paper (§IV-C: each
iteration trains a new model on the new targets) and fairseq's recipe: the prediction head changes size with K anyway,
and each iteration's model then depends only on its labels, so rerunning one iteration does not depend on where the
previous training happened to stop.

With no arguments both iterations run on the offline `synthetic-librispeech` corpus (built on first use) with the
`tiny` encoder, in about 11 minutes on 2 CPU cores (measured). Layout of `--output_dir`:

    iteration-{i}/iteration.json    the iteration's settings (a rerun with other settings is refused)
    iteration-{i}/features/{split}/ features k-means is fitted on (memory-mapped float32)
    iteration-{i}/labeler/          `HubertPseudoLabeler.from_pretrained(...)` + centroids, kmeans.json, label_info.json
    iteration-{i}/labels/{split}/   the labels beside the dataset (`save_to_disk`: `labels`, `id`) + label_info.json
    iteration-{i}/metrics/{split}/  phone purity, cluster purity, PNMI when the dataset has phone alignments
    iteration-{i}/model/            checkpoints, logs, the trained model and its card
    config.json, model.safetensors, README.md, ...   the last iteration's model: `AutoModelForPreTraining` (after
                                    `import hf_speech_cl`), stock `HubertForCTC.from_pretrained(out)`

Every stage resumes: a rerun of the same command skips finished stages (each is published atomically, with a
completion marker, so an interrupted one restarts cleanly) and training continues from its newest checkpoint.

The training flags (`--max_steps`, `--learning_rate`, `--save_steps`, ...) apply to EACH iteration's training:
`--iterations 2 --max_steps 300` trains 2 x 300 updates.

Random crops (`--max_train_crop_s`) cut the labels with the audio (fairseq `collater_frm_label` offsets).

Examples:
    accelerate launch recipes/pretrain_hubert.py
    accelerate launch recipes/pretrain_hubert.py --iterations 3 --num_clusters 100,500,500 --layer 1
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
from transformers import HfArgumentParser, Wav2Vec2FeatureExtractor

from hf_speech_cl.data import DataArguments, build_pretraining_dataloaders, load_speech_dataset
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
        default=2, metadata={"help": "Labelling + training rounds: 1 = MFCC targets only; paper BASE: 2."}
    )
    num_clusters: str = field(
        default="100,500",
        metadata={
            "help": "K (k-means clusters = label classes) per iteration, comma-separated; the last value is reused "
            "for further iterations. Paper: 100 on MFCCs, 500 on the layer features afterwards."
        },
    )
    layer: int | None = field(
        default=None,
        metadata={
            "help": "Hidden layer of the previous iteration's model clustered from iteration 2 on, counted as "
            "`hidden_states[layer]` (0 = Transformer input, N = last block). Default: the middle one, N // 2 (the "
            "paper's layer 6 of BASE's 12)."
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
    model_size: str = field(
        default="tiny", metadata={"help": f"Encoder preset of the models trained: {', '.join(ENCODER_PRESETS)}."}
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
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"--layer must be >= 0, got {self.layer}")
        _ = self.clusters_per_iteration

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


def build_config(hubert_args: HubertArguments, num_clusters: int, label_rate: float, sampling_rate: int):
    objective = hubert_args.objective
    if objective == "auto":
        objective = "cpu" if hubert_args.model_size == "tiny" else "paper"
    config = HubertPretrainingConfig(
        **encoder_preset(hubert_args.model_size),
        **OBJECTIVE_SETTINGS[objective],
        num_clusters=num_clusters,
        label_rate=label_rate,
        sampling_rate=sampling_rate,
    )
    if hubert_args.config_overrides:
        config.update_from_string(hubert_args.config_overrides)
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
        f"reproduces them is in `iteration-{current['iteration']}/labeler/` of the training output). Each "
        "iteration trains a fresh model.\n\n"
        "### Label quality\n\n"
        "Frame labels against the corpus's phone alignments (Hsu et al. 2021 §IV-E, fairseq "
        "`measure_teacher_quality.py`): phone purity = E_z[max_y p(y|z)], cluster purity = E_y[max_z p(z|y)], "
        "PNMI = I(y; z) / H(y).\n\n" + quality_table(history, note)
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
    parser = HfArgumentParser((HubertArguments, DataArguments, PretrainingArguments), description=__doc__)
    parser.set_defaults(
        output_dir="outputs/hubert-tiny",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=2e-3,  # tiny preset, 300 updates: 5e-4 barely moved the loss (measured, see the README)
        max_train_crop_s=2.0,
        save_steps=100,
        logging_steps=10,
    )
    hubert_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    state = make_partial_state()  # several processes also on a CPU-only machine (gloo)
    output_dir = Path(args.output_dir)
    feature_extractor = Wav2Vec2FeatureExtractor(
        sampling_rate=data_args.sampling_rate, do_normalize=True, return_attention_mask=True
    )
    splits = load_label_splits(data_args, state)
    has_phones = [s for s, d in splits.items() if hubert_args.alignment_column in d.column_names]
    note = (
        None
        if has_phones
        else (f"Not measured: the dataset has no `{hubert_args.alignment_column}` column of phone alignments.")
    )
    history: list[dict[str, Any]] = []
    previous: Path | None = None
    result: TrainResult | None = None
    model: HubertForPreTraining | None = None

    for iteration, num_clusters in enumerate(hubert_args.clusters_per_iteration, start=1):
        folder = output_dir / f"iteration-{iteration}"
        layer = None
        if previous is not None:
            num_layers = HubertPretrainingConfig.from_pretrained(previous).num_hidden_layers
            layer = hubert_args.layer if hubert_args.layer is not None else num_layers // 2
        source = (
            "39-d MFCC (13 + Δ + ΔΔ)" if previous is None else f"layer {layer} of the iteration-{iteration - 1} model"
        )
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
            "model": [hubert_args.model_size, hubert_args.config_overrides],
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
            accelerator = None
        else:
            accelerator = make_accelerator(iteration_args)
            config = build_config(hubert_args, num_clusters, label_rate, feature_extractor.sampling_rate)
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
                    "model_size": hubert_args.model_size,
                },
            )
            finalize(
                accelerator, model, result, iteration_args, hubert_args, data_args, history, note, feature_extractor
            )
            if accelerator.is_main_process:
                finish(model_dir, iteration=iteration, global_step=result.global_step)
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
        )
        if accelerator.is_main_process:
            finish(output_dir, iteration=final_iteration, source=str(previous))
    if args.push_to_hub and state.is_main_process:
        staging = stage_for_hub(output_dir)
        push_folder_to_hub(staging, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    state.print(f"done: {final_iteration} iteration(s); final model in {output_dir}\n" + quality_table(history, note))
    return output_dir


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


def finalize(accelerator, model, result, args, hubert_args, data_args, history, note, feature_extractor) -> Path:
    config = accelerator.unwrap_model(model).config
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
            f"`HubertForPreTraining` (`{hubert_args.model_size}`, feat_extract_norm={config.feat_extract_norm}): "
            f"{config.num_hidden_layers} Transformer layers of {config.hidden_size} units, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters with the prediction head "
            f"(final_dim {config.final_dim}, {config.num_clusters} cluster embeddings). Its encoder loads with stock "
            "`HubertForCTC` / `HubertForSequenceClassification`."
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
        },
        tags=["hubert", "masked-prediction", "pseudo-labels"],
    )


if __name__ == "__main__":
    main(sys.argv[1:])
