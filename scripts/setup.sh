#!/usr/bin/env bash
# One idempotent set-up step: Debian packages (ffmpeg for torchcodec, the TTS engines, sox, text
# sources), a virtualenv in .venv, and this package installed into it (editable).
# Run twice, the second run only checks and returns.
#   bash scripts/setup.sh          # everything, from requirements/lock.txt
#   bash scripts/setup.sh --dev    # the same (kept for the README's test command and old habits)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ffmpeg                      # torchcodec decodes audio for `datasets` through FFmpeg's libraries
  espeak-ng flite festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts  # TTS
  sox                         # audio conversion for the TTS engines
  fortune-mod fortunes fortunes-min  # sentence source
  wamerican                   # word list (keyword-spotting "unknown" words)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtualenv .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# Every Python dependency comes from the committed lock (requirements/lock.txt, made by
# scripts/lock.sh): a range on the torch stack is not a pin, since a newer torchaudio can appear that
# the locked torch cannot load. The lock includes the dev tools (pytest, ruff), so --dev and the plain
# run install the same environment; the package itself goes in editable, without resolving anything.
stamp=".venv/.hf_speech_cl-installed"
want="$(cat pyproject.toml requirements/lock.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the locked environment into .venv (first time: a few minutes, torch is large)"
  .venv/bin/python -m pip install -q -r requirements/lock.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import hf_speech_cl, torch, torchaudio, transformers; print("torch", torch.__version__, "torchaudio", torchaudio.__version__, "transformers", transformers.__version__)')"
