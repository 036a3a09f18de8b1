#!/usr/bin/env bash
# The preflight on a GPU machine without a package index: installs the carried wheels, then
# runs `pgopd preflight` (pgopd/preflight.py says what runs and how it is measured):
#
#   OUT=<dir> bash scripts/gpu_smoke.sh --configfile config/paper.yaml     # one GPU, ~5 min
#   bash scripts/gpu_smoke.sh --configfile config/paper.yaml --dry          # the budget only
#   bash scripts/gpu_smoke.sh --configfile config/paper.yaml --tiny --out /tmp/pf   # CPU variant
#
# The GPU machine has python3 with CUDA torch, transformers and triton, and no package index:
# everything else comes from the wheels that scripts/build_gpu_wheels.sh puts in gpu_wheels/
# (or $GPU_WHEELS), installed with pip --no-index into a private folder on PYTHONPATH (nothing
# is installed into the system's Python).  Without that folder the packages already
# importable are used.  Environment: OUT (output dir), PYTHON (default python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-$ROOT/gpu_wheels}"
OUT_DIR="${OUT:-$ROOT/preflight_out}"
mkdir -p "$OUT_DIR"

if [ -f "$WHEELS/requirements.txt" ]; then
  SITE="${GPU_SITE:-${TMPDIR:-/tmp}/pgopd_preflight_site}"
  mkdir -p "$SITE"
  SITE="$(cd "$SITE" && pwd)"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    # names, not files: pip picks the wheel of this Python among those carried (cp310-cp313)
    "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
      --find-links "$WHEELS" --target "$SITE" -r "$WHEELS/requirements.txt"
  else  # no pip: a wheel is a zip laid out for site-packages
    "$PY" - "$WHEELS" "$SITE" <<'PYEOF'
import sys, sysconfig, zipfile
from pathlib import Path
wheels, site = Path(sys.argv[1]), sys.argv[2]
cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
for w in sorted(wheels.glob("*.whl")):
    tags = w.name[:-4].split("-")[-3:]          # python tag, abi tag, platform tag
    py, abi, plat = tags
    ok = (plat == "any") or ("x86_64" in plat and (cp in py.split(".") or (abi == "abi3" and
          int(py.split(".")[0][3:] or 0) <= sys.version_info.minor)))
    if ok:
        zipfile.ZipFile(w).extractall(site)
PYEOF
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "preflight: no $WHEELS/requirements.txt; using the packages already importable" >&2
fi

# DeepSpeed: the CUDA accelerator when there is a GPU (the carried wheel was built on a CPU host)
DS_ACCELERATOR="${DS_ACCELERATOR:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
export DS_ACCELERATOR HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# the checkout's pgopd when no wheel installed one
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"
exec "$PY" -m pgopd.cli preflight --out "$OUT_DIR" "$@"
