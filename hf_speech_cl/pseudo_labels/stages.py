"""One HuBERT labelling iteration as resumable stages: dump features → fit k-means → label splits → label metrics.

Layout under `output_dir` (one folder per stage, each finished by `stage_complete.json`):

```
features/{fit_split}/   features.f32 + lengths.npy + features.json          (dump_features)
labeler/                HubertPseudoLabeler checkpoint + centroids.npy + kmeans.json + label_info.json
labels/{split}/         datasets.save_to_disk folder: `labels` (+ `id`) per row, + label_info.json
metrics/{split}/        metrics.json (phone purity, cluster purity, PNMI) when the split has phone alignments
```

`run_stage` makes every stage resumable and atomic: a stage whose folder holds the completion marker is skipped; a
stage writes into a hidden temporary sibling folder, writes the marker last and renames the folder into place, so an
interrupted stage leaves no partial output under the final name (the temporary folder is removed on error, or by the
next run after a kill). `run_pseudo_label_iteration` chains the stages for a recipe; each stage is also a plain
function for running them one at a time (fairseq `examples/hubert/simple_kmeans/`: dump → learn → label).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.hubert_pretraining import HubertPseudoLabeler
from .features import FeatureStore, dump_features, iter_waveforms
from .kmeans import assign_clusters, fit_kmeans
from .metrics import alignment_to_frames, label_quality, paired_frames, phone_inventory

__all__ = [
    "LABELS_COLUMN",
    "PseudoLabelArguments",
    "PseudoLabelResult",
    "StageResult",
    "attach_labels",
    "build_labeler",
    "crop_labels",
    "fit_labeler",
    "is_stage_complete",
    "label_info",
    "label_split",
    "load_label_info",
    "measure_label_quality",
    "run_pseudo_label_iteration",
    "run_stage",
]

logger = logging.getLogger(__name__)

STAGE_MARKER = "stage_complete.json"
LABEL_INFO_FILE = "label_info.json"
METRICS_FILE = "metrics.json"
LABELS_COLUMN = "labels"


# ---------------------------------------------------------------------------------------------------------------------
# Resumable, atomic stages
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What `run_stage` did: `skipped` (found complete) or ran for `seconds`."""

    name: str
    path: Path
    skipped: bool
    seconds: float


def is_stage_complete(path: str | Path) -> bool:
    """Whether `path` holds the output of a finished stage (its completion marker)."""
    return (Path(path) / STAGE_MARKER).is_file()


