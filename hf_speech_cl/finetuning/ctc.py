"""CTC fine-tuning around any `AutoModelForCTC` model: labels, greedy decoding, WER/CER, the frozen-Transformer phase.

- `DataCollatorCTC`: normalises and tokenises transcripts inside the batch (no pass over the audio table), pads the
  character ids with -100 (ignored by the CTC loss of `Wav2Vec2ForCTC`) and can keep the reference texts.
- `greedy_ctc_decode`: argmax per frame, invalid (padded) frames forced to blank, then the tokenizer merges repeats
  and drops blanks (the best-path decoding of Graves et al. 2006, §3.2; what `pipeline("automatic-speech-recognition")`
  does for a CTC model without a language model).
- `asr_metrics`: corpus-level word and character error rates with `jiwer` (errors summed over the corpus divided by
  the reference words/characters, as fairseq's and `evaluate`'s `wer`; `evaluate.load("wer")` itself needs the Hub).
- `CTCEvaluator`: an `eval_fn` for `hf_speech_cl.training.train`: decodes a (sharded) eval loader, gathers texts
  from every process with `accelerate`'s `gather_for_metrics`, returns `{prefix}_wer`, `_cer`, `_loss`,
  `_blank_fraction` (utterances whose every frame is blank: the "empty transcriptions, WER 1.0" failure of
  transformers #12956 / fairseq #2685, warned about) and `_blank_frame_fraction`, and logs example transcriptions.
- `TransformerFreezer`: a step callback that keeps the whole encoder frozen for the first N updates and only the
  output layer trains (fairseq `freeze_finetune_updates`, `Wav2VecEncoder.forward` runs the encoder under
  `torch.no_grad()` until then; 10 000 of 13 000 updates in `examples/wav2vec/config/finetuning/base_10m.yaml`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from torch import nn
from transformers import Wav2Vec2CTCTokenizer

from .data import eval_batches
from .vocab import DEFAULT_CHARS_TO_REMOVE, normalize_transcript

__all__ = [
    "CTCEvaluator",
    "DataCollatorCTC",
    "TransformerFreezer",
    "asr_metrics",
    "count_ctc_infeasible",
    "ctc_infeasible",
    "ctc_output_lengths",
    "ctc_per_utterance_loss",
    "greedy_ctc_decode",
]

logger = logging.getLogger(__name__)

#: `blank_fraction` at or above which the evaluator warns that the model outputs (almost) only blanks.
BLANK_WARNING_THRESHOLD = 0.5


@dataclass
class DataCollatorCTC:
    """Collate `SpeechDataset` items holding a transcript into a CTC training (or evaluation) batch.

    Args:
        audio_collator: pads and normalises the audio (`hf_speech_cl.data.AudioCollator`).
        tokenizer: the CTC tokenizer (characters → ids; unknown characters → `<unk>`).
        text_column: the item key holding the raw transcript.
        chars_to_remove: regular expression of characters deleted before tokenising (`normalize_transcript`).
        return_text: keep the normalised transcripts as `batch["text"]` (a list of str) for scoring; leave it off
            for training batches, which go to `model(**batch)` whole.

    Returns (from `__call__`):
        `{"input_values": (B, T) float32, "attention_mask": (B, T) int64, "labels": (B, L) int64 padded with -100}`
        plus `"text"` if `return_text`; `None` if no item survived decoding.
    """

    audio_collator: Any
    tokenizer: Wav2Vec2CTCTokenizer
    text_column: str = "text"
    chars_to_remove: str | None = DEFAULT_CHARS_TO_REMOVE
    return_text: bool = False

    def __call__(self, features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        items = []
        texts = []
        for feature in features:
            if feature is None:
                continue
            feature = dict(feature)
            text = normalize_transcript(str(feature.pop(self.text_column)), self.chars_to_remove)
            texts.append(text)
            feature["labels"] = np.asarray(self.tokenizer(text).input_ids, dtype=np.int64)
            items.append(feature)
        batch = self.audio_collator(items)
        if batch is None:
            return None
        if self.return_text:
            batch["text"] = texts
        return batch


def ctc_output_lengths(model: nn.Module, attention_mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Valid output frames per utterance: the model's conv arithmetic on `attention_mask.sum(-1)` samples.

    Args:
        model: a CTC model with `_get_feat_extract_output_lengths` (every wav2vec 2.0-style model and the probe).
        attention_mask: (B, samples), or None when nothing is padded.
        logits: (B, T, V), the model's output (T is the upper bound and the value without `attention_mask`).

    Returns:
        (B,) int64 on `logits.device`, at most T.
    """
    batch, num_frames = logits.shape[:2]
    if attention_mask is None:
        return torch.full((batch,), num_frames, dtype=torch.long, device=logits.device)
    lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
    return torch.as_tensor(lengths, dtype=torch.long).clamp(max=num_frames).to(logits.device)


