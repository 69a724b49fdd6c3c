"""Check that torch, torchaudio and torchcodec are builds that load together, before anything uses them.

torchaudio and torchcodec ship C++ extensions linked against one torch build. A mismatched pair does not fail at
install time (pip sees no conflict: torchaudio 2.11.1 declares `torch>=2.11`, torchcodec declares no torch at all)
but at `import torchaudio`, with a linker message such as ``libtorchaudio.so: undefined symbol:
torch_exception_get_what_without_backtrace`` — and since `transformers` imports torchaudio whenever it is installed,
even ``from transformers import Wav2Vec2FeatureExtractor`` dies with it. `import hf_speech_cl` runs
:func:`check_torch_stack` first and turns such a failure into an `ImportError` that names the installed versions, the
pairs known to work and the command that fixes it.

``check_torch_stack(raise_on_error=False)`` returns the problems as lines instead of raising.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

# Measured on Debian 12 / CPython 3.11 x86_64 (docs/ENVIRONMENT.md; benchmarks/newest_torch.py re-measures the
# newest end). Each row: torch release lines -> the torchaudio and torchcodec versions that load against them.
KNOWN_GOOD = (
    {"torch": ("2.11",), "torchaudio": "2.11.0", "torchcodec": "0.11.*"},
    {"torch": ("2.12", "2.13", "2.14"), "torchaudio": "2.11.1", "torchcodec": "0.17.*"},
)
# Known NOT to work: torch 2.11.x with torchaudio 2.11.1 (undefined symbol at import).


class TorchStackError(ImportError):
    """torchaudio or torchcodec cannot load against the installed torch; the message says how to fix it."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_line(version: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def fix_command(torch_version: str | None) -> str:
    """The one `pip install` line that gives a loading torchaudio + torchcodec for `torch_version`."""
    line = _torch_line(torch_version or "")
    for row in KNOWN_GOOD:
        if line in row["torch"]:
            return f'pip install "torchaudio=={row["torchaudio"]}" "torchcodec=={row["torchcodec"]}"'
    row = KNOWN_GOOD[0]
    return (
        f'pip install "torch=={row["torch"][0]}.0" "torchaudio=={row["torchaudio"]}" '
        f'"torchcodec=={row["torchcodec"]}"  (or, in a checkout: bash scripts/setup.sh, which installs the lock)'
    )


def _known_good_text() -> str:
    return "\n".join(
        f"  torch {', '.join(r['torch'])}.x  +  torchaudio {r['torchaudio']}  +  torchcodec {r['torchcodec']}"
        for r in KNOWN_GOOD
    )


def _diagnose(module: str, error: BaseException) -> str:
    text = str(error)
    if "undefined symbol" in text or "libc10" in text or "libtorch_" in text:
        return f"{module} was built against a different torch than the one installed"
    if "libavutil" in text or "libavcodec" in text or "FFmpeg" in text:
        return "FFmpeg's shared libraries are missing or unusable (Debian: apt-get install ffmpeg)"
    return f"{module} failed to load"


def check_torch_stack(raise_on_error: bool = True) -> list[str]:
    """Import torchaudio and torchcodec and report any that cannot load against the installed torch.

    Returns:
        A list of problems, one line each (empty when everything loads).

    Raises:
        TorchStackError: when `raise_on_error` and a problem was found. The message lists the installed versions of
            torch, torchaudio and torchcodec, the combinations known to work and the `pip install` line that fixes
            the installed torch (or `bash scripts/setup.sh` in a checkout, which installs the committed lock).
    """
    versions = {d: _version(d) for d in ("torch", "torchaudio", "torchcodec")}
    problems: list[tuple[str, BaseException]] = []
    for module in ("torch", "torchaudio", "torchcodec"):
        if versions[module] is None:
            if module == "torch":
                problems.append((module, ImportError("torch is not installed")))
            continue  # torchaudio / torchcodec missing: whoever needs them says so
        try:
            importlib.import_module(module)
        except (ImportError, OSError, RuntimeError) as err:  # linker errors surface as any of these
            problems.append((module, err))
            if module == "torch":
                break
    if not problems:
        return []
    lines = [f"{m}: {_diagnose(m, e)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}" for m, e in problems]
    if raise_on_error:
        installed = ", ".join(f"{d} {v or 'not installed'}" for d, v in versions.items())
        raise TorchStackError(
            "hf_speech_cl cannot use this torch stack.\n"
            + "\n".join(lines)
            + f"\nInstalled: {installed}.\nCombinations known to work:\n{_known_good_text()}\n"
            + "(torch 2.11.x with torchaudio 2.11.1 does NOT work.)\n"
            + f"Fix: {fix_command(versions['torch'])}"
        ) from problems[0][1]
    return lines
