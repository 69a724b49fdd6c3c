"""fairseq's loss normalisation under gradient accumulation, through the shared loop.

Two micro-batches with different numbers of masked frames, accumulated into one update, must give the gradient of
one batch holding both: the gradient of (sum of the losses of all micro-batches) / (total masked frames), fairseq's
`sample_size` normalisation; not the mean of per-micro-batch ratios. Checked for the stock wav2vec 2.0 loss (a sum
over masked frames) and the HuBERT loss (a mean, turned into a sum by its `sample_size`).

Both set-ups are made deterministic: no dropout or layer drop, masks and negatives given in the batch, a
deterministic straight-through Gumbel-softmax, and the terms that are not sums over frames switched off (wav2vec
2.0's diversity loss depends on the codebook perplexity of the whole batch, HuBERT's feature penalty on the mean of
its frames).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hf_speech_cl.hubert_iteration import hubert_loss_normalizer
from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig
from hf_speech_cl.training import PretrainingArguments, make_accelerator, train
from hf_speech_cl.wav2vec2_pretraining import wav2vec2_loss_normalizer

NUM_SAMPLES = 8000
NO_DROPOUT = dict(
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0
)  # fmt: skip
TINY = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, mask_time_prob=0.5, **NO_DROPOUT,
)  # fmt: skip


def deterministic_gumbel(logits, tau=1.0, hard=False, dim=-1, **kwargs):
    soft = torch.softmax(logits / tau, dim=dim)
    if not hard:
        return soft
    index = soft.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(soft).scatter_(dim, index, 1.0) - soft.detach() + soft


def masks(num_frames: int) -> torch.Tensor:
    """4 clips; the first micro-batch (clips 0-1) has many more masked frames than the second (clips 2-3)."""
    mask = torch.zeros(4, num_frames, dtype=torch.bool)
    mask[0, 2:18], mask[1, 4:20], mask[2, 5:8], mask[3, 10:12] = True, True, True, True
    return mask


def loader(rows: list[dict], batch_size: int, negatives: bool):
    def collate(items):
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "negatives"}
        if negatives:  # indices into the flattened (B * F) frames of this batch
            frames = batch["mask_time_indices"].shape[1]
            batch["sampled_negative_indices"] = torch.stack(
                [it["negatives"] + i * frames for i, it in enumerate(items)]
            )
        return batch

    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate)


def update_gradient(tmp_path, make_model, rows, batch_size, accumulation, normalizer, negatives, monkeypatch):
    args = PretrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_grad_norm=0.0, warmup_steps=0, report_to="none",
        save_steps=100, learning_rate=1e-3,
    )  # fmt: skip
    captured = {}
    original_step = torch.optim.AdamW.step

    def capture(self, *a, **k):
        captured["grads"] = [
            p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        return original_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    accelerator = make_accelerator(args)
    model = make_model()
    train(
        model, loader(rows, batch_size, negatives), args, accelerator=accelerator, sampling_rate=16000,
        loss_normalizer=normalizer,
    )  # fmt: skip
    return captured["grads"]


def assert_same_gradients(one_batch, accumulated):
    assert len(one_batch) == len(accumulated) > 0
    for g1, g2 in zip(one_batch, accumulated):
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-7)


def test_wav2vec2_accumulated_gradient_equals_one_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", deterministic_gumbel)
    config = Wav2Vec2Config(
        **TINY, num_negatives=4, codevector_dim=8, proj_codevector_dim=8, num_codevectors_per_group=8,
        diversity_loss_weight=0.0,
    )  # fmt: skip

    def make_model():
        torch.manual_seed(0)
        return Wav2Vec2ForPreTraining(config)

    frames = int(make_model()._get_feat_extract_output_lengths(torch.tensor(NUM_SAMPLES)))
    mask = masks(frames)
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(4):
        masked = mask[i].nonzero().squeeze(1)
        negatives = masked[torch.randint(len(masked), (frames, 4), generator=generator)]
        rows.append(
            {
                "input_values": torch.randn(NUM_SAMPLES, generator=generator),
                "mask_time_indices": mask[i],
                "negatives": negatives,
            }
        )
    args = (make_model, rows)
    one = update_gradient(tmp_path / "one", *args, 4, 1, wav2vec2_loss_normalizer, True, monkeypatch)
    two = update_gradient(tmp_path / "two", *args, 2, 2, wav2vec2_loss_normalizer, True, monkeypatch)
    assert_same_gradients(one, two)


@pytest.fixture(scope="module")
def hubert_normalizer():
    return hubert_loss_normalizer


def test_hubert_accumulated_gradient_equals_one_batch(tmp_path, monkeypatch, hubert_normalizer):
    config = HubertPretrainingConfig(
        **{**TINY, "mask_time_prob": 0.8}, num_clusters=8, final_dim=8, feature_penalty_weight=0.0
    )

    def make_model():
        torch.manual_seed(0)
        return HubertForPreTraining(config)

    frames = int(make_model()._get_feat_extract_output_lengths(torch.tensor(NUM_SAMPLES)))
    mask = masks(frames)
    generator = torch.Generator().manual_seed(1)
    rows = [
        {
            "input_values": torch.randn(NUM_SAMPLES, generator=generator),
            "mask_time_indices": mask[i],
            "labels": torch.randint(8, (frames,), generator=generator),
        }
        for i in range(4)
    ]
    args = (make_model, rows)
    one = update_gradient(tmp_path / "one", *args, 4, 1, hubert_normalizer, False, monkeypatch)
    two = update_gradient(tmp_path / "two", *args, 2, 2, hubert_normalizer, False, monkeypatch)
    assert_same_gradients(one, two)
