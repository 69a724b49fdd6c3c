"""The wav2vec 2.0 objective glue around the stock Wav2Vec2ForPreTraining."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2ForPreTrainingOutput

from hf_speech_cl.wav2vec2_pretraining import (
    Wav2Vec2PretrainingMonitor,
    check_pretraining_setup,
    contrastive_accuracy,
    gumbel_temperature,
)


def tiny_config(**kw):
    defaults = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_codevector_groups=2,
        num_codevectors_per_group=8,
        codevector_dim=16,
        proj_codevector_dim=16,
        mask_time_length=4,
    )
    defaults.update(kw)
    return Wav2Vec2Config(**defaults)


def test_gumbel_schedule_matches_paper():
    assert gumbel_temperature(0) == 2.0
    assert gumbel_temperature(1000) == pytest.approx(2.0 * 0.999995**1000)
    assert gumbel_temperature(10_000_000) == 0.5  # floor


def test_monitor_sets_temperature_and_normalizes_losses():
    model = Wav2Vec2ForPreTraining(tiny_config())
    monitor = Wav2Vec2PretrainingMonitor(model.config, temperature_decay=0.5)
    monitor.step(model, 1)
    assert model.quantizer.temperature == 1.0
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :4] = True  # 8 masked frames
    outputs = Wav2Vec2ForPreTrainingOutput(
        loss=torch.tensor(16.0),
        contrastive_loss=torch.tensor(8.0),
        diversity_loss=torch.tensor(4.0),
        codevector_perplexity=torch.tensor(9.0),
    )
    metrics = monitor.metrics(outputs, {"mask_time_indices": mask, "sub_attention_mask": torch.ones(2, 10)})
    assert metrics["loss"] == 2.0 and metrics["contrastive_loss"] == 1.0 and metrics["diversity_loss"] == 0.5
    assert metrics["masked_fraction"] == pytest.approx(0.4)
    assert metrics["gumbel_temperature"] == 1.0
    with pytest.raises(ValueError, match="no masked frame"):
        monitor.metrics(outputs, {"mask_time_indices": torch.zeros(2, 10, dtype=torch.bool)})


def test_contrastive_accuracy_counts_masked_frames_whose_target_beats_every_distractor():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])  # (1, 4, 2): four distinct codes
    negatives = torch.tensor([[[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]])  # every other frame of the clip
    mask = torch.tensor([[True, True, True, False]])
    assert contrastive_accuracy(targets * 3.0, targets, negatives, mask) == 1.0  # cosine: the scale does not matter
    shifted = targets.roll(1, dims=1)  # each frame predicts its neighbour's code: every masked frame wrong
    assert contrastive_accuracy(shifted, targets, negatives, mask) == 0.0
    half = targets.clone()
    half[0, 1] = targets[0, 0]  # frame 1 predicts frame 0's code; frames 0 and 2 right
    assert contrastive_accuracy(half, targets, negatives, mask) == pytest.approx(2 / 3)
    # the chance plateau: a prediction equidistant from every code makes all logits equal, which is no win
    # (fairseq's `max & ~min`), although argmax alone would pick the positive (index 0)
    codes3d = torch.nn.functional.pad(targets, (0, 1))  # the four codes in the z = 0 plane
    equidistant = torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 3)
    assert contrastive_accuracy(equidistant, codes3d, negatives, mask) == 0.0


def test_monitor_reports_contrastive_accuracy_of_a_real_forward():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_config()).eval()
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    frames = int(model._get_feat_extract_output_lengths(torch.tensor(1600)))
    mask = torch.from_numpy(_compute_mask_indices((2, frames), 0.5, 4, min_masks=2))
    negatives = torch.from_numpy(_sample_negative_indices((2, frames), 5, mask.numpy()))
    batch = {"mask_time_indices": mask, "sampled_negative_indices": negatives}
    with torch.no_grad():
        outputs = model(torch.randn(2, 1600), mask_time_indices=mask, sampled_negative_indices=negatives)
    accuracy = Wav2Vec2PretrainingMonitor(model.config).metrics(outputs, batch)["contrastive_accuracy"]
    expected = contrastive_accuracy(outputs.projected_states, outputs.projected_quantized_states, negatives, mask)
    assert 0.0 <= float(accuracy) <= 1.0 and accuracy == expected


def test_monitor_warns_on_codebook_collapse(caplog):
    monitor = Wav2Vec2PretrainingMonitor(tiny_config(), patience=3)
    mask = torch.ones(1, 5, dtype=torch.bool)
    collapsed = Wav2Vec2ForPreTrainingOutput(
        loss=torch.tensor(0.0),
        contrastive_loss=torch.tensor(0.0),
        diversity_loss=torch.tensor(0.0),
        codevector_perplexity=torch.tensor(2.0),
    )
    with caplog.at_level(logging.WARNING):
        with torch.no_grad():  # evaluation batches (the loop's evaluate) are not part of the streak
            for _ in range(5):
                monitor.metrics(collapsed, {"mask_time_indices": mask})
        assert not monitor.collapsed and not caplog.text
        for _ in range(5):
            monitor.metrics(collapsed, {"mask_time_indices": mask})
    assert monitor.collapsed and "collapsed" in caplog.text


def test_monitor_warns_once_on_the_chance_plateau_and_not_while_learning(caplog):
    monitor = Wav2Vec2PretrainingMonitor(tiny_config(num_negatives=3), plateau_patience=4, warmup_steps=2)
    codes = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]])
    batch = {"mask_time_indices": torch.ones(1, 4, dtype=torch.bool)}
    batch["sampled_negative_indices"] = torch.tensor([[[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]])

    def outputs(predictions):
        return Wav2Vec2ForPreTrainingOutput(
            loss=torch.tensor(5.5),
            contrastive_loss=torch.tensor(5.5),
            diversity_loss=torch.tensor(0.0),
            codevector_perplexity=torch.tensor(8.0),
            projected_states=predictions,
            projected_quantized_states=codes,
        )

    learning, plateau = outputs(codes), outputs(torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 3))
    model = types.SimpleNamespace(set_gumbel_temperature=lambda t: None)
    with caplog.at_level(logging.WARNING):
        for update in (1, 2):  # the warm-up: chance accuracy is not counted
            monitor.step(model, update)
            for _ in range(3):
                monitor.metrics(plateau, batch)
        assert not monitor.plateau
        monitor.step(model, 3)
        for _ in range(3):
            monitor.metrics(plateau, batch)
        monitor.metrics(learning, batch)  # one good batch resets the count
        for _ in range(3):
            monitor.metrics(plateau, batch)
        assert not monitor.plateau and "chance plateau" not in caplog.text
        for _ in range(3):
            monitor.metrics(plateau, batch)
    assert monitor.plateau and caplog.text.count("chance plateau") == 1


def test_setup_check_rejects_clips_too_short_to_mask():
    model = Wav2Vec2ForPreTraining(tiny_config(mask_time_length=10))
    # 10 frames need (10-1)*2*5 + ... samples; 50 samples give 4 frames
    with pytest.raises(ValueError, match="min_duration_s"):
        check_pretraining_setup(model, 50)
    assert check_pretraining_setup(model, 1000) == int(model._get_feat_extract_output_lengths(torch.tensor(1000)))
