"""Final model folders: atomic `save_pretrained`, model cards rendered from `model_cards/`, Hub upload."""

from __future__ import annotations

import json
import logging
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .checkpointing import RUN_MARKER, apply_default_modes, default_file_mode, default_folder_mode
from .schedules import describe_schedule

__all__ = [
    "MODEL_CARD_DIR",
    "finalize_pretraining",
    "push_folder_to_hub",
    "render_model_card",
    "training_hyperparameters",
    "save_pretrained_atomic",
    "write_model_card",
]

logger = logging.getLogger(__name__)

#: Card templates ship inside the package (`hf_speech_cl/model_cards` links to the repository's `model_cards/`).
MODEL_CARD_DIR = Path(str(resources.files("hf_speech_cl") / "model_cards"))

#: The phone probe's report beside the model (`hf_speech_cl.finetuning.phone_probe.PHONE_PROBE_FILE`).
PHONE_PROBE_FILE = "phone_probe.json"

# Written last, so that a folder holding config.json always holds the weights it describes.
_WRITE_LAST = ("config.json",)


def save_pretrained_atomic(output_dir: str | os.PathLike, *savables: Any) -> list[str]:
    """`save_pretrained` every object of `savables` (model, feature extractor, processor) into `output_dir`.

    Everything is first written to `output_dir/.tmp-save`, then each file is moved into place with `os.replace`,
    `config.json` last: a run killed while saving leaves either the previous final files or the new ones, never a
    config without its weights. Other content of `output_dir` (checkpoints, logs) is left alone. The files get the
    modes a plain `open()` gives (`0o666 & ~umask`), whatever the writer did (safetensors writes 0o600).

    Returns:
        The names of the files written.
    """
    output_dir = Path(output_dir)
    tmp = output_dir / ".tmp-save"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for obj in savables:
        obj.save_pretrained(tmp)
    apply_default_modes(tmp)  # safetensors >= 0.8 writes model.safetensors 0o600 (safetensors/safetensors#782)
    names = sorted(p.name for p in tmp.iterdir())
    for name in sorted(names, key=lambda n: n in _WRITE_LAST):
        target = output_dir / name
        if target.is_dir() and not (tmp / name).is_dir():
            shutil.rmtree(target)
        if (tmp / name).is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(tmp / name), str(target))
        else:
            os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return names


def render_model_card(template: str, card_data: dict[str, Any], **variables: Any) -> ModelCard:
    """Render `model_cards/{template}.md` (Jinja2, through `huggingface_hub.ModelCard.from_template`).

    Args:
        template: file stem in `model_cards/`, e.g. `"pretraining"`.
        card_data: the YAML header (`license`, `tags`, `datasets`, `library_name`, `pipeline_tag`, `base_model`, ...).
        variables: values the template uses (`model_name`, `objective`, `metrics`, ...).

    Raises:
        FileNotFoundError: if the template does not exist (names the folder searched).
    """
    path = MODEL_CARD_DIR / f"{template}.md"
    if not path.is_file():
        raise FileNotFoundError(f"No model card template {path.name!r} in {MODEL_CARD_DIR}")
    data = ModelCardData(**{k: v for k, v in card_data.items() if v is not None})
    return ModelCard.from_template(data, template_path=str(path), **variables)


