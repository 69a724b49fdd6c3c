"""The other end of the torch-stack range: a throwaway venv with the NEWEST torch/torchaudio pair that
`pyproject.toml` allows, and the test suite's fast subset run in it.

The committed lock (requirements/lock.txt) pins the oldest end, torch 2.11.0 + torchaudio 2.11.0, which is what the
lent GPU machines ship. People who `pip install hf_speech_cl` into their own environment get whatever their torch
is, anywhere in the ranges pyproject states; this script is the proof that the top of those ranges works too.

Steps (each printed, with its wall time):
1. a fresh venv (default: a temporary folder; `--venv PATH` keeps and reuses it);
2. every locked package except the torch stack (torch, torchaudio, torchcodec, triton, nvidia-*);
3. `pip install --upgrade` of torch and torchaudio within pyproject's ranges, so pip itself picks the newest pair this
   machine's index and pip configuration allow (here: torch <= 2.14.1 by the machine's pip cap);
4. the newest torchcodec in range that imports and decodes against that torch (tried newest first);
5. `import hf_speech_cl` (the torch-stack check) and `pytest -m "not slow"` with the lock-pin test deselected.

Results go to `benchmarks/results/newest_torch.json`. Not part of CI: it installs several GB and takes ~10 minutes.

    python benchmarks/newest_torch.py              # throwaway venv
    python benchmarks/newest_torch.py --venv /tmp/newest-venv --pytest-args "-x tests/test_simclr_model.py"
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import atomic_write_text, hardware_info  # noqa: E402

STACK = re.compile(r"^(torch|torchaudio|torchcodec|triton|nvidia-[\w-]+|cuda-[\w-]+)==", re.IGNORECASE)


def run(cmd: list[str], log: list[dict], **kwargs) -> subprocess.CompletedProcess:
    print(f"[newest_torch] $ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    wall = time.perf_counter() - start
    log.append({"cmd": " ".join(cmd), "rc": proc.returncode, "wall_s": round(wall, 1)})
    print(f"[newest_torch]   rc {proc.returncode} in {wall:.0f} s", flush=True)
    return proc


def pyproject_range(name: str) -> str:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        if re.match(rf"^{name}\s*[<>=!~]", dep):
            return dep
    raise SystemExit(f"pyproject.toml states no range for {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, help="venv folder to create or reuse (default: a temporary folder)")
    parser.add_argument(
        "--pytest-args",
        default='-m "not slow" --deselect tests/test_environment.py::test_installed_versions_are_the_lock',
        help="what pytest runs in the new venv (default: the fast subset, without the lock-pin check)",
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks/results/newest_torch.json")
    args = parser.parse_args(argv)

    tmp = None
    if args.venv is None:
        tmp = tempfile.TemporaryDirectory(prefix="hf_speech_cl-newest-torch-")
        args.venv = Path(tmp.name) / "venv"
    py = str(args.venv / "bin/python")
    log: list[dict] = []
    started = time.perf_counter()
    if not Path(py).exists():
        run([sys.executable, "-m", "venv", str(args.venv)], log, check=True)

    locked = [
        ln for ln in (REPO_ROOT / "requirements/lock.txt").read_text().splitlines() if re.match(r"^[\w.-]+==", ln)
    ]
    rest = [ln for ln in locked if not STACK.match(ln)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(rest) + "\n")
    if run([py, "-m", "pip", "install", "-q", "-r", f.name], log).returncode:
        raise SystemExit("installing the locked non-torch packages failed")

    torch_req, audio_req = pyproject_range("torch"), pyproject_range("torchaudio")
    proc = run([py, "-m", "pip", "install", "-q", "--upgrade", torch_req, audio_req], log)
    if proc.returncode:
        raise SystemExit(f"pip could not install {torch_req} {audio_req}:\n{proc.stderr[-3000:]}")

    versions = json.loads(
        run(
            [
                py,
                "-c",
                "import json, importlib.metadata as m; print(json.dumps({d: m.version(d) for d in "
                "('torch', 'torchaudio')}))",
            ],
            log,
        ).stdout
    )
    # torchcodec: newest first, the first whose library loads and decodes a clip against this torch
    codec_range = pyproject_range("torchcodec")
    index = run([py, "-m", "pip", "index", "versions", "torchcodec"], log).stdout
    available = re.search(r"Available versions: (.*)", index)
    candidates = [v.strip() for v in available.group(1).split(",")] if available else []
    spec_check = (
        "import sys; from packaging.specifiers import SpecifierSet; "
        f"print(' '.join(v for v in sys.argv[1:] if v in SpecifierSet({codec_range[len('torchcodec') :]!r})))"
    )
    candidates = run([py, "-c", spec_check, *candidates], log).stdout.split()
    decode = (
        "import numpy as np, soundfile as sf, tempfile, os\n"
        "from torchcodec.decoders import AudioDecoder\n"
        "p = os.path.join(tempfile.mkdtemp(), 'a.wav'); sf.write(p, np.zeros(1600, dtype='float32'), 16000)\n"
        "assert AudioDecoder(p).get_all_samples().data.shape[-1] == 1600\n"
    )
    tried = {}
    for version in candidates:
        if run([py, "-m", "pip", "install", "-q", f"torchcodec=={version}"], log).returncode:
            tried[version] = "install failed"
            continue
        proc = run([py, "-c", decode], log)
        tried[version] = "ok" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        if proc.returncode == 0:
            versions["torchcodec"] = version
            break
    else:
        versions["torchcodec"] = None

    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO_ROOT)], log, check=True)
    stack = run([py, "-c", "import hf_speech_cl, transformers; print(transformers.__version__)"], log, cwd=REPO_ROOT)
    pytest = run(
        ["bash", "-c", f"HF_HUB_OFFLINE=1 {py} -m pytest -q -p no:cacheprovider {args.pytest_args}"],
        log,
        cwd=REPO_ROOT,
    )
    summary = (pytest.stdout.strip().splitlines() or [""])[-1]
    failures = [ln for ln in pytest.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    result = {
        "versions": versions,
        "torchcodec_tried": tried,
        "import_hf_speech_cl": stack.returncode == 0 and "ok" or stack.stderr[-2000:],
        "transformers": stack.stdout.strip(),
        "pytest_args": args.pytest_args,
        "pytest_rc": pytest.returncode,
        "pytest_summary": summary,
        "failures": failures,
        "wall_s": round(time.perf_counter() - started, 1),
        "steps": log,
        "hardware": hardware_info(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(
        f"[newest_torch] torch {versions['torch']} + torchaudio {versions['torchaudio']} + torchcodec "
        f"{versions['torchcodec']}: import {'ok' if stack.returncode == 0 else 'FAILED'}; pytest: {summary}"
    )
    for line in failures:
        print(f"[newest_torch]   {line}")
    if pytest.returncode:
        print(pytest.stdout[-6000:])
    if tmp is not None:
        tmp.cleanup()
    return pytest.returncode or stack.returncode


if __name__ == "__main__":
    sys.exit(main())
