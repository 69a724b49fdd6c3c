#!/usr/bin/env python
"""Fine-tune a speech encoder for speech recognition with CTC on characters (Baevski et al. 2020 §4.3, §5.1).

The encoder comes from any of our pretraining recipes, a stock wav2vec 2.0 / HuBERT checkpoint, or nothing
(`--model_name_or_path none`: the no-pretraining baseline). A character vocabulary is built from the training
transcripts (`<pad>` = CTC blank, `<unk>`, `|` between words, the letters and the apostrophe), and the output folder
holds the `AutoModelForCTC` model with its `Wav2Vec2Processor`, so that `pipeline("automatic-speech-recognition",
model=out)` transcribes audio files. WER and CER (jiwer, greedy CTC decoding) are computed on the validation and
test splits over all processes.

Defaults follow fairseq's low-resource fine-tuning (`examples/wav2vec/config/finetuning/base_10m.yaml`) where they
matter for learning from 10 minutes: the convolutional feature encoder frozen (`feature_grad_mult: 0.0`), the whole
encoder frozen for the first updates so only the new output layer learns (`freeze_finetune_updates`), SpecAugment
on (time masks; fairseq BASE uses `mask_prob` 0.65 and channel masks 0.25 x 64 — pass those for BASE models),
`zero_infinity` CTC averaged per utterance, linear warm-up. `--probe` trains only a SUPERB-style probe (a learned
weighted sum of all hidden layers → BiLSTM → CTC) on the frozen encoder.

With no arguments it trains the tiny preset from scratch on the whole train split of the offline
`synthetic-librispeech` (`--train_minutes 10` for a Libri-light-style 10-minute subset): 1500 updates, about 10
minutes on 2 CPU cores. Measured with `--train_minutes 10` from the tiny default checkpoints of the pretraining
recipes (test split, 1500 updates): SimCLR CER 0.73, wav2vec 2.0 0.79 (0.96 after 600 updates), HuBERT 0.86; WER
still about 1.0 (a tiny model on CPU learns characters before words). Without pretraining, 600 updates leave every
output blank. Validation and test scores cover every utterance of the split (`--max_eval_duration_s` to limit), and
the report says how many were scored (`*_num_utterances`).

Converged runs (label-efficiency comparisons): the validation CER of every evaluation is tracked
(`--metric_for_best_model cer` by default; the best weights in `best_model/`); `--early_stopping_patience N` stops
after N evaluations without improvement (`--max_steps` the cap) and `--load_best_model_at_end` saves and tests the
best model. `train_results.json`, `all_results.json` and the card give the update training ended at, the best
update and the update of the model that was tested.

Local data: a copy of a Hub dataset (e.g. `openslr/librispeech_asr`'s Parquet shards under `data/`) loads with
`--dataset_name FOLDER --train_split train --eval_split validation --test_split test`, with or without
`--streaming`; a dataset without speakers takes `--train_minutes N --speaker_column none`.

Examples:
    accelerate launch recipes/finetune_asr.py --model_name_or_path outputs/wav2vec2 --train_minutes 10
    accelerate launch recipes/finetune_asr.py --model_name_or_path outputs/simclr          # uses its encoder/
    accelerate launch recipes/finetune_asr.py --model_name_or_path outputs/hubert --probe
    accelerate launch recipes/finetune_asr.py --model_name_or_path facebook/wav2vec2-base \\
        --dataset_name openslr/librispeech_asr --dataset_config clean --train_split train.100 \\
        --eval_split validation --test_split test --train_minutes 60 --learning_rate 5e-5 \\
        --mask_time_prob 0.65 --mask_feature_prob 0.25 --mask_feature_length 64 --layerdrop 0.1 \\
        --freeze_transformer_updates 10000 --max_steps 13000 --per_device_train_batch_size 8
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import HfArgumentParser, Wav2Vec2Processor

from hf_speech_cl.data import AudioCollator, DataArguments, make_dataloader
from hf_speech_cl.finetuning import (
    DEFAULT_CHARS_TO_REMOVE,
    NO_PRETRAINING,
    CTCEvaluator,
    DataCollatorCTC,
    DropoutArguments,
    check_output_is_not_the_checkpoint,
    checkpoint_model_type,
    count_ctc_infeasible,
    ctc_tokenizer_for,
    encoder_min_input_samples,
    finalize_finetuning,
    load_feature_extractor,
    load_pretrained_for_task,
    normalize_transcript,
    parameter_summary,
    prepare_for_finetuning,
    report_vocabulary_coverage,
)
from hf_speech_cl.finetuning.data import build_finetuning_datasets, column_values, loader_kwargs
from hf_speech_cl.finetuning.decoding import LMDecodingArguments, lm_decode_splits
from hf_speech_cl.presets import ENCODER_PRESETS, default_model_size
from hf_speech_cl.training import PretrainingArguments, make_accelerator, train
from hf_speech_cl.training.checkpointing import atomic_write_text

logger = logging.getLogger("finetune_asr")

CITATION = (
    "Baevski, Zhou, Mohamed, Auli. wav2vec 2.0: A Framework for Self-Supervised Learning of Speech Representations. "
    "NeurIPS 2020. arXiv:2006.11477"
)
SUPERB_CITATION = (
    "\n\nYang et al. SUPERB: Speech processing Universal PERformance Benchmark. Interspeech 2021. arXiv:2105.01051"
)


@dataclass
class ASRArguments:
    model_name_or_path: str = field(
        default="none",
        metadata={
            "help": "What to fine-tune: a checkpoint folder of recipes/pretrain_{simclr,hubert,wav2vec2}.py, a stock "
            "wav2vec 2.0/HuBERT/WavLM checkpoint or Hub id (e.g. facebook/wav2vec2-base), an ASR checkpoint to "
            "continue from, or `none` for a randomly initialised encoder of --model_size (the no-pretraining "
            "baseline). Default: none."
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": f"Encoder preset with --model_name_or_path none: {', '.join(ENCODER_PRESETS)}. Default: cpu on a machine without CUDA, gpu with it (`hf_speech_cl.presets.default_model_size`); "
            "tiny for quick checks."
        },
    )
    probe: bool = field(
        default=False,
        metadata={
            "help": "Train only a probe on the frozen encoder (SUPERB ASR: softmax-weighted sum of all hidden layers "
            "→ BiLSTM → CTC) instead of fine-tuning the whole encoder. Default: off."
        },
    )
    probe_hidden_size: int = field(
        default=256,
        metadata={"help": "Units per LSTM direction of the probe (SUPERB: 1024; 256 suits the tiny/small presets)."},
    )
    probe_num_layers: int = field(
        default=2, metadata={"help": "BiLSTM layers of the probe (SUPERB: 2; 0 = a linear layer). Default: 2."}
    )
    reinit_head: bool = field(
        default=False,
        metadata={
            "help": "When the checkpoint already has a CTC head of another vocabulary size, replace it by a new one "
            "(otherwise that is an error). Default: off."
        },
    )
    freeze_feature_encoder: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the convolutional feature encoder frozen throughout (fairseq feature_grad_mult 0.0 in "
            "fine-tuning). Default: on for a pretrained encoder, off with --model_name_or_path none (a random "
            "feature encoder has to learn)."
        },
    )
    freeze_transformer_updates: int | None = field(
        default=None,
        metadata={
            "help": "Updates at the start during which the whole encoder is frozen and only the output layer trains "
            "(fairseq freeze_finetune_updates: 10000 of 13000 updates for 10 min/1 h of labels, 0 for 100 h). "
            "Default: 0 without pretraining, else a quarter of --max_steps. With --early_stopping_patience, "
            "evaluations of these updates do not count towards it."
        },
    )
    mask_time_prob: float = field(
        default=0.05,
        metadata={
            "help": "SpecAugment: fraction of frames covered by time masks (approximately; transformers' "
            "mask_time_prob, the same formula as fairseq's mask_prob). Default: 0.05 (transformers' "
            "run_speech_recognition_ctc.py); fairseq's BASE fine-tuning uses 0.65 (10 min) to 0.5 (960 h)."
        },
    )
    mask_time_length: int = field(default=10, metadata={"help": "SpecAugment time-mask span in frames. Default: 10."})
    mask_feature_prob: float = field(
        default=0.0,
        metadata={
            "help": "SpecAugment: fraction of feature channels masked (fairseq mask_channel_prob: 0.25 for 10 min, "
            "0.1 for 960 h with BASE). Default: 0.0."
        },
    )
    mask_feature_length: int = field(
        default=10, metadata={"help": "SpecAugment channel-mask width (fairseq BASE: 64 of 768). Default: 10."}
    )
    layerdrop: float = field(
        default=0.0,
        metadata={
            "help": "Probability of skipping each Transformer layer in training (fairseq BASE fine-tuning: 0.1; "
            "off by default because the tiny preset has only two layers). Default: 0.0."
        },
    )
    ctc_loss_reduction: str = field(
        default="mean",
        metadata={
            "help": "mean: each utterance's CTC loss divided by its transcript length, averaged over the batch; "
            "sum: summed (transformers' default, gives loss scales that grow with batch size). Default: mean."
        },
    )
    ctc_zero_infinity: bool = field(
        default=True,
        metadata={
            "help": "Zero the loss of utterances CTC cannot align (more characters than frames) instead of NaN/inf "
            "(fairseq criterion.zero_infinity). Default: on."
        },
    )
    chars_to_remove: str = field(
        default=DEFAULT_CHARS_TO_REMOVE,
        metadata={"help": "Regular expression of characters deleted from transcripts before tokenising and scoring."},
    )
    vocab_min_count: int = field(
        default=1,
        metadata={"help": "Characters seen fewer times in the training transcripts become <unk>. Default: 1."},
    )
    max_vocab_transcripts: int = field(
        default=100_000,
        metadata={"help": "Streaming only: transcripts read from the start of the stream to build the vocabulary."},
    )
    test_split: str | None = field(
        default="test",
        metadata={
            "help": "Split scored after training, with the final model or with --load_best_model_at_end the best "
            "one; `none` skips it. Default: test."
        },
    )
    eval_batch_size: int | None = field(
        default=None, metadata={"help": "Clips per evaluation batch. Default: --per_device_train_batch_size."}
    )
    num_examples: int = field(default=5, metadata={"help": "Example transcriptions logged per evaluation."})
    lm_decoding: bool = field(
        default=False,
        metadata={
            "help": "After training, also decode validation and test with a lexicon-constrained beam search and a "
            "word bigram LM of the training transcripts, its weights tuned on validation (recipes/decode_asr.py, "
            "wav2vec 2.0 §4.4); reported as lm_wer/lm_cer beside the greedy scores. Flags: --lm_weights, "
            "--word_scores, --beam_size, --lexicon_word_list, --no_lm. Default: off (greedy CTC decoding only)."
        },
    )


def _describe_mode(model_args: ASRArguments, freeze_updates: int, model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if model_args.probe:
        return (
            f"frozen-encoder probe (SUPERB): softmax-weighted sum of the {model.config.num_encoder_layers} hidden "
            f"states → {model_args.probe_num_layers} BiLSTM layer(s) of {model_args.probe_hidden_size} units → CTC; "
            f"{trainable:,} trainable of {total:,} parameters"
        )
    frozen = f"; the whole encoder frozen for the first {freeze_updates} updates" if freeze_updates else ""
    feature_encoder = "frozen" if model_args.freeze_feature_encoder else "trained"
    return (
        f"full fine-tuning ({trainable:,} of {total:,} parameters trainable; the convolutional feature encoder "
        f"{feature_encoder}{frozen})"
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (ASRArguments, DropoutArguments, LMDecodingArguments, DataArguments, PretrainingArguments),
        description=__doc__,
    )
    parser.set_defaults(
        output_dir="outputs/asr",
        max_steps=1500,  # see the docstring: 600 updates left CER at 0.96
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        logging_steps=20,
        save_steps=200,
        eval_steps=200,
        # the best validation CER is tracked (best_model/, train_results.json); --load_best_model_at_end tests it
        # and --early_stopping_patience N stops when it stops improving
        metric_for_best_model="cer",
    )
    model_args, dropout_args, lm_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    model_args.model_size = model_args.model_size or default_model_size()  # cpu, or gpu with CUDA
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if model_args.ctc_loss_reduction not in ("mean", "sum"):
        raise ValueError(f"--ctc_loss_reduction must be mean or sum, got {model_args.ctc_loss_reduction!r}")
    test_split = None if (model_args.test_split or "").lower() in ("", "none") else model_args.test_split
    path = model_args.model_name_or_path
    check_output_is_not_the_checkpoint(args.output_dir, path)
    pretrained = path not in NO_PRETRAINING
    if model_args.freeze_feature_encoder is None:
        model_args.freeze_feature_encoder = pretrained
    freeze_updates = model_args.freeze_transformer_updates
    if freeze_updates is None:
        freeze_updates = args.max_steps // 4 if pretrained else 0
    if freeze_updates or model_args.layerdrop > 0:
        args.ddp_find_unused_parameters = True  # some parameters get no gradient in some updates
    accelerator = make_accelerator(args)

    # Data: clips long enough for one SpecAugment span, transcripts kept beside the audio.
    feature_extractor = load_feature_extractor(path, data_args.sampling_rate)
    text = data_args.text_column
    with accelerator.main_process_first():
        splits = build_finetuning_datasets(
            data_args,
            sampling_rate=feature_extractor.sampling_rate,
            min_input_samples=encoder_min_input_samples(path, model_args.model_size, model_args.mask_time_length),
            seed=args.seed,
            column=text,
            test_split=test_split,
        )
    limit = model_args.max_vocab_transcripts if data_args.streaming else None
    transcripts = {
        name: [normalize_transcript(str(t), model_args.chars_to_remove) for t in column_values(data, text, limit)]
        for name, data in splits.items()
        if data is not None
    }
    if not transcripts["train"]:
        raise ValueError(f"No training clip left in split {data_args.train_split!r} after the duration filters")
    tokenizer = ctc_tokenizer_for(path if pretrained else None, transcripts["train"], model_args.vocab_min_count)
    coverage = report_vocabulary_coverage(tokenizer, transcripts)

    probe_kwargs = {"probe_hidden_size": model_args.probe_hidden_size, "probe_num_layers": model_args.probe_num_layers}
    model = load_pretrained_for_task(
        path,
        "ctc",
        model_size=model_args.model_size,
        probe=model_args.probe,
        reinit_head=model_args.reinit_head,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction=model_args.ctc_loss_reduction,
        ctc_zero_infinity=model_args.ctc_zero_infinity,
        mask_time_prob=model_args.mask_time_prob,
        mask_time_length=model_args.mask_time_length,
        mask_feature_prob=model_args.mask_feature_prob,
        mask_feature_length=model_args.mask_feature_length,
        layerdrop=model_args.layerdrop,
        **dropout_args.config_overrides(),
        **(probe_kwargs if model_args.probe else {}),
    )
    callbacks = prepare_for_finetuning(
        model,
        probe=model_args.probe,
        freeze_feature_encoder=model_args.freeze_feature_encoder,
        freeze_transformer_updates=freeze_updates,
        training_args=args,
    )
    logger.info("Parameters: %s", parameter_summary(model))
    count_ctc_infeasible(model, getattr(splits["train"], "lengths", []), transcripts["train"], tokenizer)

    audio_collator = AudioCollator(feature_extractor)
    loader_options = loader_kwargs(data_args, args.seed)
    train_collator = DataCollatorCTC(audio_collator, tokenizer, text, model_args.chars_to_remove)
    train_loader = make_dataloader(
        splits["train"], train_collator, args.per_device_train_batch_size, shuffle=True, **loader_options
    )
    eval_collator = DataCollatorCTC(audio_collator, tokenizer, text, model_args.chars_to_remove, return_text=True)
    output_dir = Path(args.output_dir)
    evaluators = {
        name: CTCEvaluator(
            accelerator.prepare(
                make_dataloader(
                    splits[name],
                    eval_collator,
                    model_args.eval_batch_size or args.per_device_train_batch_size,
                    shuffle=False,
                    **loader_options,
                )
            ),
            accelerator,
            tokenizer,
            prefix=prefix,
            num_examples=model_args.num_examples,
            predictions_file=output_dir / f"predictions_{name}.jsonl",
        )
        for name, prefix in (("validation", "eval"), ("test", "test"))
        if splits[name] is not None
    }

    result = train(
        model,
        train_loader,
        args,
        accelerator=accelerator,
        sampling_rate=feature_extractor.sampling_rate,
        step_callbacks=callbacks,
        eval_fn=evaluators.get("validation"),
        hparams={
            "model_name_or_path": path,
            "probe": model_args.probe,
            "train_minutes": data_args.train_minutes,
            "freeze_transformer_updates": freeze_updates,
            "vocab_size": len(tokenizer),
            **dropout_args.config_overrides(),
        },
    )
    if "test" in evaluators:
        accelerator.log(evaluators["test"](model), step=result.global_step)
    metrics = {name: {k.split("_", 1)[1]: v for k, v in ev.metrics.items()} for name, ev in evaluators.items()}
    if model_args.lm_decoding:
        _lm_decode(
            model_args, lm_args, accelerator, model, tokenizer, splits, eval_collator, transcripts, metrics, output_dir
        )
    shown = "test" if "test" in evaluators else "validation"

    train_seconds = sum(getattr(splits["train"], "lengths", [])) / feature_extractor.sampling_rate
    out = finalize_finetuning(
        accelerator=accelerator,
        eval_dataloaders={name: evaluator.dataloader for name, evaluator in evaluators.items()},
        model=model,
        result=result,
        args=args,
        savables=(Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer),),
        task_name="speech recognition (CTC)",
        task_description="A character-level CTC speech recogniser (greedy decoding, no language model"
        + (
            "; lm_wer/lm_cer: lexicon beam search with a word bigram LM, recipes/decode_asr.py)"
            if model_args.lm_decoding
            else ")"
        ),
        mode_description=_describe_mode(model_args, freeze_updates, model),
        pipeline_tag="automatic-speech-recognition",
        recipe="recipes/finetune_asr.py",
        base_model=path if pretrained else None,
        base_model_type=checkpoint_model_type(path),
        data_args=data_args,
        train_minutes=None if data_args.streaming else train_seconds / 60,
        num_train_utterances=None if data_args.streaming else len(transcripts["train"]),
        metrics=metrics,
        metric_names=("wer", "cer", "lm_wer", "lm_cer", "loss", "blank_fraction"),
        hyperparameters={
            "SpecAugment": f"time {model_args.mask_time_prob} x {model_args.mask_time_length} frames, channels "
            f"{model_args.mask_feature_prob} x {model_args.mask_feature_length}",
            "layer drop": model_args.layerdrop,
            "CTC loss": f"{model_args.ctc_loss_reduction}, zero_infinity={model_args.ctc_zero_infinity}",
            "encoder frozen for": f"{freeze_updates} updates",
            "characters outside the vocabulary": ", ".join(f"{k}: {v.num_oov_chars}" for k, v in coverage.items()),
        },
        usage=(
            "from transformers import pipeline\n"
            f"asr = pipeline('automatic-speech-recognition', model='{args.hub_model_id or args.output_dir}'"
            f"{', trust_remote_code=True' if model_args.probe else ''})\n"
            "print(asr('speech.wav')['text'])"
        ),
        command="accelerate launch recipes/finetune_asr.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        citation=CITATION + (SUPERB_CITATION if model_args.probe else ""),
        vocabulary=tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
        examples=evaluators[shown].examples if evaluators else None,
        examples_split=shown,
        tags=["automatic-speech-recognition", "ctc"] + (["superb-probe"] if model_args.probe else []),
    )
    summary = {f"{split}_{k}": v for split, values in metrics.items() for k, v in values.items()}
    accelerator.print(
        f"done: {result.global_step} updates in {result.wall_time_s:.0f} s"
        + (" (stopped early)" if result.stopped_early else "")
        + f", model of update {result.model_step}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.endswith(("wer", "cer", "blank_fraction")))
        + f"; model in {out}"
    )
    return summary


def _lm_decode(
    model_args, lm_args, accelerator, model, tokenizer, splits, collator, transcripts, metrics, output_dir: Path
) -> None:
    """`--lm_decoding`: beam search + word LM on validation and test, into `metrics` and lm_decoding_results.json.

    One process only: with several, the others would wait in `finalize_finetuning`'s collectives while it decodes
    (and time out on a long decode), so there it is skipped with the `recipes/decode_asr.py` command to run after.
    A failure is logged, not raised: the model is still saved.
    """
    if accelerator.num_processes > 1:
        logger.warning(
            "--lm_decoding runs in a single process; skipped here (%d processes): run `python recipes/decode_asr.py "
            "--model_name_or_path %s` with this run's data flags after training",
            accelerator.num_processes,
            output_dir,
        )
        return
    if splits["validation"] is None:
        logger.warning("--lm_decoding tunes its weights on the validation split, which this run has not: skipped")
        return
    loaders = {
        name: make_dataloader(splits[name], collator, model_args.eval_batch_size or 8, shuffle=False)
        if splits[name] is not None
        else None
        for name in ("validation", "test")
    }
    try:
        decoded = lm_decode_splits(
            accelerator.unwrap_model(model),
            tokenizer,
            transcripts["train"],
            loaders["validation"],
            loaders["test"],
            lm_args,
        )
    except Exception:  # the model matters more than its LM scores
        logger.exception(
            "--lm_decoding failed; the model is saved without LM scores (recipes/decode_asr.py redoes it)"
        )
        return
    atomic_write_text(output_dir / "lm_decoding_results.json", json.dumps(decoded, indent=2) + "\n")
    for name in ("validation", "test"):
        if f"{name}_lm_wer" in decoded:
            metrics[name].update(lm_wer=decoded[f"{name}_lm_wer"], lm_cer=decoded[f"{name}_lm_cer"])
    logger.info(
        "Beam search + word LM (lm_weight %s, word_score %s): %s",
        decoded["lm_weight"],
        decoded["word_score"],
        ", ".join(f"{k} {v:.4f}" for k, v in decoded.items() if k.endswith(("lm_wer", "lm_cer"))),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