def greedy_ctc_decode(
    logits: torch.Tensor, output_lengths: torch.Tensor, tokenizer: Wav2Vec2CTCTokenizer
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Best-path CTC decoding (Graves et al. 2006 §3.2): argmax per frame, merge repeats, drop blanks.

    Args:
        logits: (B, T, V).
        output_lengths: (B,) valid frames; later frames are treated as blank.
        tokenizer: its `pad_token_id` is the blank; `batch_decode` merges repeats and removes blanks, and turns the
            word delimiter into spaces.

    Returns:
        `(texts, blank_frames, valid_frames)`: the B transcriptions, and per utterance the number of valid frames
        whose argmax is the blank and the number of valid frames ((B,) int64 each).
    """
    blank = tokenizer.pad_token_id
    ids = logits.argmax(dim=-1)  # (B, T)
    frames = torch.arange(ids.shape[1], device=ids.device)[None, :]
    valid = frames < output_lengths.to(ids.device)[:, None]
    ids = ids.masked_fill(~valid, blank)
    blank_frames = ((ids == blank) & valid).sum(-1)
    texts = [" ".join(text.split()) for text in tokenizer.batch_decode(ids.cpu().tolist())]
    return texts, blank_frames.cpu(), valid.sum(-1).cpu()


def ctc_per_utterance_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    output_lengths: torch.Tensor,
    blank: int,
    zero_infinity: bool = True,
) -> torch.Tensor:
    """CTC loss of each utterance divided by its target length: the terms `reduction="mean"` averages.

    Labels -100 and `blank` are padding (as `Wav2Vec2ForCTC`'s loss). Returns (B,) float32; an utterance with an
    empty target gets its full negative log-likelihood of the all-blank path.
    """
    mask = (labels >= 0) & (labels != blank)
    target_lengths = mask.sum(-1)
    log_probs = nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    losses = nn.functional.ctc_loss(
        log_probs,
        labels.masked_select(mask),
        output_lengths.to(torch.long),
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=zero_infinity,
    )
    return losses / target_lengths.clamp(min=1)


def ctc_infeasible(num_frames: int, label_ids: Sequence[int]) -> bool:
    """Whether CTC cannot align `label_ids` to `num_frames` frames.

    CTC needs one frame per label plus one blank between equal neighbours (Graves et al. 2006 §3.1); an infeasible
    utterance has infinite loss (zeroed by `ctc_zero_infinity=True`, so it only wastes compute).
    """
    repeats = sum(1 for a, b in zip(label_ids, label_ids[1:]) if a == b)
    return len(label_ids) + repeats > num_frames


def count_ctc_infeasible(
    model: nn.Module, lengths: Sequence[int], transcripts: Sequence[str], tokenizer: Wav2Vec2CTCTokenizer
) -> int:
    """How many (clip of `lengths` samples, transcript) pairs CTC cannot align (`ctc_infeasible`); warns if any.

    Such utterances get a zeroed loss with `ctc_zero_infinity=True` and teach nothing: clips cropped below their
    transcript, or text that does not belong to the audio.
    """
    if not lengths:
        return 0
    frames = model._get_feat_extract_output_lengths(torch.as_tensor(list(lengths))).tolist()
    count = sum(ctc_infeasible(int(n), tokenizer(t).input_ids) for n, t in zip(frames, transcripts))
    if count:
        logger.warning(
            "%d of %d training transcripts have more characters than their audio has frames: CTC cannot align them "
            "and their loss is zeroed (ctc_zero_infinity)",
            count,
            len(transcripts),
        )
    return count


def asr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER with `jiwer` (errors over all utterances / reference words or characters).

    Pairs with an empty reference are left out (WER is undefined for them) and counted in `num_empty_references`.

    Returns:
        `{"wer", "cer", "num_utterances", "num_empty_references"}`; WER/CER are fractions (1.0 = 100 %), `nan`
        when no reference is left.

    Raises:
        ValueError: if the two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")
    pairs = [(p, r) for p, r in zip(predictions, references) if r.strip()]
    result = {"num_utterances": float(len(pairs)), "num_empty_references": float(len(references) - len(pairs))}
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), **result}
    hyps, refs = [p for p, _ in pairs], [r for _, r in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), **result}


class CTCEvaluator:
    """`eval_fn` for the shared loop: greedy-decode an eval loader and score it (all processes take part).

    Args:
        dataloader: a loader of `DataCollatorCTC(return_text=True)` batches, already passed to
            `accelerator.prepare` (so each process sees its shard).
        accelerator: the run's `Accelerator`.
        tokenizer: the CTC tokenizer.
        prefix: metric name prefix (`eval` → `eval_wer`, `test` → `test_wer`).
        num_examples: transcriptions logged (main process) after each evaluation.
        predictions_file: if set, every (reference, prediction) pair is written there as JSON lines by the main
            process after each evaluation (the last evaluation wins).
        max_batches: evaluate at most this many batches per process (None: all).

    Calling it returns `{prefix}_wer`, `_cer`, `_loss` (mean per-character CTC loss, `ctc_per_utterance_loss`),
    `_blank_fraction`, `_blank_frame_fraction`, `_num_utterances`; it warns when `_blank_fraction` reaches
    `BLANK_WARNING_THRESHOLD` (once per evaluator: later evaluations give the fraction in their summary line). The
    last examples are kept in `self.examples`, the last metrics in `self.metrics`.
    """

    def __init__(
        self,
        dataloader: Iterable[dict[str, Any]],
        accelerator: Any,
        tokenizer: Wav2Vec2CTCTokenizer,
        *,
        prefix: str = "eval",
        num_examples: int = 3,
        predictions_file: str | os.PathLike | None = None,
        max_batches: int | None = None,
    ):
        self.dataloader = dataloader
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.num_examples = num_examples
        self.predictions_file = Path(predictions_file) if predictions_file is not None else None
        self.max_batches = max_batches
        self.examples: list[dict[str, str]] = []
        self.metrics: dict[str, float] = {}
        self._warned: set[str] = set()  # warnings given once per evaluator, not at every evaluation

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        accelerator = self.accelerator
        model = accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        blank = self.tokenizer.pad_token_id
        predictions: list[str] = []
        references: list[str] = []
        losses: list[float] = []
        blank_utterances: list[int] = []
        blank_frames: list[int] = []
        valid_frames: list[int] = []
        for batch in eval_batches(self.dataloader, self.max_batches):
            items = []
            if batch is not None:  # None: no readable clip here, but the all-gather below is still entered
                texts = batch.pop("text")
                labels = batch.pop("labels")
                with accelerator.autocast():
                    logits = model(**batch).logits
                lengths = ctc_output_lengths(model, batch.get("attention_mask"), logits)
                hyps, blanks, valid = greedy_ctc_decode(logits, lengths, self.tokenizer)
                loss = ctc_per_utterance_loss(logits, labels, lengths, blank).cpu()
                items = [
                    {"hyp": h, "ref": r, "loss": float(x), "blank": int(b), "valid": int(v)}
                    for h, r, x, b, v in zip(hyps, texts, loss, blanks, valid)
                ]
            gathered = accelerator.gather_for_metrics(items, use_gather_object=True)
            for item in gathered:
                predictions.append(item["hyp"])
                references.append(item["ref"])
                losses.append(item["loss"])
                blank_frames.append(item["blank"])
                valid_frames.append(item["valid"])
                blank_utterances.append(int(item["blank"] == item["valid"]))
        model.train(was_training)
        if not predictions:
            if "empty" not in self._warned:
                self._warned.add("empty")
                logger.warning("%s: the evaluation data yielded no utterance (not warned again)", self.prefix)
            return {}
        scores = asr_metrics(predictions, references)
        metrics = {
            f"{self.prefix}_wer": scores["wer"],
            f"{self.prefix}_cer": scores["cer"],
            f"{self.prefix}_loss": float(np.mean(losses)),
            f"{self.prefix}_blank_fraction": float(np.mean(blank_utterances)),
            f"{self.prefix}_blank_frame_fraction": float(np.sum(blank_frames) / max(np.sum(valid_frames), 1)),
            f"{self.prefix}_num_utterances": float(len(predictions)),
        }
        self.metrics = metrics
        self.examples = [{"reference": r, "prediction": p} for r, p in zip(references, predictions)][
            : self.num_examples
        ]
        if accelerator.is_main_process:
            for example in self.examples:
                logger.info(
                    "%s example\n  REF: %s\n  HYP: %s", self.prefix, example["reference"], example["prediction"]
                )
            logger.info(
                "%s: WER %.4f, CER %.4f over %d utterances (blank fraction %.2f)",
                self.prefix,
                scores["wer"],
                scores["cer"],
                len(predictions),
                metrics[f"{self.prefix}_blank_fraction"],
            )
            if self.predictions_file is not None:
                self.predictions_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.predictions_file, "w") as f:
                    for r, p in zip(references, predictions):
                        f.write(json.dumps({"reference": r, "prediction": p}) + "\n")
        if metrics[f"{self.prefix}_blank_fraction"] >= BLANK_WARNING_THRESHOLD and "blank" not in self._warned:
            self._warned.add("blank")
            logger.warning(
                "%s: %.0f %% of the transcriptions are empty (every frame predicts the CTC blank), so WER is ~1.0. "
                "Early in fine-tuning this is normal (CTC first learns to emit blanks); if it persists: train longer, "
                "raise --learning_rate or --warmup_steps, shorten --freeze_transformer_updates, check that the "
                "transcripts match the audio (transformers #12956, fairseq #2685). Not warned again: later "
                "evaluations give the blank fraction in their summary line.",
                self.prefix,
                100 * metrics[f"{self.prefix}_blank_fraction"],
            )
        return metrics


class TransformerFreezer:
    """Step callback: the encoder (base model) frozen for the first `num_updates` updates, then trainable.

    fairseq's `freeze_finetune_updates` (`Wav2VecEncoder.forward` runs the whole wav2vec 2.0 model under
    `torch.no_grad()` until `num_updates` reaches it): at first only the randomly initialised output layer learns,
    so its large early gradients do not wreck the pretrained Transformer. Parameters that are frozen when the
    freezer is built (the convolutional feature encoder, after `model.freeze_feature_encoder()`) stay frozen.

    Build it after freezing the feature encoder and before `accelerator.prepare`, while the Transformer still
    requires gradients, so that the optimizer and DDP know its parameters (multi-process runs need
    `ddp_find_unused_parameters=True` while it is frozen). Calling it as `freezer(model, update)` before every
    forward pass toggles `requires_grad` only when the phase changes (a resumed run lands in the right phase).

    Args:
        model: the task model (`model.base_model` is the encoder).
        num_updates: updates during which the encoder is frozen (0: never).
    """

    def __init__(self, model: nn.Module, num_updates: int):
        if num_updates < 0:
            raise ValueError(f"num_updates must be >= 0, got {num_updates}")
        self.num_updates = num_updates
        self.parameter_names = [name for name, p in model.base_model.named_parameters() if p.requires_grad]
        self.frozen: bool | None = None

    def __call__(self, model: nn.Module, update: int) -> None:
        frozen = update < self.num_updates
        if frozen == self.frozen:
            return
        params = dict(model.base_model.named_parameters())
        for name in self.parameter_names:
            params[name].requires_grad = not frozen
        if self.frozen is not None or frozen:
            logger.info("update %d: encoder %s", update, "frozen (only the head trains)" if frozen else "unfrozen")
        self.frozen = frozen
