"""AudioCollator (padding, normalisation, kept columns) and the wav2vec 2.0 pretraining collator (masks, negatives)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2 import modeling_wav2vec2

from hf_speech_cl.data import AudioCollator, DataCollatorForWav2Vec2Pretraining, min_input_samples, num_masked_frames

SR = Wav2Vec2FeatureExtractor().sampling_rate
EXTRACTOR = Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True)
# transformers' Wav2Vec2ModelTester sizes: hidden 16, conv_dim (32, 32, 32), strides (4, 4, 4), 2 layers, 2 heads.
TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 20,
    "conv_dim": (32, 32, 32),
    "conv_kernel": (8, 8, 8),
    "conv_stride": (4, 4, 4),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "codevector_dim": 16,
    "proj_codevector_dim": 16,
    "num_codevectors_per_group": 8,
    "num_codevector_groups": 2,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
}


def clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_values": (3.0 + 2.0 * rng.standard_normal(n)).astype(np.float32)} for n in lengths]


# ------------------------------------------------------------------------------------------------ AudioCollator


def test_audio_collator_pads_normalises_and_stacks_columns():
    lengths = [1200, 3000, 2000]
    features = clips(lengths)
    for i, f in enumerate(features):
        f.update(label=i, text=f"T{i}", tokens=list(range(i + 1)), align=[{"phone": "sil"}], vec=np.ones(2) * i)
    batch = AudioCollator(EXTRACTOR)([features[0], None, features[1], features[2]])

    values, mask = batch["input_values"], batch["attention_mask"]
    assert values.shape == mask.shape == (3, 3000)
    assert values.dtype == torch.float32 and mask.dtype == torch.int64
    assert mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        valid = values[row, :n].double()
        assert abs(valid.mean().item()) < 1e-4 and abs(valid.var(unbiased=False).item() - 1) < 1e-3
        assert values[row, n:].abs().sum() == 0  # padding = the extractor's padding_value
    assert batch["label"].tolist() == [0, 1, 2]
    assert batch["text"] == ["T0", "T1", "T2"]
    assert batch["tokens"].tolist() == [[0, -100, -100], [0, 1, -100], [0, 1, 2]]
    assert batch["align"] == [[{"phone": "sil"}]] * 3
    assert batch["vec"].shape == (3, 2)

    assert AudioCollator(EXTRACTOR, pad_to_multiple_of=1024)(features)["input_values"].shape == (3, 3072)
    assert AudioCollator(EXTRACTOR)([None, None]) is None


# ------------------------------------------------------------------------------------------------ wav2vec 2.0 collator


def pretraining_batch(collator, lengths, seed=0):
    np.random.seed(seed)  # transformers' mask helpers draw from NumPy's global generator
    return collator(clips(lengths, seed))


def test_pinned_behaviour_of_transformers_private_helpers():
    """The collator relies on these private functions: pin what it relies on."""
    np.random.seed(0)
    attention = torch.tensor([[1] * 50, [1] * 30 + [0] * 20])
    mask = modeling_wav2vec2._compute_mask_indices((2, 50), 0.5, 5, attention_mask=attention, min_masks=2)
    assert mask.dtype == bool and mask.shape == (2, 50)
    assert mask[0].sum() >= 5 and mask[1].sum() >= 5 and not mask[1, 30:-1].any()
    negatives = modeling_wav2vec2._sample_negative_indices((2, 50), 7, mask_time_indices=mask)
    assert negatives.shape == (2, 50, 7)
    for row in range(2):
        for t in np.flatnonzero(mask[row]):
            drawn = negatives[row, t] - row * 50
            assert (drawn != t).all() and mask[row, drawn].all()


def test_masks_avoid_padding_and_negatives_avoid_the_positive():
    config = Wav2Vec2Config(**TINY, mask_time_prob=0.65, mask_time_length=4, mask_time_min_masks=2, num_negatives=5)
    collator = DataCollatorForWav2Vec2Pretraining(model=config, feature_extractor=EXTRACTOR)
    lengths = [6000, 2500, 4000, 1200]
    for seed in range(5):
        batch = pretraining_batch(collator, lengths, seed)
        mask, negatives = batch["mask_time_indices"], batch["sampled_negative_indices"]
        num_frames = mask.shape[1]
        assert mask.dtype == torch.bool and negatives.shape == (4, num_frames, 5) and negatives.dtype == torch.int64
        for row, n in enumerate(lengths):
            valid_frames = int(collator._geometry._get_feat_extract_output_lengths(torch.tensor(n)))
            assert not mask[row, valid_frames:].any(), "a mask on a padding frame"
            assert mask[row].sum() >= config.mask_time_length
            for t in torch.nonzero(mask[row]).flatten().tolist():
                drawn = negatives[row, t] - row * num_frames
                assert ((drawn >= 0) & (drawn < valid_frames)).all(), "a negative from padding or another clip"
                assert (drawn != t).all(), "a negative equal to the positive"
                assert mask[row, drawn].all(), "negatives come from the masked frames of the clip"
        assert num_masked_frames(batch) == mask.sum()


def test_min_masks_and_overrides():
    config = Wav2Vec2Config(**TINY, mask_time_prob=0.65, mask_time_length=10, mask_time_min_masks=2)
    # Spans of one frame at a vanishing probability: exactly `min_masks` distinct frames per clip.
    collator = DataCollatorForWav2Vec2Pretraining(
        model=config,
        feature_extractor=EXTRACTOR,
        mask_time_prob=1e-6,
        mask_time_length=1,
        mask_time_min_masks=3,
        num_negatives=4,
    )
    assert (collator.mask_time_prob, collator.mask_time_length, collator.num_negatives) == (1e-6, 1, 4)
    batch = pretraining_batch(collator, [5000, 3000, 2000])
    assert batch["mask_time_indices"].sum(1).tolist() == [3, 3, 3]
    assert batch["sampled_negative_indices"].shape[-1] == 4

    no_min = DataCollatorForWav2Vec2Pretraining(
        model=config, feature_extractor=EXTRACTOR, mask_time_prob=1e-6, mask_time_min_masks=0
    )
    assert pretraining_batch(no_min, [5000, 3000])["mask_time_indices"].sum() == 0
    with pytest.raises(ValueError, match="mask_time_prob must be in"):
        DataCollatorForWav2Vec2Pretraining(model=config, feature_extractor=EXTRACTOR, mask_time_prob=1.5)


def test_paper_defaults_mask_about_half_of_the_frames():
    """Baevski et al. 2020 §4.2: spans of M = 10 frames start at p = 0.065 of the frames (transformers'
    mask_time_prob = p * M = 0.65), which masks about 49 % of all time steps."""
    config = Wav2Vec2Config(mask_time_prob=0.65, mask_time_length=10, num_negatives=100)
    collator = DataCollatorForWav2Vec2Pretraining(model=config, feature_extractor=EXTRACTOR)
    assert (collator.mask_time_prob, collator.mask_time_length, collator.num_negatives) == (0.65, 10, 100)
    batch = pretraining_batch(collator, [4 * SR] * 8)
    fraction = batch["mask_time_indices"].float().mean().item()
    assert 0.4 < fraction < 0.6
    assert batch["sampled_negative_indices"].shape == (8, batch["mask_time_indices"].shape[1], 100)


def test_clip_shorter_than_a_span_is_left_unmasked():
    config = Wav2Vec2Config(**TINY, mask_time_prob=0.65, mask_time_length=10, num_negatives=3)
    collator = DataCollatorForWav2Vec2Pretraining(model=config, feature_extractor=EXTRACTOR)
    short = min_input_samples(config, 5)  # 5 frames: no room for a 10-frame span
    batch = pretraining_batch(collator, [min_input_samples(config, 60), short])
    assert batch["mask_time_indices"][1].sum() == 0 and batch["mask_time_indices"][0].sum() >= 10


def test_model_and_config_give_the_same_batch_and_the_stock_model_takes_it():
    config = Wav2Vec2Config(**TINY, mask_time_prob=0.65, mask_time_length=4, num_negatives=5)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).eval()
    from_model = DataCollatorForWav2Vec2Pretraining(
        model=model, feature_extractor=EXTRACTOR, return_sub_attention_mask=True
    )
    from_config = DataCollatorForWav2Vec2Pretraining(model=config, feature_extractor=EXTRACTOR)
    assert from_model.model is config  # the weights are not kept (nor copied to DataLoader workers)
    lengths = [4000, 2500, 3300]
    batch = pretraining_batch(from_model, lengths)
    other = pretraining_batch(from_config, lengths)
    for key in ("input_values", "attention_mask", "mask_time_indices", "sampled_negative_indices"):
        torch.testing.assert_close(batch[key], other[key])
    frames = model._get_feature_vector_attention_mask(batch["mask_time_indices"].shape[1], batch["attention_mask"])
    torch.testing.assert_close(batch.pop("sub_attention_mask"), frames.long())

    with torch.no_grad():
        outputs = model(**batch)
    assert torch.isfinite(outputs.loss)
    # The stock model sums the contrastive loss over masked frames: per frame it is about log(K + 1) at init.
    per_frame = outputs.contrastive_loss / num_masked_frames(batch)
    assert abs(per_frame.item() - np.log(config.num_negatives + 1)) < 1.0
