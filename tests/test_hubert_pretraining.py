"""HubertForPreTraining (masked prediction, label-rate conversion, stock loading) and HubertPseudoLabeler."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCTC,
    AutoModelForPreTraining,
    HubertConfig,
    HubertForCTC,
    HubertForSequenceClassification,
    HubertModel,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from hf_speech_cl.models import hubert_pretraining as hp
from hf_speech_cl.models.hubert_pretraining import (
    HubertForPreTraining,
    HubertPretrainingConfig,
    HubertPseudoLabeler,
    hubert_layer_features,
    kaldi_mfcc,
    register,
)

SR = 16000
# HuBERT BASE conv geometry (stride 320 → 50 Hz at 16 kHz) with tiny channels; 2 layers, 2 heads
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
DETERMINISTIC = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
)


def tiny_config(**overrides) -> HubertPretrainingConfig:
    return HubertPretrainingConfig(**{**TINY, "num_clusters": 8, "final_dim": 8, **overrides})


def waveforms(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.sin(2 * math.pi * 220 * t) * 0.3
    return tones + 0.1 * torch.randn(batch, t.numel(), generator=generator)


def encoder_frames(model, samples: int) -> int:
    return int(model._get_feat_extract_output_lengths(torch.tensor(samples)))


@pytest.fixture(scope="module", autouse=True)
def _register():
    register()


# -- config -----------------------------------------------------------------------------------------------------------


def test_config_fields_rates_and_validation(tmp_path):
    config = tiny_config(label_rate=100)
    assert config.model_type == "hubert_pretraining"
    assert config.frame_rate == 50.0 and config.labels_per_frame == 2.0
    assert (config.mask_time_prob, config.mask_time_length, config.logit_temperature) == (0.8, 10, 0.1)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HubertPretrainingConfig) and loaded.label_rate == 100 and loaded.num_clusters == 8
    for bad, message in [
        (dict(label_rate=0), "label_rate"),
        (dict(logit_temperature=-1.0), "logit_temperature"),
        (dict(mask_time_prob=0.0), "mask_time_prob"),
        (dict(feature_grad_mult=2.0), "feature_grad_mult"),
    ]:
        with pytest.raises(Exception, match=message) as info:
            tiny_config(**bad)
        assert isinstance(info.value.__cause__, ValueError)


# -- label-rate conversion --------------------------------------------------------------------------------------------


def test_labels_at_100hz_and_50hz_are_resampled_by_index():
    model = HubertForPreTraining(tiny_config(label_rate=100))
    samples = 2 * SR + 123
    frames = encoder_frames(model, samples)
    mfcc_frames = kaldi_mfcc(torch.zeros(samples), SR).shape[0]  # what a 100 Hz MFCC labeler gives for this audio
    assert mfcc_frames in (2 * frames - 1, 2 * frames)
    labels = torch.arange(mfcc_frames)[None] % 8
    out = model.frame_labels(labels, torch.tensor([frames]), frames)
    assert torch.equal(out[0], (torch.arange(frames) * 2) % 8)  # frame t takes label 2t
    # one label short of 2F-1: the last frame's label 2(F-1) does not exist, so that frame is ignored
    short = model.frame_labels(labels[:, : 2 * frames - 2], torch.tensor([frames]), frames)
    assert short[0, -1] == -100 and torch.equal(short[0, :-1], out[0, :-1])

    model_50 = HubertForPreTraining(tiny_config(label_rate=50))
    labels_50 = torch.arange(frames)[None] % 8
    assert torch.equal(model_50.frame_labels(labels_50, torch.tensor([frames]), frames), labels_50)


def test_padded_labels_and_frames_are_ignored():
    model = HubertForPreTraining(tiny_config(label_rate=50))
    frames = torch.tensor([10, 7])
    labels = torch.randint(0, 8, (2, 10))
    labels[1, 7:] = -100
    out = model.frame_labels(labels, frames, 12)
    assert (out[0, 10:] == -100).all() and (out[1, 7:] == -100).all()
    assert torch.equal(out[1, :7], labels[1, :7])


def test_label_audio_length_mismatch_raises_with_rates_and_lengths():
    model = HubertForPreTraining(tiny_config(label_rate=50))
    x = waveforms(1, 1.0)
    frames = encoder_frames(model, x.shape[1])
    labels_at_100hz = torch.zeros(1, 2 * frames, dtype=torch.long)  # labeler at 100 Hz, config says 50 Hz
    with pytest.raises(ValueError) as info:
        model(x, labels=labels_at_100hz)
    message = str(info.value)
    assert "label_rate=50 Hz" in message and "at 50 Hz" in message
    assert f"{frames} encoder frames" in message and f"{2 * frames} labels" in message
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        model.frame_labels(torch.full((1, frames), 8), torch.tensor([frames]), frames)


# -- objective --------------------------------------------------------------------------------------------------------


def fairseq_compute_nce(x, pos, negs, logit_temp):
    """fairseq HubertModel.compute_nce, verbatim in substance: positive first, duplicates of it set to -inf."""
    neg_is_pos = (pos == negs).all(-1)
    targets = torch.cat([pos.unsqueeze(0), negs], dim=0)
    logits = torch.cosine_similarity(x.float(), targets.float(), dim=-1) / logit_temp
    logits[1:][neg_is_pos] = float("-inf")
    return logits.transpose(0, 1)


@pytest.mark.parametrize("nomask_weight", [0.0, 0.5])
def test_loss_matches_hand_computation(nomask_weight):
    torch.manual_seed(0)
    model = HubertForPreTraining(tiny_config(label_rate=50, pred_nomask_weight=nomask_weight, **DETERMINISTIC)).eval()
    x = waveforms(2, 1.0)
    frames = encoder_frames(model, x.shape[1])
    labels = torch.randint(0, 8, (2, frames))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 5:15] = mask[1, 20:40] = True
    out = model(x, labels=labels, mask_time_indices=mask)

    with torch.no_grad():  # the stock encoder path with the same mask, then fairseq's head by hand
        hidden = model.hubert(x, mask_time_indices=mask).last_hidden_state
        projected = model.final_proj(hidden)
        embeddings = model.label_embs_concat
        penalty = model.hubert.feature_extractor(x).pow(2).mean()

        def summed_ce(selection):
            logits = fairseq_compute_nce(
                projected[selection],
                embeddings[labels[selection]],
                embeddings[:, None].expand(-1, selection.sum(), -1),
                0.1,
            )
            return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long), reduction="sum")

        sum_m, sum_u = summed_ce(mask), summed_ce(~mask)
        n_m, n_u = int(mask.sum()), int((~mask).sum())
        sample_size = n_m + (n_u if nomask_weight > 0 else 0)
        expected = (sum_m + nomask_weight * sum_u) / sample_size + 10.0 * penalty

    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss_masked, sum_m / n_m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss_unmasked, sum_u / n_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.feature_penalty, penalty, rtol=1e-5, atol=1e-6)
    accuracy = (out.logits.argmax(-1) == labels)[mask].float().mean()
    torch.testing.assert_close(out.accuracy_masked, accuracy)
    assert out.logits.shape == (2, frames, 8) and out.last_hidden_state.shape == (2, frames, 16)


def test_sampled_mask_covers_real_frames_only_and_output_shapes():
    torch.manual_seed(0)
    model = HubertForPreTraining(tiny_config(label_rate=50)).train()
    x = waveforms(2, 2.0)
    attention_mask = torch.ones_like(x, dtype=torch.long)
    attention_mask[1, SR:] = 0
    frames = encoder_frames(model, x.shape[1])
    short = encoder_frames(model, SR)
    labels = torch.randint(0, 8, (2, frames))
    labels[1, short:] = -100
    out = model(x, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
    assert out.mask_time_indices.shape == (2, frames)
    assert not out.mask_time_indices[1, short:].any()
    assert 0.3 < out.mask_time_indices[0].float().mean() < 0.9  # p = 0.8 span starts per 10 frames, overlapping
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, frames, 16)
    assert out.loss.requires_grad and out.loss_masked.ndim == 0
    assert model(x, attention_mask=attention_mask).loss is None  # no labels: logits only, no mask sampled


def test_feature_grad_mult_scales_conv_gradients():
    grads = {}
    for scale in (1.0, 0.1, 0.0):
        torch.manual_seed(0)
        model = HubertForPreTraining(tiny_config(label_rate=50, feature_grad_mult=scale, **DETERMINISTIC))
        x = waveforms(1, 1.0)
        frames = encoder_frames(model, x.shape[1])
        mask = torch.zeros(1, frames, dtype=torch.bool)
        mask[0, 10:30] = True
        model(x, labels=torch.arange(frames)[None] % 8, mask_time_indices=mask).loss.backward()
        grads[scale] = model.hubert.feature_extractor.conv_layers[0].conv.weight.grad
    torch.testing.assert_close(grads[0.1], 0.1 * grads[1.0])
    assert grads[0.0] is None


def test_training_steps_on_fixed_labels_lower_the_loss():
    torch.manual_seed(0)
    model = HubertForPreTraining(tiny_config(label_rate=50, **DETERMINISTIC)).train()
    x = waveforms(2, 1.0)
    frames = encoder_frames(model, x.shape[1])
    labels = (torch.arange(frames)[None].expand(2, -1) // 5) % 8
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, ::3] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, masked = [], []
    for _ in range(10):
        out = model(x, labels=labels, mask_time_indices=mask)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        masked.append(out.loss_masked.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert masked[-1] < 0.6 * masked[0], masked  # the prediction itself improves, not just the feature penalty


# -- loading: stock weights in, encoder out ---------------------------------------------------------------------------


def test_stock_hubert_weights_initialise_the_encoder(tmp_path):
    stock = HubertModel(HubertConfig(**TINY))
    stock.save_pretrained(tmp_path)
    model, info = HubertForPreTraining.from_pretrained(tmp_path, num_clusters=5, output_loading_info=True)
    assert set(info["missing_keys"]) == {"final_proj.weight", "final_proj.bias", "label_embs_concat"}
    assert model.config.num_clusters == 5 and model.label_embs_concat.shape == (5, 256)
    for key, value in stock.state_dict().items():
        torch.testing.assert_close(model.hubert.state_dict()[key], value, msg=key)


def test_encoder_loads_into_stock_ctc_and_classification_heads(tmp_path):
    model = HubertForPreTraining(tiny_config())
    model.save_pretrained(tmp_path / "pretrained")
    encoder_state = model.hubert.state_dict()
    for cls, head in [(HubertForCTC, {"lm_head"}), (HubertForSequenceClassification, {"projector", "classifier"})]:
        loaded, info = cls.from_pretrained(tmp_path / "pretrained", output_loading_info=True)
        assert {key.split(".")[0] for key in info["missing_keys"]} == head, info["missing_keys"]
        for key, value in encoder_state.items():
            torch.testing.assert_close(loaded.hubert.state_dict()[key], value, msg=key)

    model.export_encoder(tmp_path / "exported", mask_time_prob=0.05)
    exported_config = (tmp_path / "exported" / "config.json").read_text()
    assert '"model_type": "hubert"' in exported_config and "auto_map" not in exported_config
    assert "num_clusters" not in exported_config
    ctc, info = AutoModelForCTC.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert isinstance(ctc, HubertForCTC) and ctc.config.mask_time_prob == 0.05
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"lm_head"}
    torch.testing.assert_close(
        ctc.hubert.encoder.layers[1].feed_forward.output_dense.weight,
        model.hubert.encoder.layers[1].feed_forward.output_dense.weight,
    )


def test_auto_classes_and_remote_code(tmp_path):
    model = HubertForPreTraining(tiny_config())
    model.save_pretrained(tmp_path)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), HubertForPreTraining)
    # the checkpoint carries its code: load the copied class (as trust_remote_code does) and compare outputs
    assert (tmp_path / "modeling_hubert_pretraining.py").exists()
    remote_cls = get_class_from_dynamic_module("modeling_hubert_pretraining.HubertForPreTraining", tmp_path)
    assert remote_cls.__module__.startswith("transformers_modules")
    remote = remote_cls.from_pretrained(tmp_path).eval()
    x = waveforms(1, 0.5)
    torch.testing.assert_close(remote(x).logits, model.eval()(x).logits)


def test_model_files_import_only_torch_and_transformers():
    allowed = {"torch", "transformers", "huggingface_hub", "__future__", "dataclasses", "re", "pathlib", "typing"}
    folder = Path(hp.__file__).parent
    for name in ("modeling_hubert_pretraining.py", "configuration_hubert_pretraining.py"):
        tree = ast.parse((folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            elif isinstance(node, ast.ImportFrom):  # relative: only the sibling configuration file
                assert node.level == 1 and node.module == "configuration_hubert_pretraining", ast.dump(node)
                continue
            else:
                continue
            # torchaudio only inside kaldi_mfcc (the MFCC source is defined as torchaudio's Kaldi MFCC)
            assert roots <= allowed | {"torchaudio"}, (name, roots)
            if "torchaudio" in roots:
                assert node.col_offset > 0, "torchaudio must be imported lazily"


# -- the pseudo-labeler ---------------------------------------------------------------------------------------------


def tiny_encoder(**overrides) -> HubertModel:
    torch.manual_seed(0)
    return HubertModel(HubertConfig(**{**TINY, "num_hidden_layers": 3, **DETERMINISTIC, **overrides})).eval()


@pytest.mark.parametrize("source", ["mfcc", "hubert"])
def test_labeler_saved_and_loaded_gives_identical_labels(tmp_path, source):
    if source == "mfcc":
        labeler = HubertPseudoLabeler.for_mfcc(6, centroids=torch.randn(6, 39) * 10)
    else:
        labeler = HubertPseudoLabeler.for_hubert_layer(
            tiny_encoder(), 2, 6, normalize_input=True, centroids=torch.randn(6, 16)
        )
    x = waveforms(2, 1.0)
    attention_mask = torch.ones_like(x, dtype=torch.long)
    attention_mask[1, SR // 2 :] = 0
    out = labeler(x, attention_mask=attention_mask)
    rate = labeler.config.label_rate
    assert rate == (100.0 if source == "mfcc" else 50.0)
    assert labeler.config.frame_center_seconds == 0.0125  # 25 ms window / 400-sample receptive field
    assert out.cluster_ids.shape[0] == 2 and (out.cluster_ids[1, out.lengths[1] :] == -100).all()
    assert out.cluster_ids[0].unique().numel() > 1

    labeler.save_pretrained(tmp_path)
    for reloaded in (HubertPseudoLabeler.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(reloaded, HubertPseudoLabeler) and not reloaded.training
        assert torch.equal(reloaded(x, attention_mask=attention_mask).cluster_ids, out.cluster_ids)
    # each utterance is labelled alone: batch composition does not change labels
    alone = labeler(x[1, : SR // 2]).cluster_ids[0]
    assert torch.equal(alone, out.cluster_ids[1, : out.lengths[1]])


def test_labeler_keeps_only_the_layers_it_needs():
    encoder = tiny_encoder()
    labeler = HubertPseudoLabeler.for_hubert_layer(encoder, 1, 4, normalize_input=False)
    assert labeler.encoder.config.num_hidden_layers == 1
    x = waveforms(1, 1.0)
    full = encoder(x, output_hidden_states=True).hidden_states[1][0]
    features, lengths = labeler.extract_features(x)
    torch.testing.assert_close(features[0], full)
    with pytest.raises(ValueError, match="outside"):
        HubertPseudoLabeler.for_hubert_layer(encoder, 4, 4, normalize_input=False)


def fairseq_layer_reference(encoder: HubertModel, x: torch.Tensor, layer: int) -> torch.Tensor:
    """fairseq TransformerEncoder.extract_features(tgt_layer=layer-1) on the HF modules: x + pos_conv(x), layer norm
    first only for post-LN encoders, blocks 0..layer-1, and no final layer norm because `layer` is given."""
    hidden = encoder.feature_projection(encoder.feature_extractor(x).transpose(1, 2))
    hidden = hidden + encoder.encoder.pos_conv_embed(hidden)
    if not encoder.config.do_stable_layer_norm:
        hidden = encoder.encoder.layer_norm(hidden)
    for block in encoder.encoder.layers[:layer]:
        hidden = block(hidden)
    return hidden[0]


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN (BASE)", "pre-LN (LARGE)"])
def test_feature_conventions_agree_on_layers_and_differ_where_documented(stable):
    encoder = tiny_encoder(do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    x = waveforms(1, 1.0)[0]
    with torch.no_grad():
        outputs = encoder(x[None], output_hidden_states=True)
        for layer in (1, 2, 3):
            reference = fairseq_layer_reference(encoder, x[None], layer)
            hf = hubert_layer_features(encoder, x, layer, feature_convention="hf")
            fairseq = hubert_layer_features(encoder, x, layer, feature_convention="fairseq")
            torch.testing.assert_close(hf, reference, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fairseq, reference, rtol=1e-5, atol=1e-5)
        if stable:  # the last hidden state is layer-normed, hidden_states[N] (and fairseq's layer N) is not
            assert not torch.allclose(outputs.hidden_states[3], outputs.last_hidden_state, atol=1e-3)
        else:
            torch.testing.assert_close(outputs.hidden_states[3], outputs.last_hidden_state)

    # layer 0 (the transformer input) exists in the HF convention only
    torch.testing.assert_close(hubert_layer_features(encoder, x, 0), outputs.hidden_states[0][0])
    with pytest.raises(ValueError, match="outside 1..3"):
        hubert_layer_features(encoder, x, 0, feature_convention="fairseq")

    # input normalisation: variance floor 1e-7 (HF feature extractor) vs 1e-5 (fairseq F.layer_norm)
    quiet, loud = x * 1e-3, x
    for waveform, differs in ((quiet, True), (loud, False)):
        hf = hubert_layer_features(encoder, waveform, 2, feature_convention="hf", normalize_input=True)
        fairseq = hubert_layer_features(encoder, waveform, 2, feature_convention="fairseq", normalize_input=True)
        assert (not torch.allclose(hf, fairseq, atol=1e-3)) == differs


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = HubertForPreTraining(tiny_config(label_rate=50, **DETERMINISTIC)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        x = waveforms(1, 1.0)
        frames = encoder_frames(model, x.shape[1])
        mask = torch.zeros(1, frames, dtype=torch.bool)
        mask[0, 10:30] = True
        model(x, labels=torch.arange(frames)[None] % 8, mask_time_indices=mask).loss.backward()
        grads.append(model.hubert.encoder.layers[0].attention.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