def _temporary_sibling(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{suffix}"


def run_stage(name: str, path: str | Path, fn: Callable[[Path], Any], *, overwrite: bool = False) -> StageResult:
    """Run `fn(temporary_folder)` unless `path` is complete; publish its output atomically at `path`.

    Args:
        name: for logs and the marker.
        path: the stage's output folder.
        fn: writes the stage's output into the folder it is given (not into `path`).
        overwrite: run even if `path` is complete (its old output is replaced only once the new one is finished).

    Returns:
        `StageResult`.
    """
    path = Path(path)
    if not overwrite and is_stage_complete(path):
        logger.info("Stage %s: already complete in %s, skipped", name, path)
        return StageResult(name, path, skipped=True, seconds=0.0)
    temporary = _temporary_sibling(path, "incomplete")
    if temporary.exists():  # left behind by a killed run
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    logger.info("Stage %s: running into %s", name, path)
    started = time.perf_counter()
    try:
        fn(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    marker = {"stage": name, "seconds": seconds, "finished": datetime.now(UTC).isoformat()}
    (temporary / STAGE_MARKER).write_text(json.dumps(marker, indent=2))
    if path.exists():  # an unfinished folder from elsewhere, or the output being overwritten
        shutil.rmtree(path)
    os.replace(temporary, path)
    logger.info("Stage %s: done in %.1f s", name, seconds)
    return StageResult(name, path, skipped=False, seconds=seconds)


# ---------------------------------------------------------------------------------------------------------------------
# Stage bodies
# ---------------------------------------------------------------------------------------------------------------------


def label_info(labeler: HubertPseudoLabeler, **extra: Any) -> dict[str, Any]:
    """The metadata written beside labels: iteration, source, layer, K, label rate (+ `extra`)."""
    config = labeler.config
    hubert = config.feature_type == "hubert"
    return {
        "iteration": config.iteration,
        "feature_type": config.feature_type,
        "source_model": config.source_model,
        "layer": config.layer,
        "feature_convention": config.feature_convention if hubert else None,
        "normalize_input": config.normalize_input if hubert else None,
        "num_clusters": config.num_clusters,
        "feature_dim": config.feature_dim,
        "label_rate": config.label_rate,
        "sampling_rate": config.sampling_rate,
        **extra,
    }


def load_label_info(path: str | Path) -> dict[str, Any]:
    """Read `label_info.json` of a labeler or labels folder."""
    return json.loads((Path(path) / LABEL_INFO_FILE).read_text())


def fit_labeler(
    features: FeatureStore | str | Path,
    labeler: HubertPseudoLabeler,
    output_dir: str | Path,
    *,
    backend: Literal["faiss", "sklearn"] = "faiss",
    sample_fraction: float = 0.1,
    seed: int = 0,
    **kmeans_kwargs: Any,
) -> HubertPseudoLabeler:
    """Fit k-means (K = `labeler.config.num_clusters`) on dumped features, store the centroids in `labeler` and save
    it (`save_pretrained`) to `output_dir` with `centroids.npy`, `kmeans.json` (fit time, inertia, sample size) and
    `label_info.json`.

    Raises:
        ValueError: the features were not made by a labeler of this feature type and dimension.
    """
    store = features if isinstance(features, FeatureStore) else FeatureStore(features)
    if store.dim != labeler.config.feature_dim or store.info.get("feature_type") != labeler.config.feature_type:
        raise ValueError(
            f"Features in {store.path} are {store.info.get('feature_type')} of dim {store.dim}; the labeler expects "
            f"{labeler.config.feature_type} of dim {labeler.config.feature_dim}."
        )
    result = fit_kmeans(store, labeler.config.num_clusters, backend, sample_fraction, seed, **kmeans_kwargs)
    labeler.set_centroids(result.centroids)
    output_dir = Path(output_dir)
    labeler.save_pretrained(output_dir)
    result.save(output_dir)
    info = label_info(labeler, kmeans=result.summary(), features=str(store.path))
    (output_dir / LABEL_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return labeler


def _store_covers(store: FeatureStore | None, dataset: datasets.Dataset, labeler: HubertPseudoLabeler) -> bool:
    """Whether `store` holds this labeler's features of every row of `dataset` (then labels come from it)."""
    if store is None:
        return False
    if store.dim != labeler.config.feature_dim or store.info.get("feature_type") != labeler.config.feature_type:
        raise ValueError(
            f"Features in {store.path} are {store.info.get('feature_type')} of dim {store.dim}; the labeler makes "
            f"{labeler.config.feature_type} of dim {labeler.config.feature_dim}."
        )
    return store.info.get("rows") is None and len(store) == len(dataset)


def label_split(
    dataset: datasets.Dataset,
    labeler: HubertPseudoLabeler,
    output_dir: str | Path,
    *,
    features: FeatureStore | None = None,
    audio_column: str = "audio",
    id_column: str | None = "id",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Label every row of `dataset` and `save_to_disk` the labels (one row per input row) to `output_dir`.

    The saved dataset has a `labels` column (the frame cluster ids at `labeler.config.label_rate`, int16 when K fits)
    and, when `dataset` has `id_column`, a copy of it so `attach_labels` can check the rows line up.
    `label_info.json` records the labeler's metadata, the frame count and the labelling speed.

    Args:
        features: the labeler's dumped features of exactly these rows (assigned in large blocks, no audio decoded);
            otherwise the labeler runs on the decoded audio. Both give the same ids.
        device: where the labeler/assignment runs (default: where the labeler is).

    Returns:
        The labels dataset (read back from `output_dir`).
    """
    output_dir = Path(output_dir)
    if device is not None:
        labeler.to(device)
    config = labeler.config
    from_features = _store_covers(features, dataset, labeler)
    ids = dataset[id_column] if id_column and id_column in dataset.column_names else None
    dtype = "int16" if config.num_clusters <= np.iinfo(np.int16).max else "int32"
    counts = {"frames": 0}

    def utterance_labels() -> Iterator[np.ndarray]:
        if from_features:
            for first, last, block in features.iter_blocks():
                flat = assign_clusters(block, labeler.centroids, device=labeler.device)
                yield from np.split(flat, np.cumsum(features.lengths[first:last])[:-1])
        else:
            for waveform in iter_waveforms(dataset, config.sampling_rate, audio_column):
                yield labeler(torch.from_numpy(waveform).to(labeler.device)[None]).cluster_ids[0].cpu().numpy()

    def rows() -> Iterator[dict[str, Any]]:
        progress_bar = tqdm(total=len(dataset), desc="labels", disable=not progress)
        for index, labels in enumerate(utterance_labels()):
            counts["frames"] += len(labels)
            progress_bar.update(1)
            row: dict[str, Any] = {LABELS_COLUMN: labels.astype(dtype)}
            if ids is not None:
                row[id_column] = ids[index]
            yield row
        progress_bar.close()

    schema = {LABELS_COLUMN: datasets.List(datasets.Value(dtype))}
    if ids is not None:
        schema[id_column] = dataset.features[id_column]
    cache = _temporary_sibling(output_dir, f"cache-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    try:
        labels = datasets.Dataset.from_generator(
            rows, features=datasets.Features(schema), cache_dir=str(cache), fingerprint=uuid.uuid4().hex
        )
        seconds = time.perf_counter() - started
        if len(labels) != len(dataset):
            raise RuntimeError(f"Labelled {len(labels)} rows of {len(dataset)}.")
        labels.save_to_disk(str(output_dir))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    info = label_info(
        labeler,
        num_utterances=len(dataset),
        num_frames=counts["frames"],
        labelled_from="features" if from_features else "audio",
        seconds=seconds,
        frames_per_second=counts["frames"] / seconds if seconds > 0 else None,
    )
    (output_dir / LABEL_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    logger.info("Labelled %d utterances (%d frames) in %.1f s", len(dataset), counts["frames"], seconds)
    return datasets.load_from_disk(str(output_dir))


def measure_label_quality(
    labels: datasets.Dataset | str | Path,
    dataset: datasets.Dataset,
    *,
    label_rate: float,
    alignment_column: str = "phone_alignment",
    frame_offset: float | None = None,
    phone_to_id: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Phone purity, cluster purity and PNMI (`metrics.label_quality`) of a split's labels against its phone
    alignments (`dataset[alignment_column]`: lists of `{phone, start, end}` in seconds).

    Each utterance's alignment is turned into phone ids at `label_rate` (`alignment_to_frames`) for as many frames as
    it has labels. Also reports the number of utterances and the phone inventory size.

    Raises:
        ValueError: `dataset` has no `alignment_column`, or the two differ in length.
    """
    if alignment_column not in dataset.column_names:
        raise ValueError(f"No column {alignment_column!r} in the dataset; columns: {dataset.column_names}.")
    if not isinstance(labels, datasets.Dataset):
        labels = datasets.load_from_disk(str(labels))
    if len(labels) != len(dataset):
        raise ValueError(f"{len(labels)} label rows for {len(dataset)} dataset rows.")
    alignments = list(dataset.select_columns([alignment_column])[alignment_column])
    inventory = dict(phone_to_id) if phone_to_id is not None else phone_inventory(alignments)
    label_lists = [np.asarray(row, dtype=np.int64) for row in labels[LABELS_COLUMN]]
    phone_lists = [
        alignment_to_frames(alignment, label_rate, inventory, len(utterance), frame_offset=frame_offset)
        for alignment, utterance in zip(alignments, label_lists, strict=True)
    ]
    phones, frame_labels, difference = paired_frames(label_lists, phone_lists)
    quality = label_quality(phones, frame_labels)
    quality.update(num_utterances=len(dataset), phone_inventory_size=len(inventory), frame_difference=difference)
    return quality


# ---------------------------------------------------------------------------------------------------------------------
# Using labels
# ---------------------------------------------------------------------------------------------------------------------


def attach_labels(
    dataset: datasets.Dataset, labels: datasets.Dataset | str | Path, *, id_column: str | None = "id"
) -> datasets.Dataset:
    """`dataset` with the `labels` column of a `label_split` output added (rows matched by position).

    Raises:
        ValueError: different row counts, or `id_column` values that differ (rows out of order).
    """
    if not isinstance(labels, datasets.Dataset):
        labels = datasets.load_from_disk(str(labels))
    if len(labels) != len(dataset):
        raise ValueError(f"{len(labels)} label rows for {len(dataset)} dataset rows.")
    if id_column and id_column in labels.column_names and id_column in dataset.column_names:
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(dataset[id_column], labels[id_column], strict=True)) if a != b), None
        )
        if mismatch is not None:
            raise ValueError(
                f"Row {mismatch}: dataset {id_column}={dataset[mismatch][id_column]!r} but labels were made for "
                f"{labels[mismatch][id_column]!r}; the rows are not in the order they were labelled in."
            )
    if LABELS_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(LABELS_COLUMN)
    return datasets.concatenate_datasets([dataset, labels.select_columns([LABELS_COLUMN])], axis=1)


def crop_labels(
    labels: np.ndarray | torch.Tensor, start_sample: int, num_samples: int, sampling_rate: int, label_rate: float
) -> np.ndarray | torch.Tensor:
    """The labels of audio samples `[start_sample, start_sample + num_samples)`, for cropping audio and labels
    together (fairseq `HubertDataset.collater_frm_label`: `round(start · label_rate / sampling_rate)`, size
    `round(num_samples · label_rate / sampling_rate)`, cut at the end of the labels)."""
    ratio = label_rate / sampling_rate
    start = int(round(start_sample * ratio))
    size = int(round(num_samples * ratio))
    return labels[start : start + size]


# ---------------------------------------------------------------------------------------------------------------------
# One iteration, end to end
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PseudoLabelArguments:
    """Arguments of one labelling iteration (`HfArgumentParser`-ready)."""

    output_dir: str = field(metadata={"help": "Folder of this iteration's features, labeler, labels and metrics."})
    iteration: int = field(default=1, metadata={"help": "HuBERT iteration the labels are for (metadata)."})
    feature_type: str = field(
        default="mfcc", metadata={"help": "'mfcc' (iteration 1) or 'hubert' (a layer of an encoder, later)."}
    )
    encoder_name_or_path: str | None = field(
        default=None, metadata={"help": "HuBERT checkpoint (stock or HubertForPreTraining) for feature_type=hubert."}
    )
    layer: int | None = field(default=None, metadata={"help": "Hidden layer of the encoder (see feature_convention)."})
    feature_convention: str = field(
        default="hf", metadata={"help": "'hf': hidden_states[layer], 0..N; 'fairseq': extract_features layer, 1..N."}
    )
    normalize_input: bool = field(
        default=True, metadata={"help": "Encoder trained on per-utterance normalised audio (fairseq BASE: False)."}
    )
    num_clusters: int = field(default=100, metadata={"help": "K (HuBERT: 100 for MFCC, 500 afterwards)."})
    kmeans_backend: str = field(default="faiss", metadata={"help": "'faiss' or 'sklearn' (fairseq's settings)."})
    sample_fraction: float = field(default=0.1, metadata={"help": "Fraction of utterances k-means is fitted on."})
    max_dump_utterances: int | None = field(
        default=None, metadata={"help": "Dump features of only this many random utterances of the fit split."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the utterance sample and the k-means initialisation."})
    fit_split: str = field(default="train", metadata={"help": "Split whose features k-means is fitted on."})
    sampling_rate: int = field(default=16000, metadata={"help": "Hz; audio is decoded/resampled to it."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of the datasets."})
    id_column: str = field(default="id", metadata={"help": "Row id column copied beside the labels (if present)."})
    alignment_column: str = field(
        default="phone_alignment", metadata={"help": "Phone alignment column for label metrics (if present)."}
    )
    device: str | None = field(default=None, metadata={"help": "Device for features and labelling (default CPU)."})


@dataclass
class PseudoLabelResult:
    """Where an iteration's outputs are and what each stage did."""

    labeler_dir: Path
    label_dirs: dict[str, Path]
    metrics: dict[str, dict[str, Any]]
    kmeans: dict[str, Any]
    stages: list[StageResult]


def build_labeler(args: PseudoLabelArguments, encoder: torch.nn.Module | None = None) -> HubertPseudoLabeler:
    """The (centroid-less) labeler `args` describe: MFCC, or layer `args.layer` of `encoder` / of the HuBERT loaded
    from `args.encoder_name_or_path` (`HubertModel.from_pretrained`, which reads stock and `hubert_pretraining`
    checkpoints alike).

    Raises:
        ValueError: a HuBERT source without encoder or layer, or an unknown feature type.
    """
    if args.feature_type == "mfcc":
        return HubertPseudoLabeler.for_mfcc(
            args.num_clusters, sampling_rate=args.sampling_rate, iteration=args.iteration
        )
    if args.feature_type != "hubert":
        raise ValueError(f"`feature_type` must be 'mfcc' or 'hubert', got {args.feature_type!r}.")
    if args.layer is None or (encoder is None and args.encoder_name_or_path is None):
        raise ValueError(
            "`feature_type='hubert'` needs `layer` and an encoder (`encoder_name_or_path`), got "
            f"layer={args.layer}, encoder_name_or_path={args.encoder_name_or_path}."
        )
    if encoder is None:
        from transformers import HubertModel

        encoder = HubertModel.from_pretrained(args.encoder_name_or_path)
    return HubertPseudoLabeler.for_hubert_layer(
        encoder,
        args.layer,
        args.num_clusters,
        normalize_input=args.normalize_input,
        feature_convention=args.feature_convention,
        sampling_rate=args.sampling_rate,
        source_model=args.encoder_name_or_path,
        iteration=args.iteration,
    )


def run_pseudo_label_iteration(
    splits: Mapping[str, datasets.Dataset],
    args: PseudoLabelArguments,
    *,
    encoder: torch.nn.Module | None = None,
    kmeans_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> PseudoLabelResult:
    """Dump features of `args.fit_split` → fit k-means → label every split → metrics where phones are known.

    Each stage is skipped when its output is complete, so rerunning the same call after an interruption resumes.

    Args:
        splits: `{split name: dataset}`, each with an `Audio` column; `args.fit_split` must be one of them.
        encoder: a HuBERT model to take features from instead of loading `args.encoder_name_or_path`.
        kmeans_kwargs: backend arguments for `fit_kmeans`.

    Returns:
        `PseudoLabelResult`; use `attach_labels(dataset, result.label_dirs[split])` to train on them.

    Raises:
        ValueError: `args.fit_split` not in `splits`.
    """
    if args.fit_split not in splits:
        raise ValueError(f"`fit_split={args.fit_split!r}` is not among the splits {sorted(splits)}.")
    output_dir = Path(args.output_dir)
    device = torch.device(args.device) if args.device else None
    labeler = build_labeler(args, encoder)
    if device is not None:
        labeler.to(device)
    stages: list[StageResult] = []

    fit_dataset = splits[args.fit_split]
    features_dir = output_dir / "features" / args.fit_split
    stages.append(
        run_stage(
            f"features:{args.fit_split}",
            features_dir,
            lambda folder: dump_features(
                fit_dataset,
                labeler,
                folder,
                audio_column=args.audio_column,
                max_utterances=args.max_dump_utterances,
                seed=args.seed,
                progress=progress,
            ),
        )
    )
    store = FeatureStore(features_dir)

    labeler_dir = output_dir / "labeler"
    stages.append(
        run_stage(
            "kmeans",
            labeler_dir,
            lambda folder: fit_labeler(
                store,
                labeler,
                folder,
                backend=args.kmeans_backend,
                sample_fraction=args.sample_fraction,
                seed=args.seed,
                **dict(kmeans_kwargs or {}),
            ),
        )
    )
    # the saved labeler is the source of truth: labels are those anyone reloading it reproduces
    labeler = HubertPseudoLabeler.from_pretrained(labeler_dir)
    if device is not None:
        labeler.to(device)

    label_dirs: dict[str, Path] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for split, dataset in splits.items():
        label_dirs[split] = output_dir / "labels" / split
        split_features = store if split == args.fit_split else None
        stages.append(
            run_stage(
                f"labels:{split}",
                label_dirs[split],
                lambda folder, dataset=dataset, split_features=split_features: label_split(
                    dataset,
                    labeler,
                    folder,
                    features=split_features,
                    audio_column=args.audio_column,
                    id_column=args.id_column,
                    progress=progress,
                ),
            )
        )
        if args.alignment_column in dataset.column_names:
            metrics_dir = output_dir / "metrics" / split
            stages.append(
                run_stage(
                    f"metrics:{split}",
                    metrics_dir,
                    lambda folder, dataset=dataset, split=split: _write_json(
                        folder / METRICS_FILE,
                        measure_label_quality(
                            label_dirs[split],
                            dataset,
                            label_rate=labeler.config.label_rate,
                            alignment_column=args.alignment_column,
                            frame_offset=labeler.config.frame_center_seconds,
                        ),
                    ),
                )
            )
            metrics[split] = json.loads((metrics_dir / METRICS_FILE).read_text())
    kmeans = json.loads((labeler_dir / "kmeans.json").read_text())
    return PseudoLabelResult(labeler_dir, label_dirs, metrics, kmeans, stages)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))
