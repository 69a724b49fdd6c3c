"""What wav2vec 2.0 pretraining with the stock `transformers.Wav2Vec2ForPreTraining` needs around the model.

- `gumbel_temperature(update)`: the Gumbel-softmax temperature schedule of Baevski et al. 2020 §4.2 (2 → 0.5,
  multiplied by 0.999995 per update; fairseq `latent_temp=(2, 0.5, 0.999995)`).
- `Wav2Vec2PretrainingMonitor`: a step callback that sets that temperature, and a `metrics_fn` for the shared loop
  that reports per-masked-frame losses (the stock model returns sums), codevector perplexity, masked fraction and the
  temperature, and warns when the codebook collapses (transformers #14387: contrastive loss → 0 with codevector
  perplexity ≈ number of groups).
- `Wav2Vec2MaskSampler`: the loop's `batch_transform` that draws each micro-batch's masks and negatives from the
  loop's `(seed, update, process, micro-batch)` generator (exact resume, deterministic evaluation), and
  `wav2vec2_loss_normalizer`: the masked-frame count fairseq divides the summed loss by.
- `check_pretraining_setup(config, min_input_samples)`: refuses set-ups that give NaN losses or nothing to learn
  (clips too short for the masks and the negatives; transformers #17834, #19588) and says what to change.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2Config

__all__ = [
    "WAV2VEC2_PRETRAINING_DEFAULTS",
    "Wav2Vec2MaskSampler",
    "Wav2Vec2PretrainingMonitor",
    "check_pretraining_setup",
    "contrastive_accuracy",
    "gumbel_temperature",
    "wav2vec2_loss_normalizer",
]

logger = logging.getLogger(__name__)

#: Objective defaults per size preset. `base` = the paper's BASE (Baevski et al. 2020 §4.2: mask probability 0.65,
#: span 10, K=100 distractors, G=2 codebooks of V=320 entries, diversity weight alpha=0.1, kappa=0.1). Smaller presets
#: see 2–4 s clips of 100–200 frames, so they use fewer distractors and entries: `cpu` (a 6 x 256 Transformer, 4 s
#: crops) takes `small`'s (K=50, 2 x 160 entries of 128 dimensions), `gpu` (8 x 512) BASE's.
WAV2VEC2_PRETRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {
        "mask_time_prob": 0.65,
        "mask_time_length": 10,
        "num_negatives": 100,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 320,
        "codevector_dim": 256,
        "proj_codevector_dim": 256,
        "diversity_loss_weight": 0.1,
        "contrastive_logits_temperature": 0.1,
    },
    "small": {
        "mask_time_prob": 0.65,
        "mask_time_length": 10,
        "num_negatives": 50,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 160,
        "codevector_dim": 128,
        "proj_codevector_dim": 128,
        "diversity_loss_weight": 0.1,
        "contrastive_logits_temperature": 0.1,
    },
    "tiny": {
        "mask_time_prob": 0.65,
        "mask_time_length": 10,
        "num_negatives": 30,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 64,
        "codevector_dim": 64,
        "proj_codevector_dim": 64,
        "diversity_loss_weight": 0.1,
        "contrastive_logits_temperature": 0.1,
    },
}
WAV2VEC2_PRETRAINING_DEFAULTS["cpu"] = dict(WAV2VEC2_PRETRAINING_DEFAULTS["small"])
WAV2VEC2_PRETRAINING_DEFAULTS["gpu"] = dict(WAV2VEC2_PRETRAINING_DEFAULTS["base"])


def gumbel_temperature(
    update: int, max_temperature: float = 2.0, min_temperature: float = 0.5, decay: float = 0.999995
) -> float:
    """Gumbel-softmax temperature at `update`: `max(max_temperature * decay**update, min_temperature)`.

    Baevski et al. 2020 §4.2 and fairseq's `Wav2Vec2Model.set_num_updates` (defaults 2, 0.5, 0.999995).
    """
    return max(max_temperature * decay**update, min_temperature)


class Wav2Vec2MaskSampler:
    """`batch_transform` of the shared loop: redraw `mask_time_indices` and `sampled_negative_indices` per micro-batch.

    The collator draws masks when the DataLoader collates, i.e. ahead of time (accelerate prefetches a batch) and
    from a NumPy state that a resumed run cannot reproduce. This transform draws them again, on the training device,
    with NumPy's global generator seeded from the loop's micro-batch generator (a function of `(seed, update,
    process, micro-batch)`; `(seed, -1, process, batch)` in evaluation) and restores NumPy's state afterwards. So
    masks and negatives of update u are the same in an uninterrupted and a resumed run, and an evaluation of the
    same checkpoint sees the same masks twice.

    Args:
        collator: the `DataCollatorForWav2Vec2Pretraining` of the run (its `add_masks` does the drawing).
    """

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        seed = int(torch.randint(0, 2**32 - 1, (1,), generator=generator, device=generator.device).item())
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return self.collator.add_masks(dict(batch))
        finally:
            np.random.set_state(state)


def wav2vec2_loss_normalizer(batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
    """Masked frames of the micro-batch (0-d): the stock `Wav2Vec2ForPreTraining` loss is a sum over them.

    The loop sums these counts over the micro-batches and processes of an update and divides the summed losses by the
    total (fairseq `Wav2vecCriterion`'s `sample_size`; transformers' `run_wav2vec2_pretraining_no_trainer.py`).
    """
    return batch["mask_time_indices"].sum()


@torch.no_grad()
def contrastive_accuracy(
    projected_states: torch.Tensor,
    projected_quantized_states: torch.Tensor,
    sampled_negative_indices: torch.Tensor,
    mask_time_indices: torch.Tensor,
) -> torch.Tensor:
    """Share of masked frames whose true quantized target scores above every distractor (0-d tensor in [0, 1]).

    fairseq's `Wav2vecCriterion` logs it as `accuracy` (`logits.argmax == 0`, ties with every logit equal not
    counted). Chance is 1 / (num_negatives + 1): a model whose contrastive loss sits at log(num_negatives + 1) has
    made all logits equal, which the loss alone does not tell apart from a model that is learning slowly, and the
    codevector perplexity can climb meanwhile (the diversity loss sees code usage, not where targets point).

    Args:
        projected_states: `Wav2Vec2ForPreTraining` output `projected_states`, (batch, frames, proj_codevector_dim).
        projected_quantized_states: the output `projected_quantized_states`, same shape.
        sampled_negative_indices: (batch, frames, num_negatives) indices into the flattened batch x frames, as the
            collator draws them (`_sample_negative_indices`).
        mask_time_indices: (batch, frames) bool/int, the masked frames that are scored.
    """
    dim = projected_quantized_states.shape[-1]
    masked = mask_time_indices.bool()
    if not masked.any():
        return torch.zeros((), device=projected_states.device)
    # only the masked frames' candidates: (M, K+1, D), not every frame's, since this runs before backward
    flat = projected_quantized_states.reshape(-1, dim).float()
    targets = projected_quantized_states[masked].float()  # (M, D)
    negatives = flat[sampled_negative_indices[masked].long()]  # (M, K, D)
    candidates = torch.cat([targets.unsqueeze(1), negatives], dim=1)
    logits = torch.cosine_similarity(projected_states[masked].float().unsqueeze(1), candidates, dim=-1)  # (M, K+1)
    same = (negatives == targets.unsqueeze(1)).all(-1)  # a distractor equal to the target
    logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
    wins = (logits.argmax(-1) == 0) & ~(logits.argmin(-1) == 0)  # fairseq: max & not (max and min at once)
    return wins.float().mean()


class Wav2Vec2PretrainingMonitor:
    """Step callback + metrics for the shared loop (`train(step_callbacks=[m.step], metrics_fn=m.metrics)`).

    Args:
        config: the model's `Wav2Vec2Config` (codebook size for the collapse check).
        max_temperature, min_temperature, temperature_decay: the Gumbel schedule (see `gumbel_temperature`).
        collapse_perplexity: warn when the codevector perplexity (summed over groups, as transformers computes it)
            stays below this; default `2 * num_codevector_groups`, i.e. about two entries used per codebook.
        patience: consecutive batches under the threshold before warning (after the first `patience` updates).
        plateau_patience: warn once when the contrastive accuracy stays below twice chance (1 / (num_negatives +
            1)) for this many consecutive batches: the chance plateau, where every logit is equal and the loss sits
            at log(num_negatives + 1) while the codevector perplexity may still climb.
        warmup_steps: batches of updates up to this one (set by `step`) are not counted for the plateau: during
            the learning-rate warm-up accuracy near chance is expected (fairseq's BASE warms up for 32k updates).

    Only training batches (gradients enabled) count towards the collapse and plateau streaks; evaluation batches
    (`torch.no_grad`, as the loop's `evaluate`) are measured but neither lengthen nor break a streak.
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        *,
        max_temperature: float = 2.0,
        min_temperature: float = 0.5,
        temperature_decay: float = 0.999995,
        collapse_perplexity: float | None = None,
        patience: int = 50,
        plateau_patience: int = 100,
        warmup_steps: int = 0,
    ):
        self.max_temperature = max_temperature
        self.min_temperature = min_temperature
        self.temperature_decay = temperature_decay
        self.collapse_perplexity = (
            collapse_perplexity if collapse_perplexity is not None else 2.0 * config.num_codevector_groups
        )
        self.patience = patience
        self.temperature = max_temperature
        self.collapsed = False
        self._below = 0
        self._calls = 0
        self.num_negatives = config.num_negatives
        self.plateau_patience = plateau_patience
        self.plateau = False
        self._at_chance = 0
        self.warmup_steps = warmup_steps
        self._update = 0

    def step(self, model: Any, update: int) -> None:
        """Set the Gumbel temperature of `model` (a `Wav2Vec2ForPreTraining`) for `update`."""
        self._update = update
        self.temperature = gumbel_temperature(
            update, self.max_temperature, self.min_temperature, self.temperature_decay
        )
        model.set_gumbel_temperature(self.temperature)

    def metrics(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-masked-frame losses, contrastive accuracy, codevector perplexity, masked fraction, Gumbel temperature
        (0-d tensors).

        Raises:
            ValueError: if the batch has no masked frame (nothing to learn from; see `check_pretraining_setup`).
        """
        mask = batch["mask_time_indices"]
        masked = mask.sum()
        if int(masked) == 0:
            raise ValueError(
                "A batch has no masked frame, so wav2vec 2.0 has nothing to predict: raise --mask_time_prob or "
                "--min_duration_s (clips shorter than mask_time_length frames cannot be masked)."
            )
        frames = batch["sub_attention_mask"].sum() if "sub_attention_mask" in batch else mask.numel()
        perplexity = outputs.codevector_perplexity.detach().float()
        training = torch.is_grad_enabled()  # the loop's `evaluate` runs under no_grad: its batches are not streaks
        if training:
            self._track_collapse(float(perplexity))
        metrics = {
            "loss": outputs.loss.detach().float() / masked,
            "contrastive_loss": outputs.contrastive_loss.detach().float() / masked,
            "diversity_loss": outputs.diversity_loss.detach().float() / masked,
            "codevector_perplexity": perplexity,
            "masked_fraction": masked.float() / frames,
            "gumbel_temperature": torch.tensor(self.temperature, device=perplexity.device),
        }
        if "sampled_negative_indices" in batch and getattr(outputs, "projected_states", None) is not None:
            metrics["contrastive_accuracy"] = contrastive_accuracy(
                outputs.projected_states, outputs.projected_quantized_states, batch["sampled_negative_indices"], mask
            )
            if training:
                self._track_plateau(float(metrics["contrastive_accuracy"]))
        return metrics

    def _track_plateau(self, accuracy: float) -> None:
        chance = 1.0 / (self.num_negatives + 1)
        if self._update <= self.warmup_steps:  # near chance is expected while the learning rate warms up
            self._at_chance = 0
            return
        self._at_chance = self._at_chance + 1 if accuracy < 2 * chance else 0
        if self._at_chance >= self.plateau_patience and not self.plateau:
            self.plateau = True
            logger.warning(
                "Contrastive accuracy has stayed below %.3f (twice chance for %d distractors) for %d batches: wav2vec "
                "2.0 is on its chance plateau (loss ~ log(%d) = %.2f, every logit equal). On small encoders and "
                "budgets of hundreds of updates the quantizer spreads its codes over frames to satisfy the diversity "
                "loss (measured on the tiny preset: consecutive frames sharing a code fell from 16%% at init to 2%% "
                "after 300 updates), so targets cannot be predicted from context; with --diversity_loss_weight 0 the "
                "codebook collapses to one code instead. Lower learning rates (2e-4), a normal codebook init and a "
                "diversity weight of 0.02 did not leave it either (README, wav2vec 2.0 plateau). It needs far more "
                "updates, or an objective whose targets do not move (HuBERT).",
                2 * chance,
                self.num_negatives,
                self.plateau_patience,
                self.num_negatives + 1,
                math.log(self.num_negatives + 1),
            )

    def _track_collapse(self, perplexity: float) -> None:
        self._calls += 1
        self._below = self._below + 1 if perplexity < self.collapse_perplexity else 0
        if self._calls > self.patience and self._below >= self.patience and not self.collapsed:
            self.collapsed = True
            logger.warning(
                "Codevector perplexity has stayed below %.1f for %d batches: the quantizer collapsed onto a few "
                "codevectors and the contrastive task became trivial (transformers #14387). Raise "
                "--diversity_loss_weight (e.g. 0.5), lower --learning_rate, keep the Gumbel temperature high longer "
                "(--gumbel_temperature_decay closer to 1), or use feat_extract_norm='layer'.",
                self.collapse_perplexity,
                self.patience,
            )


def check_pretraining_setup(model: Any, min_input_samples: int) -> int:
    """Check that the shortest clip can be masked and has distractors; return its number of encoder frames.

    A clip of F frames must hold at least one mask span (`mask_time_length` frames) and more than one frame to draw
    negatives from; otherwise `_compute_mask_indices`/`_sample_negative_indices` produce empty masks or self-only
    negatives and the loss is 0/0 = NaN (transformers #17834, #19588).

    Args:
        model: a `Wav2Vec2ForPreTraining` (its `_get_feat_extract_output_lengths` gives the frame count).
        min_input_samples: the shortest clip the data pipeline lets through, in samples.

    Raises:
        ValueError: naming the shortest duration that works.
    """
    config = model.config
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(min_input_samples)))
    if frames < max(config.mask_time_length, 2):
        needed = max(config.mask_time_length, 2)
        samples_per_frame = math.prod(config.conv_stride)
        raise ValueError(
            f"The shortest clips ({min_input_samples} samples) give {frames} encoder frames, fewer than one mask span "
            f"(mask_time_length={config.mask_time_length}): masks and negatives would be empty and the loss NaN. "
            f"Raise --min_duration_s so that clips have at least {needed} frames "
            f"(about {needed * samples_per_frame} samples) or lower --mask_time_length."
        )
    if config.num_negatives >= frames:
        logger.warning(
            "num_negatives=%d >= %d frames of the shortest clip: distractors will repeat (sampled with replacement).",
            config.num_negatives,
            frames,
        )
    return frames
