"""SimCLR audio model: NT-Xent values, gradients, granularities, padding, save/load, Auto classes, remote code and
encoder export."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
)

from hf_speech_cl.augment import SimCLRAugment
from hf_speech_cl.models.simclr_audio import (
    SimCLRAudioConfig,
    SimCLRAudioForPreTraining,
    SimCLRAudioModel,
    nt_xent_loss,
    register,
)

TINY_BACKBONE = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
    conv_dim=(32, 32, 32),
    conv_stride=(4, 4, 4),
    conv_kernel=(8, 4, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
)


def tiny_config(**overrides) -> SimCLRAudioConfig:
    return SimCLRAudioConfig(backbone_config=dict(TINY_BACKBONE), projection_dim=8, **overrides)


def two_views(num_clips: int = 3, num_samples: int = 2000, seed: int = 0) -> torch.Tensor:
    """(2N, T): view 2 of each clip is view 1 plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randn(num_clips, num_samples, generator=generator)
    return torch.cat([clips, clips + 0.3 * torch.randn(clips.shape, generator=generator)])


# ---------------------------------------------------------------------------------------------------------------------
# NT-Xent
# ---------------------------------------------------------------------------------------------------------------------
def reference_nt_xent(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. 1 with explicit loops: anchor i, positive j, denominator over every k != i of all 2N views."""
    views = [v / v.norm() for v in list(view1) + list(view2)]
    n = len(view1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        numerator = math.exp(float(views[i] @ views[j]) / temperature)
        denominator = sum(math.exp(float(views[i] @ views[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("num_pairs", [4, 3])  # an even batch and an odd, short "last batch"
def test_nt_xent_matches_hand_computed_reference(num_pairs):
    generator = torch.Generator().manual_seed(num_pairs)
    view1 = torch.randn(num_pairs, 5, generator=generator, dtype=torch.float64)
    view2 = torch.randn(num_pairs, 5, generator=generator, dtype=torch.float64)
    result = nt_xent_loss(view1, view2, temperature=0.5)
    assert result.loss.shape == () and result.retrieval_accuracy.shape == ()
    assert result.loss.item() == pytest.approx(reference_nt_xent(view1, view2, 0.5), rel=1e-5)
    # swapping the views only relabels anchors: same loss
    assert nt_xent_loss(view2, view1, temperature=0.5).loss.item() == pytest.approx(result.loss.item(), rel=1e-6)


def test_nt_xent_perfect_views_and_errors():
    view = torch.eye(4, 6)  # 4 orthogonal directions: each view's nearest candidate is its positive
    expected = -math.log(math.exp(10) / (math.exp(10) + 6))  # 2.7e-4: positive logit 10, 6 negatives at 0
    result = nt_xent_loss(view, view.clone(), temperature=0.1)
    assert result.retrieval_accuracy.item() == 1.0
    # the loss is computed in float32 as a difference of two numbers near 10, whose spacing is 9.5e-7: exact to a
    # few 1e-6 absolute only (BLAS builds differ by 7e-8, i.e. 2.5e-4 relative). A wrong formula is off by >1e-4.
    assert result.loss.item() == pytest.approx(expected, abs=5e-6)
    with pytest.raises(ValueError, match="at least 2 clips"):
        nt_xent_loss(torch.randn(1, 6), torch.randn(1, 6))
    with pytest.raises(ValueError, match=r"\[3, 6\] and \[2, 6\]"):
        nt_xent_loss(torch.randn(3, 6), torch.randn(2, 6))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(3, 6), torch.randn(3, 6), temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------
def test_config_round_trip_and_validation(tmp_path):
    config = tiny_config(granularity="frame", frame_num_samples=5, noise_snr_db=(0.0, 3.0))
    assert isinstance(config.backbone_config, Wav2Vec2Config)
    assert config.backbone_config.feat_extract_norm == "layer" and config.backbone_config.apply_spec_augment is False
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "wav2vec2" and "temperature" not in saved
    assert saved["auto_map"]["AutoConfig"] == "configuration_simclr_audio.SimCLRAudioConfig"
    loaded = SimCLRAudioConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.backbone_config, Wav2Vec2Config)
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()
    assert (loaded.granularity, loaded.frame_num_samples, loaded.noise_snr_db) == ("frame", 5, (0.0, 3.0))
    assert SimCLRAudioConfig().backbone_config.hidden_size == 768  # BASE sizes by default

    with pytest.raises(ValueError, match="'segment'"):
        tiny_config(granularity="segment")
    with pytest.raises(ValueError, match="noise_prob.*1.5"):
        tiny_config(noise_prob=1.5)
    with pytest.raises(ValueError, match="'hubert'"):
        SimCLRAudioConfig(backbone_config={"model_type": "hubert"})


# ---------------------------------------------------------------------------------------------------------------------
# Forward, gradients, granularities, padding
# ---------------------------------------------------------------------------------------------------------------------
def test_utterance_forward_shapes_and_gradients_reach_encoder():
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config())
    inputs = two_views(num_clips=3, num_samples=2000)
    attention_mask = torch.ones_like(inputs, dtype=torch.long)
    attention_mask[[1, 4], 1500:] = 0
    out = model(inputs, attention_mask=attention_mask, output_hidden_states=True)
    num_frames = int(model.wav2vec2._get_feat_extract_output_lengths(2000))
    assert out.loss.shape == () and out.retrieval_accuracy.shape == ()
    assert torch.equal(out.loss, out.nt_xent_loss)
    assert out.projections.shape == (6, 8) and out.embeddings.shape == (6, 16)
    assert out.last_hidden_state.shape == (6, num_frames, 16) and len(out.hidden_states) == 3
    assert out.sampled_frame_indices is None
    assert out.frame_attention_mask[1].sum() == model.wav2vec2._get_feat_extract_output_lengths(1500)
    # the loss is NT-Xent of the projections
    expected = nt_xent_loss(out.projections[:3], out.projections[3:], 0.1).loss
    assert torch.allclose(out.loss, expected)

    out.loss.backward()
    conv_grad = model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad
    attention_grad = model.wav2vec2.encoder.layers[0].attention.q_proj.weight.grad
    assert conv_grad is not None and conv_grad.abs().sum() > 0
    assert attention_grad is not None and attention_grad.abs().sum() > 0
    assert model.projection_head.dense.weight.grad.abs().sum() > 0


def test_padding_does_not_change_utterance_embedding():
    torch.manual_seed(0)
    model = SimCLRAudioModel(tiny_config()).eval()
    short, long = torch.randn(1, 1300), torch.randn(1, 2000)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 700)), long])
    attention_mask = torch.tensor([[1] * 1300 + [0] * 700, [1] * 2000])
    with torch.no_grad():
        padded = model(batch, attention_mask=attention_mask).pooled_output
        alone = model(short).pooled_output
        alone_with_mask = model(short, attention_mask=torch.ones(1, 1300, dtype=torch.long)).pooled_output
    assert padded.shape == (2, 16)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_with_mask, alone, atol=1e-6, rtol=1e-6)

    pretraining = SimCLRAudioForPreTraining(tiny_config()).eval()
    views = torch.cat([batch, batch + 0.1])
    with torch.no_grad():
        embeddings = pretraining(views, attention_mask=attention_mask.repeat(2, 1)).embeddings
        single = pretraining.wav2vec2(short).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(embeddings[0], single[0], atol=1e-5, rtol=1e-5)


def test_frame_granularity_samples_valid_frames_and_checks_lengths():
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config(granularity="frame", frame_num_samples=6))
    inputs = two_views(num_clips=3, num_samples=2000)
    attention_mask = torch.ones_like(inputs, dtype=torch.long)
    attention_mask[[0, 3], 350:] = 0  # clip 0 is short in both views
    out = model(inputs, attention_mask=attention_mask)
    valid_frames = out.frame_attention_mask[:3].sum(dim=-1)
    assert valid_frames[0] < 6 < valid_frames[1]
    indices = out.sampled_frame_indices
    counts = torch.bincount(indices[:, 0], minlength=3)
    assert counts.tolist() == [int(valid_frames[0]), 6, 6]
    assert bool((indices[:, 1] < valid_frames[indices[:, 0]]).all())
    num_pairs = indices.shape[0]
    assert out.projections.shape == (2 * num_pairs, 8)
    # positives are the same time step of the two views
    torch.testing.assert_close(out.embeddings[0], out.last_hidden_state[indices[0, 0], indices[0, 1]])
    torch.testing.assert_close(out.embeddings[num_pairs], out.last_hidden_state[3 + indices[0, 0], indices[0, 1]])
    out.loss.backward()
    assert model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0

    attention_mask[0, 350:900] = 1  # view 1 of clip 0 now longer than its view 2
    with pytest.raises(ValueError, match=r"view-1 lengths \[900, 2000, 2000\] and view-2 lengths \[350"):
        model(inputs, attention_mask=attention_mask)
    with pytest.raises(ValueError, match=r"\(2N, T\).*\[3, 2000\]"):
        model(inputs[:3])


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config(projection_norm="layer_norm"))
    inputs = two_views(num_clips=2, num_samples=1500)
    model(inputs).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.wav2vec2.encoder.gradient_checkpointing
    loss = model(inputs).loss
    loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Save / load, Auto classes, remote code, export
# ---------------------------------------------------------------------------------------------------------------------
def test_save_load_and_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config()).eval()
    inputs = two_views(num_clips=2, num_samples=1500)
    with torch.no_grad():
        expected = model(inputs)
    model.save_pretrained(tmp_path)
    assert {"configuration_simclr_audio.py", "modeling_simclr_audio.py"} <= set(os.listdir(tmp_path))

    register()
    register()  # idempotent
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SimCLRAudioConfig)
    reloaded = SimCLRAudioForPreTraining.from_pretrained(tmp_path).eval()
    auto_pretraining = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    auto_base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto_pretraining) is SimCLRAudioForPreTraining and type(auto_base) is SimCLRAudioModel
    with torch.no_grad():
        for candidate in (reloaded, auto_pretraining):
            out = candidate(inputs)
            assert torch.equal(out.loss, expected.loss) and torch.equal(out.projections, expected.projections)
        torch.testing.assert_close(auto_base(inputs).pooled_output, expected.embeddings, atol=0, rtol=0)
    assert isinstance(AutoModel.from_config(tiny_config()), SimCLRAudioModel)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_speech_cl"] = None  # this environment does not have our package
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

    path, inputs_path, out_path = sys.argv[1:4]
    try:
        import hf_speech_cl  # noqa: F401
        raise SystemExit("hf_speech_cl should not be importable here")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    pretraining = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True).eval()
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        torch.save(
            {
                "pooled": base(inputs).pooled_output,
                "loss": pretraining(inputs).loss,
                "modules": [type(config).__module__, type(base).__module__, type(pretraining).__module__],
                "backbone": type(config.backbone_config).__name__,
            },
            out_path,
        )
    """
)


