"""The installed stack: the lock is what got installed, the torch stack loads and decodes, a broken one is a clear
error. `benchmarks/newest_torch.py` runs this file (minus the lock-pin check) on the newest allowed torch."""

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_installed_versions_are_the_lock():
    """scripts/setup.sh installs requirements/lock.txt exactly: a range that drifted (torchaudio 2.11.1 under torch
    2.11.0) or a package resolved outside the lock shows up here."""
    pins = dict(
        line.split("==", 1) for line in (REPO_ROOT / "requirements/lock.txt").read_text().splitlines() if "==" in line
    )
    assert {"torch", "torchaudio", "torchcodec", "transformers", "datasets", "accelerate"} <= set(pins)
    wrong = {}
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(_canonical(name))
        except importlib.metadata.PackageNotFoundError:
            installed = None
        # local build tags (2.11.0+cu130, 0.11.1+cpu) belong to the same release
        if installed is None or installed.split("+")[0] != version.strip():
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements/lock.txt (pin, installed): {wrong}"


def test_torch_stack_loads_and_datasets_decodes(tmp_path):
    import datasets
    import torch
    import torchaudio
    import torchcodec  # noqa: F401
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.audio_utils import mel_filter_bank

    from hf_speech_cl.stack import check_torch_stack

    assert check_torch_stack(raise_on_error=False) == []
    rate = 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, rate)
    ds = datasets.Dataset.from_dict({"audio": [str(tmp_path / "tone.wav")]}).cast_column("audio", datasets.Audio())
    decoded = ds[0]["audio"]
    assert decoded["sampling_rate"] == rate
    np.testing.assert_allclose(np.asarray(decoded["array"]), tone, atol=1e-4)  # 16-bit PCM round trip
    # resampling on decode (torchcodec/FFmpeg): the same 440 Hz tone at twice the samples, as torchaudio makes it
    resampled = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))[0]["audio"]
    assert resampled["sampling_rate"] == 16000 and abs(len(resampled["array"]) - 2 * rate) <= 2
    reference = torchaudio.functional.resample(torch.from_numpy(tone), rate, 16000).numpy()
    for signal in (np.asarray(resampled["array"]), reference):
        spectrum = np.abs(np.fft.rfft(signal[1000:15000]))
        assert np.argmax(spectrum) * 16000 / 14000 == pytest.approx(440, abs=2)
        assert np.sqrt(np.mean(signal[1000:15000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    features = Wav2Vec2FeatureExtractor()(np.asarray(resampled["array"]), sampling_rate=16000)["input_values"][0]
    assert abs(float(np.mean(features))) < 1e-3 and abs(float(np.std(features)) - 1) < 1e-2
    assert mel_filter_bank(201, 23, 20.0, 8000.0, 16000).shape == (201, 23)


def _import_with_broken(module: str, error: str, tmp_path: Path, code: str = "import hf_speech_cl") -> str:
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise OSError({error!r})\n")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.returncode != 0
    return proc.stderr


def test_mismatched_torchaudio_is_a_clear_error(tmp_path):
    """What torch 2.11.0 + torchaudio 2.11.1 does at import, reproduced by a torchaudio that fails the same way."""
    stderr = _import_with_broken(
        "torchaudio", "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace", tmp_path
    )
    import torch

    assert "TorchStackError: hf_speech_cl cannot use this torch stack" in stderr
    assert "torchaudio was built against a different torch than the one installed" in stderr
    assert f"torch {importlib.metadata.version('torch')}" in stderr  # the installed versions are named
    assert "torch 2.11.x with torchaudio 2.11.1 does NOT work" in stderr
    line = torch.__version__.split("+")[0].rsplit(".", 1)[0]
    if line == "2.11":
        assert 'Fix: pip install "torchaudio==2.11.0" "torchcodec==0.11.*"' in stderr
    else:
        assert "Fix: pip install" in stderr


def test_recipe_reports_a_broken_torchcodec_before_transformers(tmp_path):
    stderr = _import_with_broken(
        "torchcodec",
        "Could not load libtorchcodec. libavutil.so.59: cannot open shared object file",
        tmp_path,
        code=textwrap.dedent(
            """
            import runpy, sys
            sys.argv = ["pretrain_simclr.py", "--help"]
            runpy.run_path("recipes/pretrain_simclr.py", run_name="__main__")
            """
        ),
    )
    assert "torchcodec: FFmpeg's shared libraries are missing or unusable (Debian: apt-get install ffmpeg)" in stderr
    assert "Combinations known to work" in stderr


@pytest.mark.parametrize(
    "torch_version, expected",
    [
        ("2.11.0+cu130", 'pip install "torchaudio==2.11.0" "torchcodec==0.11.*"'),
        ("2.14.1", 'pip install "torchaudio==2.11.1" "torchcodec==0.17.*"'),
        ("2.9.1", 'pip install "torch==2.11.0" "torchaudio==2.11.0"'),
    ],
)
def test_fix_command_per_torch_line(torch_version, expected):
    from hf_speech_cl.stack import fix_command

    assert fix_command(torch_version).startswith(expected)
