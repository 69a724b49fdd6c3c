"""The end of every fine-tuning recipe: save model + processor atomically, write the model card, push to the Hub.

The counterpart of `hf_speech_cl.training.finalize_pretraining`, through the same shared pieces
(`save_pretrained_atomic`, `write_model_card` with `model_cards/finetuning.md`, `push_folder_to_hub`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..training import push_folder_to_hub, save_pretrained_atomic, write_model_card
from ..training.checkpointing import atomic_write_text
from ..training.export import training_hyperparameters
from ..training.loop import data_report

__all__ = ["finalize_finetuning", "format_metric"]


def format_metric(value: Any) -> str:
    """Numbers to 4 significant digits, the rest as text ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _results_table(metrics: dict[str, dict[str, float]], names: Sequence[str]) -> tuple[list[str], list[dict]]:
    splits = [split for split in metrics if metrics[split]]
    rows = [
        {"name": name, "values": [format_metric(metrics[split].get(name)) for split in splits]}
        for name in names
        if any(name in metrics[split] for split in splits)
    ]
    return splits, rows


def _best_model_report(result: Any) -> dict[str, Any]:
    """`all_results.json`'s view of the best model / early stopping (`TrainResult` fields; `model_step` is the
    update whose weights were saved and tested)."""
    keys = ("model_step", "stopped_early", "metric_for_best_model", "best_metric", "best_step")
    return {key: getattr(result, key) for key in keys if hasattr(result, key)}


def _best_model_rows(result: Any, args: Any) -> dict[str, str]:
    """The card's rows on which update's model was saved and tested, and on early stopping."""
    step, last = getattr(result, "model_step", None) or result.global_step, result.global_step
    metric, best = getattr(result, "metric_for_best_model", None), getattr(result, "best_metric", None)
    which = "the best" if step != last else "the last, also the best" if result.best_step == last else "the last"
    rows = {"model saved and scored": f"update {step} of {last} ({which})"}
    if metric is not None and best is not None:
        rows["best validation"] = f"{metric} {format_metric(float(best))} at update {result.best_step}"
    patience = getattr(args, "early_stopping_patience", None)
    if patience is not None:
        rows["early stopping"] = (
            f"patience {patience} evaluations every {args.eval_steps} updates (threshold "
            f"{args.early_stopping_threshold:g}"
            + (
                f", counted from update {args.early_stopping_min_steps}"
                if getattr(args, "early_stopping_min_steps", 0)
                else ""
            )
            + "): "
            + (f"stopped at update {last}" if getattr(result, "stopped_early", False) else f"ran to {last} updates")
        )
    return rows