def test_trust_remote_code_without_package(tmp_path):
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config()).eval()
    inputs = two_views(num_clips=2, num_samples=1500)
    with torch.no_grad():
        expected = model(inputs)
    model.save_pretrained(tmp_path / "checkpoint")
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_SCRIPT,
            str(tmp_path / "checkpoint"),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    assert all(module.startswith("transformers_modules") for module in result["modules"]), result["modules"]
    assert result["backbone"] == "Wav2Vec2Config"
    # another process may use another thread count, so float sums may differ in the last bits
    torch.testing.assert_close(result["loss"], expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["pooled"], expected.embeddings, rtol=1e-5, atol=1e-6)


def test_export_encoder_loads_in_stock_wav2vec2_heads(tmp_path):
    torch.manual_seed(0)
    model = SimCLRAudioForPreTraining(tiny_config(sampling_rate=8000)).eval()
    model.export_encoder(tmp_path)
    assert model.config.backbone_config.architectures is None  # export does not touch the live config
    inputs = torch.randn(2, 1500)
    with torch.no_grad():
        expected = model.wav2vec2(inputs, output_hidden_states=True).hidden_states
    for head_class, head_keys in (
        (Wav2Vec2ForCTC, {"lm_head"}),
        (Wav2Vec2ForSequenceClassification, {"projector", "classifier"}),
    ):
        head, info = head_class.from_pretrained(tmp_path, output_loading_info=True)
        assert {key.split(".")[0] for key in info["missing_keys"]} == head_keys, info
        assert not info["unexpected_keys"] and not info["mismatched_keys"]
        with torch.no_grad():
            hidden_states = head.eval().wav2vec2(inputs, output_hidden_states=True).hidden_states
        assert len(hidden_states) == len(expected)
        for got, want in zip(hidden_states, expected):
            assert torch.equal(got, want)
    feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert feature_extractor.sampling_rate == 8000 and feature_extractor.return_attention_mask


