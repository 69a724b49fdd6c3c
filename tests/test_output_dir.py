"""`--output_dir` safety: a foreign non-empty folder is refused unless `--overwrite_output_dir`; our own run folders
are resumed without a flag; files are written with the usual permissions (`0o666 & ~umask`)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from hf_speech_cl.training import PretrainingArguments, checkpointing, make_accelerator, make_partial_state
from hf_speech_cl.training.checkpointing import RUN_MARKER, atomic_write_text, check_output_dir, is_our_run
from hf_speech_cl.training.export import save_pretrained_atomic

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {"train_hours": 0.02, "eval_hours": 0.005, "train_speakers": 4, "eval_speakers": 2}
FOREIGN = {"config.json": b'{"model_type": "bert"}\n', "README.md": b"# somebody else's model\n"}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def foreign_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, data in FOREIGN.items():
        (path / name).write_bytes(data)
    return path


def assert_untouched(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == sorted(FOREIGN)
    for name, data in FOREIGN.items():
        assert (path / name).read_bytes() == data, name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the check --------------------------------------------------------------------------------------------------------


def test_a_foreign_folder_is_refused_naming_its_files_and_the_flag(tmp_path):
    out = foreign_folder(tmp_path / "out")
    with pytest.raises(ValueError, match="--overwrite_output_dir") as error:
        check_output_dir(out, overwrite=False)
    assert "config.json" in str(error.value) and "README.md" in str(error.value) and str(out) in str(error.value)
    check_output_dir(out, overwrite=True)
    check_output_dir(tmp_path / "missing", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=False)
    assert_untouched(out)


@pytest.mark.parametrize(
    "ours",
    [
        RUN_MARKER,
        "checkpoint-3/trainer_state.json",
        ".tmp-checkpoint-2/model.safetensors",  # killed while writing its first checkpoint
        "logs/metrics.jsonl",
        "logs/hparams.json",
        "train_results.json",
        "iteration-1/iteration.json",  # pretrain_hubert.py: its first file, before features/labels/k-means
        "stage_complete.json",
    ],
)
def test_our_run_folders_are_recognised(tmp_path, ours):
    out = foreign_folder(tmp_path / "out")  # our runs write config.json and README.md too
    (out / ours).parent.mkdir(parents=True, exist_ok=True)
    (out / ours).write_text("{}")
    assert is_our_run(out)
    check_output_dir(out, overwrite=False)


@pytest.mark.parametrize("other", ["logs/other.txt", "iteration-1/notes.txt", "checkpoint-final/x", "checkpoints/x"])
def test_look_alikes_are_not_ours(tmp_path, other):
    out = tmp_path / "out"
    (out / other).parent.mkdir(parents=True)
    (out / other).write_text("x")
    assert not is_our_run(out)
    with pytest.raises(ValueError, match="not a run of hf_speech_cl"):
        check_output_dir(out, overwrite=False)


def test_make_accelerator_and_make_partial_state_refuse_before_writing(tmp_path):
    out = foreign_folder(tmp_path / "out")
    args = PretrainingArguments(output_dir=str(out), report_to="jsonl")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        make_accelerator(args)
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        make_partial_state(args)
    assert_untouched(out)  # no logs/, no marker
    make_partial_state()  # without args: no check (nothing to check)

    # a fresh folder is claimed at once: a run killed right after is recognised by its rerun
    fresh = tmp_path / "fresh"
    make_accelerator(PretrainingArguments(output_dir=str(fresh), report_to="none"))
    assert sorted(p.name for p in fresh.iterdir()) == [RUN_MARKER]
    make_accelerator(PretrainingArguments(output_dir=str(fresh), report_to="jsonl"))

    # with the flag the foreign folder is used (and from then on ours); its files stay until replaced
    make_accelerator(PretrainingArguments(output_dir=str(out), report_to="none", overwrite_output_dir=True))
    assert (out / RUN_MARKER).is_file() and (out / "config.json").read_bytes() == FOREIGN["config.json"]
    check_output_dir(out, overwrite=False)


# -- permissions ------------------------------------------------------------------------------------------------------


def test_atomic_write_text_follows_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "sub" / "a.json", "{}")
    assert mode(tmp_path / "sub" / "a.json") == 0o644
    assert mode(tmp_path / "sub") == 0o755
    os.umask(0o077)
    atomic_write_text(tmp_path / "b.json", "{}")
    assert mode(tmp_path / "b.json") == 0o600
    os.umask(0o002)
    atomic_write_text(tmp_path / "sub" / "a.json", "{}")  # replacing a file gives the new file's mode
    assert mode(tmp_path / "sub" / "a.json") == 0o664
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


def test_save_pretrained_atomic_gives_the_usual_modes(tmp_path, umask_022):
    from safetensors.torch import save_file

    class Savable:  # safetensors >= 0.8 writes 0o600 files (safetensors/safetensors#782)
        def save_pretrained(self, path):
            save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
            (path / "config.json").write_text("{}")
            (path / "sub").mkdir(mode=0o700)
            (path / "sub" / "x.bin").write_bytes(b"x")
            os.chmod(path / "sub" / "x.bin", 0o600)

    save_pretrained_atomic(tmp_path / "out", Savable())
    for path in (tmp_path / "out").rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


def test_umask_without_proc(monkeypatch, umask_022):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(checkpointing, "open", no_proc, raising=False)
    assert checkpointing.default_file_mode() == 0o644
    monkeypatch.undo()
    assert os.umask(0o022) == 0o022  # left as it was


# -- a real recipe run ------------------------------------------------------------------------------------------------


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def simclr_argv(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--save_steps", "2", "--logging_steps", "1",
        "--warmup_steps", "1", "--per_device_train_batch_size", "4", "--max_train_crop_s", "1.5",
        "--dataset_kwargs", json.dumps(CORPUS), "--eval_split", "none", *extra,
    ]  # fmt: skip


def test_simclr_recipe_refuses_a_foreign_folder_runs_with_the_flag_and_resumes_its_own(
    tmp_path, corpus_cache_dir, umask_022
):
    recipe = load_recipe("pretrain_simclr")
    out = foreign_folder(tmp_path / "out")
    with pytest.raises(ValueError, match="--overwrite_output_dir") as error:
        recipe.main(simclr_argv(out, 2))
    assert "config.json" in str(error.value) and "README.md" in str(error.value)
    assert_untouched(out)

    recipe.main(simclr_argv(out, 2, "--overwrite_output_dir"))
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 2
    assert json.loads((out / "config.json").read_text())["model_type"] == "simclr_audio"

    # every file the run wrote has mode 0o644, every folder 0o755 (umask 022); checkpoints: the test below
    for path in [out, *out.rglob("*")]:
        if not path.relative_to(out).parts[:1] or not path.relative_to(out).parts[0].startswith("checkpoint-"):
            assert mode(path) == (0o755 if path.is_dir() else 0o644), path
    for name in ("README.md", "train_results.json", "config.json", "model.safetensors", RUN_MARKER):
        assert (out / name).is_file(), name

    # a rerun into our own folder needs no flag, also one written before the marker existed: it resumes
    (out / RUN_MARKER).unlink()
    recipe.main(simclr_argv(out, 3))
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 3 and Path(results["resumed_from"]).name == "checkpoint-2"
    assert mode(out / "train_results.json") == mode(out / "README.md") == 0o644


def test_checkpoint_files_get_the_usual_modes(tmp_path, umask_022):
    from test_training_loop import make_args, run

    args = make_args(tmp_path, max_steps=2, save_steps=2, report_to="none")
    run(args)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    for path in [checkpoint, *checkpoint.rglob("*")]:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
