"""The shared training loop on a toy regression model: learning, logging, resume, NaN handling, cards, upload."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from transformers.utils import ModelOutput

from hf_speech_cl.training import (
    NonFiniteLossError,
    PretrainingArguments,
    find_last_checkpoint,
    make_accelerator,
    read_metrics,
    train,
)
from hf_speech_cl.training.checkpointing import atomic_write_text, list_checkpoints
from hf_speech_cl.training.export import push_folder_to_hub, save_pretrained_atomic

SAMPLING_RATE = 100  # the toy "audio" is 100 samples per second


@dataclass
class ToyOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mse: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


class ToyModel(torch.nn.Module):
    """Predicts the mean of each clip; loss = MSE. `poison` makes every loss NaN."""

    def __init__(self, poison: bool = False):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.poison = poison

    def forward(self, input_values, attention_mask, targets):
        mean = (input_values * attention_mask).sum(-1, keepdim=True) / attention_mask.sum(-1, keepdim=True)
        predictions = self.linear(mean).squeeze(-1)
        loss = torch.nn.functional.mse_loss(predictions, targets)
        if self.poison:
            loss = loss * float("nan")
        return ToyOutput(loss=loss, mse=loss.detach(), predictions=predictions)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles with a seed that depends on the epoch, like the data pipeline's samplers."""

    def __init__(self, n, seed=0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def toy_loader(n=24, batch_size=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 50, generator=g)
    targets = 3 * x.mean(-1) + 1
    data = [{"input_values": x[i], "targets": targets[i]} for i in range(n)]

    def collate(items):
        return {
            "input_values": torch.stack([it["input_values"] for it in items]),
            "attention_mask": torch.ones(len(items), 50, dtype=torch.long),
            "targets": torch.stack([it["targets"] for it in items]),
        }

    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=EpochSampler(n), collate_fn=collate)


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=0.1,
        warmup_steps=0,
        logging_steps=2,
        save_steps=4,
        seed=3,
        report_to="jsonl",
        weight_decay=0.0,
        lr_scheduler_type="constant",
    )
    defaults.update(overrides)
    return PretrainingArguments(**defaults)


def run(args, model=None, **kwargs):
    torch.manual_seed(0)
    model = model or ToyModel()
    accelerator = make_accelerator(args)
    result = train(model, toy_loader(), args, accelerator=accelerator, sampling_rate=SAMPLING_RATE, **kwargs)
    return accelerator.unwrap_model(model), result


def test_loop_learns_logs_and_checkpoints(tmp_path):
    args = make_args(tmp_path, max_steps=30, save_steps=10, save_total_limit=2)
    model, result = run(args)
    assert result.global_step == 30
    assert result.last_metrics["loss"] < 0.1 * result.first_metrics["loss"]
    records = read_metrics(tmp_path / "run" / "logs")
    assert [r["step"] for r in records] == list(range(2, 31, 2))
    assert {"loss", "mse", "lr", "audio_seconds_per_second", "audio_hours_seen"} <= set(records[0])
    # 30 updates x 4 clips x 0.5 s of audio
    assert result.audio_seconds == pytest.approx(30 * 4 * 50 / SAMPLING_RATE)
    assert [p.name for p in list_checkpoints(args.output_dir)] == ["checkpoint-20", "checkpoint-30"]
    saved = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert saved["global_step"] == 30


class Interrupt(Exception):
    pass


def test_a_run_resumes_from_a_checkpoint_of_an_epochs_last_batch(tmp_path):
    # 6 batches per epoch: checkpoint-6 holds batches_in_epoch=6, so skipping them leaves nothing of epoch 0; the
    # loop raised "the training data yielded no batch" instead of starting epoch 1
    reference, _ = run(make_args(tmp_path / "a", max_steps=10, save_steps=6))

    def crash_at_8(model, update):
        if update == 8:
            raise Interrupt

    args = make_args(tmp_path / "b", max_steps=10, save_steps=6)
    with pytest.raises(Interrupt):
        run(args, step_callbacks=[crash_at_8])
    assert find_last_checkpoint(args.output_dir).name == "checkpoint-6"
    resumed, result = run(args)
    assert result.resumed_from.endswith("checkpoint-6") and result.global_step == 10
    for p, q in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    reference, _ = run(make_args(tmp_path / "a", max_steps=10))

    def crash_at(step):
        def callback(model, update):
            if update == step:
                raise Interrupt

        return callback

    args = make_args(tmp_path / "b", max_steps=10)
    with pytest.raises(Interrupt):
        run(args, step_callbacks=[crash_at(6)])  # dies after checkpoint-4, in epoch 1 (6 batches per epoch)
    assert find_last_checkpoint(args.output_dir).name == "checkpoint-4"
    # a checkpoint half-written when the run died must be ignored and removed
    (tmp_path / "b" / "run" / ".tmp-checkpoint-8").mkdir()
    resumed, result = run(args)
    assert result.resumed_from.endswith("checkpoint-4")
    assert result.global_step == 10
    assert not (tmp_path / "b" / "run" / ".tmp-checkpoint-8").exists()
    for p, q in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_false_starts_over(tmp_path):
    run(make_args(tmp_path, max_steps=4))
    _, result = run(make_args(tmp_path, max_steps=4, resume=False))
    assert result.resumed_from is None and result.global_step == 4


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path):
    args = make_args(tmp_path, max_consecutive_nonfinite=3)
    model = ToyModel(poison=True)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="consecutive updates"):
        run(args, model=model)
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q), "a NaN update must not touch the weights"