def write_model_card(output_dir: str | os.PathLike, template: str, card_data: dict[str, Any], **variables) -> Path:
    """Render a card (see `render_model_card`) and write it atomically to `output_dir/README.md`."""
    from .checkpointing import atomic_write_text

    card = render_model_card(template, card_data, **variables)
    path = Path(output_dir) / "README.md"
    atomic_write_text(path, str(card))
    return path


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload model trained with hf_speech_cl",
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` (weights, config, card) without its checkpoints, logs and
    temporary folders, nor the run marker (`RUN_MARKER`).

    Returns:
        The URL of the commit.
    """
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=[
            "checkpoint-*",
            "checkpoint-*/**",
            ".tmp-*",
            ".tmp-*/**",
            "logs/**",
            "best_model",
            "best_model/**",
            RUN_MARKER,
        ],
    )
    url = getattr(info, "commit_url", str(info))
    logger.info("Uploaded %s to %s", folder, url)
    return url


# Not walked when looking for what `after_save` wrote: checkpoints, logs, temporary folders, HuBERT's stages.
_NOT_FINAL = ("checkpoint-", ".tmp-", "logs", "iteration-")


def _file_states(folder: Path) -> dict[Path, tuple[int, int]]:
    """`(inode, mtime)` of every file and folder under `folder`, outside checkpoints, logs and temporary folders."""
    states = {}
    for child in folder.iterdir():
        if child.name.startswith(_NOT_FINAL) or child.is_symlink():
            continue
        for path in [child, *child.rglob("*")] if child.is_dir() else [child]:
            status = path.lstat()
            states[path] = (status.st_ino, status.st_mtime_ns)
    return states


def _apply_default_modes_to_changes(folder: Path, before: dict[Path, tuple[int, int]]) -> None:
    """The modes of `apply_default_modes` for each file and folder under `folder` new or rewritten since `before`."""
    file_mode, folder_mode = default_file_mode(), default_folder_mode()
    for path, state in _file_states(folder).items():
        if before.get(path) != state and not path.is_symlink():
            os.chmod(path, folder_mode if path.is_dir() else file_mode)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def training_hyperparameters(result: Any, args: Any, accelerator: Any) -> dict[str, Any]:
    """The optimisation rows of every model card (pretraining and fine-tuning): updates, clips per update, processes,
    peak learning rate, warm-up and schedule (`describe_schedule`: the tri-stage phases), AdamW settings, clipping,
    mixed precision, seed.

    Args:
        result: the loop's `TrainResult` (`global_step`).
        args: the run's `PretrainingArguments` (or a subclass).
        accelerator: the run's `Accelerator`.
    """
    schedule, warmup = describe_schedule(
        args.lr_scheduler_type,
        num_warmup_steps=args.num_warmup_steps,
        num_training_steps=args.max_steps,
        scheduler_kwargs=args.lr_scheduler_kwargs_dict,
    )
    return {
        "updates": result.global_step,
        "clips per device per update": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "processes": accelerator.num_processes,
        "peak learning rate": args.learning_rate,
        "warm-up updates": warmup,
        "schedule": schedule,
        "optimizer": f"AdamW (betas {args.adam_beta1}, {args.adam_beta2}; eps {args.adam_epsilon}; "
        f"weight decay {args.weight_decay})",
        "gradient clipping": args.max_grad_norm,
        "mixed precision": accelerator.mixed_precision,
        "seed": args.seed,
    }


def finalize_pretraining(
    *,
    accelerator: Any,
    model: Any,
    result: Any,
    args: Any,
    savables: tuple[Any, ...] = (),
    objective_name: str,
    objective_description: str,
    recipe: str,
    dataset: str,
    train_split: str,
    architecture: str,
    usage: str,
    finetune_command: str,
    citation: str,
    dataset_note: str | None = None,
    augmentations: list[dict[str, Any]] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    after_save: Any = None,
    phone_probe: Any = None,
) -> Path:
    """The end of every pretraining recipe: save the model, write its card, optionally push it to the Hub.

    Runs the writing on the main process only and synchronises the others. `after_save(output_dir)` runs after the
    model is saved and before the card is written (e.g. to export the encoder as a stock checkpoint).
    `phone_probe(output_dir)` (a `hf_speech_cl.finetuning.PhoneProbe`) runs after that on the saved model; the
    report it returns (None: probe off) is written to `output_dir/phone_probe.json` and to the card's "Phone probe"
    section.

    Returns:
        The output folder.
    """
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_pretrained_atomic(output_dir, unwrapped, *savables)
        if after_save is not None:
            before = _file_states(output_dir)
            after_save(output_dir)
            _apply_default_modes_to_changes(output_dir, before)  # e.g. an exported encoder's model.safetensors
        probe_report = phone_probe(output_dir) if phone_probe is not None else None
        if probe_report is not None:
            from .checkpointing import atomic_write_text

            atomic_write_text(output_dir / PHONE_PROBE_FILE, json.dumps(probe_report.to_dict(), indent=2))
        names = sorted(set(result.first_metrics) | set(result.last_metrics) | set(result.eval_metrics))
        metrics = [
            {
                "name": name,
                "first": _fmt(result.first_metrics.get(name, "")),
                "last": _fmt(result.eval_metrics.get(name, result.last_metrics.get(name, ""))),
            }
            for name in names
            if name not in ("epoch", "audio_hours_seen")
        ]
        hparams = {**training_hyperparameters(result, args, accelerator), **(hyperparameters or {})}
        hardware = f"{accelerator.num_processes} x {accelerator.device.type}"
        if accelerator.device.type == "cpu":
            hardware += f" ({os.cpu_count()} cores)"
        write_model_card(
            output_dir,
            "pretraining",
            {
                "license": "apache-2.0",
                "library_name": "transformers",
                "tags": ["audio", "speech", "self-supervised-learning", "hf_speech_cl", *(tags or [])],
                "datasets": [dataset] if "/" in dataset else None,
            },
            model_name=args.hub_model_id or output_dir.name,
            objective_name=objective_name,
            objective_description=objective_description,
            recipe=recipe,
            dataset=dataset,
            train_split=train_split,
            dataset_note=dataset_note,
            audio_hours=result.audio_seconds / 3600,
            steps=result.global_step,
            batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps,
            num_processes=accelerator.num_processes,
            augmentations=augmentations or [],
            architecture=architecture,
            hyperparameters=hparams,
            metrics=metrics,
            wall_time_s=result.wall_time_s,
            audio_seconds_per_second=result.audio_seconds_per_second,
            hardware=hardware,
            usage=usage,
            finetune_command=finetune_command,
            citation=citation,
            phone_probe=probe_report.markdown() if probe_report is not None else None,
        )
        if args.push_to_hub:
            push_folder_to_hub(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    accelerator.wait_for_everyone()
    return output_dir
