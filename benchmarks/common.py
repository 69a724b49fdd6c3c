"""Helpers shared by the benchmark scripts: a description of the hardware, and atomic result writing.

Every benchmark records `hardware_info()` in its JSON so numbers can be compared only where the machine is the same,
and writes its results with `write_results(name, payload, markdown)` to `benchmarks/results/{name}.json` and `.md`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "atomic_write_text",
    "hardware_info",
    "load_recipe",
    "load_results",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    """Total system memory in GiB from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _package_version(name: str) -> str | None:
    """Installed version of distribution `name`, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def hardware_info() -> dict[str, Any]:
    """Describe the machine a benchmark runs on.

    Returns:
        A JSON-serializable dict: `cpu_model`, `cpu_count` (logical CPUs usable by this process),
        `torch_threads` (`torch.get_num_threads()`), `memory_gib`, `platform`, `python`, versions of `torch`,
        `transformers`, `datasets`, `faiss-cpu`, `scikit-learn`, `hf_speech_cl`; `load_average` (1, 5, 15 min, at
        the time of the call: the machine may be shared); and when CUDA is available
        `gpu_name`, `gpu_count`, `gpu_memory_gib`, `cuda_version` (else `gpu_name` is None).
    """
    import torch

    try:
        cpu_count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpu_count = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": cpu_count,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "datasets": _package_version("datasets"),
        "faiss-cpu": _package_version("faiss-cpu"),
        "scikit-learn": _package_version("scikit-learn"),
        "hf_speech_cl": _package_version("hf_speech_cl"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu_name": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_name=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 1024**3, 1),
            cuda_version=torch.version.cuda,
        )
    return info


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`, so a reader never
    sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(name: str, payload: dict[str, Any], markdown: str, *, results_dir: Path | None = None) -> None:
    """Write `payload` to `{results_dir}/{name}.json` and `markdown` to `{results_dir}/{name}.md`, atomically.

    Args:
        name: file stem, e.g. `"kmeans"`.
        payload: JSON-serializable results; a `hardware` key holding `hardware_info()` is added if absent.
        markdown: the human-readable report (tables), written as is.
        results_dir: defaults to `benchmarks/results/` beside this file.
    """
    out = Path(results_dir) if results_dir is not None else RESULTS_DIR
    payload = dict(payload)
    payload.setdefault("hardware", hardware_info())
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    atomic_write_text(out / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")


def load_results(name: str, *, results_dir: Path | None = None) -> dict[str, Any] | None:
    """The payload previously written by `write_results(name, ...)`, or None when there is none (or it is
    unreadable). Benchmarks use it to skip finished sub-runs when rerun."""
    path = (Path(results_dir) if results_dir is not None else RESULTS_DIR) / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


@functools.cache
def load_recipe(name: str) -> Any:
    """Import `recipes/{name}.py` (e.g. `"pretrain_hubert"`) as a module, once: the recipes are scripts, not a
    package, and benchmarks call their `main(argv)` and helpers rather than copying them."""
    module_name = f"recipes_{name}"
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "recipes" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"No recipe {name!r} in {REPO_ROOT / 'recipes'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