# ---------------------------------------------------------------------------------------------------------------------
# A tiny training loop
# ---------------------------------------------------------------------------------------------------------------------
def harmonic_clips(sampling_rate: int, num_samples: int) -> torch.Tensor:
    """4 clips that an utterance embedding can tell apart: harmonic tones at 220, 550, 1300 and 3100 Hz, plus noise."""
    t = torch.arange(num_samples) / sampling_rate
    generator = torch.Generator().manual_seed(1)
    tones = [sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in (1, 2, 3)) for f0 in (220.0, 550.0, 1300.0, 3100.0)]
    return torch.stack(tones) + 0.05 * torch.randn(4, num_samples, generator=generator)


def test_training_with_augmentation_lowers_nt_xent():
    torch.manual_seed(2)
    config = tiny_config()
    model = SimCLRAudioForPreTraining(config).train()
    augment = SimCLRAugment.from_config(config)
    clips = harmonic_clips(config.sampling_rate, 3000)
    batch = {"input_values": clips, "attention_mask": torch.ones_like(clips, dtype=torch.long)}
    probe = augment(batch, torch.Generator().manual_seed(123))  # a fixed pair of augmented views to measure on
    with torch.no_grad():
        before = model(**probe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = model(**augment(batch, generator)).loss  # fresh views every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(**probe)
    assert after.loss.item() < 0.25 * before.loss.item(), (before.loss.item(), after.loss.item())
    assert after.retrieval_accuracy.item() > before.retrieval_accuracy.item()
