"""`--init_from`: continued pretraining of the HuBERT and wav2vec 2.0 recipes from (stand-ins of) stock checkpoints.

A tiny stock `HubertModel` stands in for facebook/hubert-base-ls960, a tiny `Wav2Vec2ForPreTraining` (saved with the
fine-tuning mask probability of stock configs) for facebook/wav2vec2-base, a tiny `Wav2Vec2Model` for an encoder-only
export. Each run is a few updates through the recipe's `main(argv)`; a spy on the recipe's `train` sees the model as
training receives it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
)

import hf_speech_cl  # noqa: F401  (registers the Auto classes)
from hf_speech_cl.continued_pretraining import count_by_module, load_hubert_for_continued_pretraining
from hf_speech_cl.models.hubert_pretraining import HubertForPreTraining, HubertPretrainingConfig
from hf_speech_cl.presets import encoder_preset
from hf_speech_cl.pseudo_labels import load_label_info
from hf_speech_cl.training import read_metrics
from hf_speech_cl.wav2vec2_pretraining import WAV2VEC2_PRETRAINING_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# The few utterances test_pretrain_hubert_recipe uses; built once per session in conftest's corpus cache.
CORPUS = {"train_hours": 0.01, "eval_hours": 0.003, "train_speakers": 3, "eval_speakers": 1}
HEAD_LINE = "newly initialised: final_proj (2 tensors), label_embs_concat (1)"


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_args(out: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--dataset_kwargs", json.dumps(CORPUS), "--max_eval_samples", "3",
        "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--warmup_steps", "1",
        "--per_device_train_batch_size", "4", "--max_train_crop_s", "1.5", *extra,
    ]  # fmt: skip


def hidden_states(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        states = encoder(x, output_hidden_states=True).hidden_states
    encoder.train(was_training)
    return states


def spy_on_training(recipe, monkeypatch, encoder_of, x) -> dict:
    """Replace the recipe's `train` by one that records the model it is handed, then trains it."""
    seen: dict = {}
    real_train = recipe.train

    def spy(model, *args, **kwargs):
        seen["hidden_states"] = hidden_states(encoder_of(model), x)
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["config"] = model.config
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "train", spy)
    return seen