def finalize_finetuning(
    *,
    accelerator: Any,
    model: Any,
    result: Any,
    args: Any,
    savables: tuple[Any, ...],
    task_name: str,
    task_description: str,
    mode_description: str,
    pipeline_tag: str,
    recipe: str,
    base_model: str | None,
    base_model_type: str | None,
    data_args: Any,
    train_minutes: float | None,
    num_train_utterances: int | None,
    metrics: dict[str, dict[str, float]],
    metric_names: Sequence[str],
    hyperparameters: dict[str, Any],
    usage: str,
    command: str,
    citation: str,
    label_names: Sequence[str] | None = None,
    vocabulary: Sequence[str] | None = None,
    examples: list[dict[str, str]] | None = None,
    examples_split: str | None = None,
    confusion_matrix: str | None = None,
    confusion_matrix_split: str | None = None,
    tags: Sequence[str] = (),
    eval_dataloaders: dict[str, Any] | None = None,
) -> Path:
    """Save the fine-tuned model and its processor, write its card and `all_results.json`, push if asked.

    Runs the writing on the main process only and synchronises the others.

    Args:
        accelerator, model, result, args: the run's `Accelerator`, the (prepared) model, the `TrainResult` and the
            `PretrainingArguments` (`output_dir`, `push_to_hub`, `hub_model_id`, ...). The card and
            `all_results.json` say which update's weights the model holds (`result.model_step`: the best one with
            `--load_best_model_at_end`), the best validation metric and its update, and whether training stopped
            early.
        savables: saved next to the model (the `Wav2Vec2Processor`, or the feature extractor).
        data_args: the run's `DataArguments`: the card names its dataset, training split, note and labeled subset
            (`train_minutes`, drawn with `args.seed`) from them. `train_minutes` / `num_train_utterances`: the
            labelled audio trained on (`None` for a stream, whose size is not known in advance).
        task_name: a short name for the card (e.g. "speech recognition (CTC)").
        metrics: `{split: {metric name: value}}` (values without the split prefix), e.g.
            `{"validation": {"wer": 0.3}, "test": {"wer": 0.31}}`; `metric_names` picks the rows and their order.
        eval_dataloaders: `{split: DataLoader}` of the splits scored (validation, test): the clips their data
            pipelines left out are added to `result.data_report` (logged, and written to `train_results.json` and
            `all_results.json` next to the training split's), so no dropped clip goes unreported.
        The other arguments fill the template `model_cards/finetuning.md` (see there).

    Returns:
        The output folder.
    """
    output_dir = Path(args.output_dir)
    dataset = data_args.dataset_name
    balance = "speaker-balanced" if data_args.speaker_column else "random"
    subset_description = (
        f"{balance} subset of {data_args.train_minutes:g} minutes, seed {args.seed}"
        if data_args.train_minutes
        else None
    )
    eval_splits = [{"split": s, "utterances": int(values.get("num_utterances", 0))} for s, values in metrics.items()]
    evaluated = data_report(accelerator, eval_dataloaders or {})  # every process: it gathers
    result.data_report = {**result.data_report, **evaluated}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_pretrained_atomic(output_dir, accelerator.unwrap_model(model), *savables)
        if evaluated:  # the loop wrote it with the training split's report only
            atomic_write_text(output_dir / "train_results.json", json.dumps(asdict(result), indent=2))
        all_results = {
            "global_step": result.global_step,
            **_best_model_report(result),
            "wall_time_s": result.wall_time_s,
            "train_loss": result.last_metrics.get("loss"),
            **{f"{split}_{name}": value for split, values in metrics.items() for name, value in values.items()},
            "data_report": result.data_report,
        }
        atomic_write_text(output_dir / "all_results.json", json.dumps(all_results, indent=2, default=float))
        splits, rows = _results_table(metrics, metric_names)
        hardware = f"{accelerator.num_processes} x {accelerator.device.type}"
        if accelerator.device.type == "cpu":
            hardware += f" ({os.cpu_count()} cores)"
        hparams = {
            **training_hyperparameters(result, args, accelerator),
            **_best_model_rows(result, args),
            **hyperparameters,
        }
        card_data = {
            "license": "apache-2.0",
            "library_name": "transformers",
            "pipeline_tag": pipeline_tag,
            "tags": ["audio", "speech", "hf_speech_cl", *tags],
            "datasets": [dataset] if "/" in dataset and not os.path.isdir(dataset) else None,
            "base_model": base_model if base_model and "/" in base_model and not os.path.isdir(base_model) else None,
        }
        write_model_card(
            output_dir,
            "finetuning",
            card_data,
            model_name=args.hub_model_id or output_dir.name,
            task_name=task_name,
            task_description=task_description,
            mode_description=mode_description,
            recipe=recipe,
            base_model=base_model,
            base_model_type=base_model_type,
            dataset=dataset,
            train_split=data_args.train_split,
            dataset_note=data_args.dataset_note,
            train_minutes=train_minutes,
            num_train_utterances=num_train_utterances,
            subset_description=subset_description,
            eval_splits=eval_splits,
            label_names=list(label_names or []),
            vocabulary=list(vocabulary or []),
            result_splits=splits,
            results=rows,
            confusion_matrix=confusion_matrix,
            confusion_matrix_split=confusion_matrix_split,
            examples=examples or [],
            examples_split=examples_split,
            wall_time_s=result.wall_time_s,
            steps=result.global_step,
            hardware=hardware,
            hyperparameters=hparams,
            usage=usage,
            command=command,
            citation=citation,
        )
        if args.push_to_hub:
            push_folder_to_hub(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    accelerator.wait_for_everyone()
    return output_dir