def test_loss_normalizer_divides_summed_loss(tmp_path):
    seen = []

    class SumModel(ToyModel):
        def forward(self, **batch):
            out = super().forward(**batch)
            out.loss = out.loss * batch["input_values"].shape[0]  # a summed loss
            return out

    def normalizer(batch, outputs):
        seen.append(batch["input_values"].shape[0])
        return torch.tensor(float(batch["input_values"].shape[0]))

    torch.manual_seed(0)  # the weights, whatever earlier tests left in the global generator
    _, result = run(make_args(tmp_path, max_steps=20), model=SumModel(), loss_normalizer=normalizer)
    assert len(seen) == 20
    assert result.last_metrics["mse"] < 0.1 * result.first_metrics["mse"]


def test_batch_transform_gets_reproducible_generator(tmp_path):
    draws = []

    def transform(batch, generator):
        draws.append(torch.rand((), generator=generator).item())
        return batch

    run(make_args(tmp_path / "a", max_steps=3), batch_transform=transform)
    first = list(draws)
    draws.clear()
    run(make_args(tmp_path / "b", max_steps=3), batch_transform=transform)
    assert draws == first and len(set(first)) == 3


def test_atomic_write_and_save_pretrained(tmp_path):
    atomic_write_text(tmp_path / "x.json", "{}")
    assert (tmp_path / "x.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    class Savable:
        def save_pretrained(self, path):
            (path / "config.json").write_text("{}")
            (path / "model.safetensors").write_text("w")

    (tmp_path / "out" / "checkpoint-1").mkdir(parents=True)
    names = save_pretrained_atomic(tmp_path / "out", Savable())
    assert names == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-1", "config.json", "model.safetensors"]


def test_push_folder_to_hub_uploads_without_checkpoints(tmp_path):
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs

            class Info:
                commit_url = "https://huggingface.co/user/m/commit/1"

            return Info()

    url = push_folder_to_hub(tmp_path, "user/m", private=True, api=FakeApi())
    assert url.endswith("/commit/1")
    assert calls["create"] == ("user/m", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls["upload"]["ignore_patterns"]


def test_eval_fn_is_called_periodically_and_at_the_end(tmp_path):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        model.eval()
        return {"eval_score": float(len(calls))}

    _, result = run(make_args(tmp_path, max_steps=6, eval_steps=2), eval_fn=eval_fn)
    assert len(calls) == 3  # after updates 2 and 4, then at the end (6)
    assert result.eval_metrics == {"eval_score": 3.0}
    logged = [r for r in read_metrics(tmp_path / "run" / "logs") if "eval_score" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]


class BatchNormToy(ToyModel):
    """ToyModel with a BatchNorm on the clip means (running statistics updated in every training forward)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(1)

    def forward(self, input_values, attention_mask, targets):
        mean = (input_values * attention_mask).sum(-1, keepdim=True) / attention_mask.sum(-1, keepdim=True)
        predictions = self.linear(self.norm(mean)).squeeze(-1)
        loss = torch.nn.functional.mse_loss(predictions, targets)
        return ToyOutput(loss=loss, mse=loss.detach(), predictions=predictions)


def test_a_nan_batch_leaves_normalisation_statistics_and_checkpoint_finite(tmp_path):
    from safetensors.torch import load_file

    loader = toy_loader()
    collate, calls = loader.collate_fn, [0]

    def collate_with_nan(items):  # the third batch holds a clip of NaN samples
        calls[0] += 1
        batch = collate(items)
        if calls[0] == 3:
            batch["input_values"][0] = float("nan")
        return batch

    loader.collate_fn = collate_with_nan
    args = make_args(tmp_path, max_steps=4, save_steps=4)
    torch.manual_seed(0)
    model = BatchNormToy()
    result = train(model, loader, args, accelerator=make_accelerator(args), sampling_rate=SAMPLING_RATE)
    assert result.nonfinite_updates == 1
    assert int(model.norm.num_batches_tracked) == 3  # the skipped update's forward pass is not counted
    for name, buffer in model.named_buffers():
        assert torch.isfinite(buffer.float()).all(), name
    saved = load_file(find_last_checkpoint(args.output_dir) / "model.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in saved.values())


def test_evaluation_is_deterministic_and_leaves_the_training_stream_alone(tmp_path):
    import numpy as np

    from hf_speech_cl.training import evaluate

    class NoisyToy(ToyModel):
        """A loss with draws from torch's and NumPy's global generators (like HuBERT's masks)."""

        def forward(self, **batch):
            out = super().forward(**batch)
            out.loss = out.loss + torch.rand(()) + float(np.random.rand())
            return out

    args = make_args(tmp_path)
    accelerator = make_accelerator(args)
    model = NoisyToy()
    torch.manual_seed(5)
    np.random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    first = evaluate(model, toy_loader(), accelerator, seed=args.seed)
    second = evaluate(model, toy_loader(), accelerator, seed=args.seed)
    assert first == second and first["eval_loss"] > 0
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all()


def test_resume_refuses_checkpoints_of_another_model(tmp_path):
    class OtherModel(ToyModel):
        pass

    run(make_args(tmp_path, max_steps=4, save_steps=4))
    with pytest.raises(ValueError, match="checkpoints of a ToyModel run.*trains a OtherModel"):
        run(make_args(tmp_path, max_steps=8, save_steps=4), model=OtherModel())


def test_resume_refuses_checkpoints_of_another_size_of_the_same_model(tmp_path):
    # Same class, other shape (e.g. a run started without --model_size on a CUDA host, resumed on a CPU one): the
    # parameter count names the mismatch before accelerate's load_state fails on the first tensor.
    class WideModel(ToyModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(4, 4)

    run(make_args(tmp_path, max_steps=4, save_steps=4), model=WideModel())
    wide = WideModel()
    wide.extra = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match="model with 22 parameters.*one with 74.*--model_size"):
        run(make_args(tmp_path, max_steps=8, save_steps=4), model=wide)