def assert_same_states(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def changed_tensors(state: dict, reference: dict) -> list[str]:
    return [k for k, v in reference.items() if k in state and not torch.equal(state[k], v)]


@pytest.fixture(scope="module")
def probe_input() -> torch.Tensor:
    return torch.randn(1, SR, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def stock_hubert(tmp_path_factory) -> Path:
    """Stand-in for facebook/hubert-base-ls960: a stock `HubertModel` (tiny preset), random weights."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("stock") / "hubert"
    HubertModel(HubertConfig(**encoder_preset("tiny"))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stock_wav2vec2(tmp_path_factory) -> Path:
    """Stand-in for facebook/wav2vec2-base: a `Wav2Vec2ForPreTraining` with its quantizer; its config keeps the
    fine-tuning mask probability (0.05) of stock configs."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("stock") / "wav2vec2"
    codebooks = {
        k: WAV2VEC2_PRETRAINING_DEFAULTS["tiny"][k]
        for k in ("num_codevector_groups", "num_codevectors_per_group", "codevector_dim", "proj_codevector_dim")
    }
    Wav2Vec2ForPreTraining(Wav2Vec2Config(**encoder_preset("tiny"), **codebooks)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stock_wav2vec2_encoder(tmp_path_factory) -> Path:
    """An encoder-only `Wav2Vec2Model` (no quantizer, no projections)."""
    path = tmp_path_factory.mktemp("stock") / "wav2vec2-encoder"
    Wav2Vec2Model(Wav2Vec2Config(**encoder_preset("tiny"))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hubert_run(tmp_path_factory, corpus_cache_dir, stock_hubert, probe_input):
    """`pretrain_hubert.py --init_from <stock HubertModel> --num_clusters 10`, 3 updates."""
    recipe = load_recipe("pretrain_hubert")
    out = tmp_path_factory.mktemp("hubert") / "continued"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    recipe_logger = logging.getLogger("pretrain_hubert")
    level = recipe_logger.level
    recipe_logger.setLevel(logging.INFO)
    recipe_logger.addHandler(handler)
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = spy_on_training(recipe, monkeypatch, lambda model: model.hubert, probe_input)
        recipe.main(
            run_args(out, "--init_from", str(stock_hubert), "--num_clusters", "10", "--kmeans_sample_fraction", "1.0")
        )
    recipe_logger.removeHandler(handler)
    recipe_logger.setLevel(level)
    return out, seen, [r.getMessage() for r in records]


# -- HuBERT -----------------------------------------------------------------------------------------------------------


def test_hubert_continues_from_a_stock_hubert_model(hubert_run, stock_hubert, probe_input):
    out, seen, messages = hubert_run
    reference = HubertModel.from_pretrained(stock_hubert)

    # training started from the checkpoint's encoder: identical hidden states, a new head of the new K
    assert_same_states(seen["hidden_states"], hidden_states(reference, probe_input))
    assert seen["config"].num_clusters == 10 and seen["config"].hidden_size == 128
    assert seen["config"].mask_time_prob == 0.8  # the pretraining objective, not the stock config's 0.05
    assert any(HEAD_LINE in m for m in messages), messages

    # the checkpoint played iteration 1's model: iteration 2 clustered its middle layer (1 of 2)
    assert not (out / "iteration-1").exists()
    info = load_label_info(out / "iteration-2" / "labeler")
    assert (info["feature_type"], info["layer"], info["num_clusters"]) == ("hubert", 1, 10)
    assert info["source_model"] == str(stock_hubert)

    # it trained: finite losses, weights moved
    results = json.loads((out / "iteration-2" / "model" / "train_results.json").read_text())
    losses = [r["loss"] for r in read_metrics(out / "iteration-2" / "model" / "logs") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    print(f"hubert continued: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    final, loading = HubertModel.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    assert set(loading["unexpected_keys"]) == {"final_proj.weight", "final_proj.bias", "label_embs_concat"}
    assert changed_tensors(final.state_dict(), reference.state_dict())
    assert results["global_step"] == 3

    # the card says what it started from
    card = (out / "README.md").read_text()
    assert f"`{stock_hubert}`" in card and HEAD_LINE in card and "Continued pretraining" in card


def test_our_hubert_checkpoint_continues_with_another_k_and_a_new_head(hubert_run, probe_input):
    out, _, _ = hubert_run
    ours = HubertForPreTraining.from_pretrained(out)
    assert ours.config.num_clusters == 10
    config = HubertPretrainingConfig(**encoder_preset("tiny"), num_clusters=7)
    model, report = load_hubert_for_continued_pretraining(str(out), config)
    assert model.label_embs_concat.shape == (7, config.final_dim)
    assert_same_states(hidden_states(model.hubert, probe_input), hidden_states(ours.hubert, probe_input))
    assert HEAD_LINE in report.summary()
    assert count_by_module(report.not_used) == "final_proj (2 tensors), label_embs_concat (1)"
    assert not torch.equal(model.final_proj.weight, ours.final_proj.weight)  # the head is new, not carried over


def test_a_stock_hubert_for_ctc_gives_its_encoder_and_drops_its_lm_head(tmp_path, stock_hubert, probe_input):
    ctc = HubertForCTC.from_pretrained(stock_hubert, vocab_size=12)
    ctc.save_pretrained(tmp_path / "ctc")
    config = HubertPretrainingConfig(**encoder_preset("tiny"), num_clusters=5)
    model, report = load_hubert_for_continued_pretraining(str(tmp_path / "ctc"), config)
    assert_same_states(hidden_states(model.hubert, probe_input), hidden_states(ctc.hubert, probe_input))
    assert report.summary().endswith(f"{HEAD_LINE}; not used: lm_head (2 tensors)"), report.summary()
    # a deeper encoder than the checkpoint's would get random layers: refused, naming the field
    with pytest.raises(ValueError, match="num_hidden_layers: 2 in the checkpoint, 3 asked"):
        load_hubert_for_continued_pretraining(
            str(tmp_path / "ctc"), HubertPretrainingConfig(**encoder_preset("tiny", num_hidden_layers=3))
        )


def test_hubert_init_from_that_does_not_fit_is_refused_naming_the_field(
    tmp_path, corpus_cache_dir, stock_hubert, stock_wav2vec2
):
    recipe = load_recipe("pretrain_hubert")
    out = tmp_path / "refused"
    for extra, field in [
        (["--model_size", "small"], "hidden_size"),  # a 256-wide preset for a 128-wide checkpoint
        (["--config_overrides", "num_hidden_layers=3"], "num_hidden_layers"),  # would add a random layer
        (["--label_layer", "5"], "label_layer"),  # the checkpoint has 2 layers
        (["--iterations", "1"], "iterations"),
    ]:
        with pytest.raises(ValueError, match=field) as caught:
            recipe.main(run_args(out, "--init_from", str(stock_hubert), *extra))
        assert str(stock_hubert) in str(caught.value) or field == "iterations"
    with pytest.raises(ValueError, match="model_type"):
        recipe.main(run_args(out, "--init_from", str(stock_wav2vec2)))
    assert not out.exists()  # refused before anything was written or labelled
    # the old name of --label_layer still parses
    parser = recipe.HfArgumentParser(recipe.HubertArguments)
    assert parser.parse_args_into_dataclasses(args=["--layer", "1"])[0].label_layer == 1


# -- wav2vec 2.0 ------------------------------------------------------------------------------------------------------


def test_wav2vec2_continues_with_the_checkpoints_own_quantizer(
    tmp_path, corpus_cache_dir, stock_wav2vec2, probe_input, monkeypatch, caplog
):
    recipe = load_recipe("pretrain_wav2vec2")
    caplog.set_level(logging.INFO, logger="pretrain_wav2vec2")
    out = tmp_path / "continued"
    seen = spy_on_training(recipe, monkeypatch, lambda model: model.wav2vec2, probe_input)
    recipe.main(run_args(out, "--init_from", str(stock_wav2vec2), "--eval_split", "none"))
    reference = Wav2Vec2ForPreTraining.from_pretrained(stock_wav2vec2)

    # every weight from the checkpoint, quantizer and projections included; the pretraining objective
    assert_same_states(seen["hidden_states"], hidden_states(reference.wav2vec2, probe_input))
    for key, value in reference.state_dict().items():
        assert torch.equal(seen["state"][key], value), key
    assert seen["config"].mask_time_prob == 0.65 and seen["config"].num_negatives == 30
    assert "newly initialised: nothing" in caplog.text

    records = [r for r in read_metrics(out / "logs") if "contrastive_loss" in r]
    losses = [r["loss"] for r in records]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert records[0]["gumbel_temperature"] == pytest.approx(0.5)  # where the checkpoint's schedule ended
    print(f"wav2vec2 continued: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    final, loading = Wav2Vec2Model.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    continued = Wav2Vec2ForPreTraining.from_pretrained(out)
    assert changed_tensors(continued.state_dict(), reference.state_dict())
    card = (out / "README.md").read_text()
    assert f"`{stock_wav2vec2}`" in card and "Continued pretraining" in card


def test_wav2vec2_init_from_that_does_not_fit_is_refused_naming_the_field(
    tmp_path, corpus_cache_dir, stock_wav2vec2, stock_wav2vec2_encoder, stock_hubert
):
    recipe = load_recipe("pretrain_wav2vec2")
    for i, (source, extra, field) in enumerate(
        [
            (stock_wav2vec2, ["--model_size", "small"], "hidden_size"),
            (stock_wav2vec2, ["--config_overrides", "num_codevectors_per_group=32"], "num_codevectors_per_group"),
            (stock_wav2vec2, ["--feat_extract_norm", "group"], "feat_extract_norm"),
            (stock_hubert, [], "model_type"),
        ]
    ):
        out = tmp_path / f"refused-{i}"
        with pytest.raises(ValueError, match=field):
            recipe.main(run_args(out, "--init_from", str(source), *extra))
        assert not out.exists()  # refused before anything was written
    # no quantizer in the checkpoint: an error saying so, also under the old flag name (it used to re-initialise)
    for flag in ("--init_from", "--model_name_or_path"):
        with pytest.raises(ValueError, match=r"has no quantizer, project_q, project_hid weights"):
            recipe.main(run_args(tmp_path / f"encoder-only{flag}", flag, str(stock_wav2vec2_encoder)))
