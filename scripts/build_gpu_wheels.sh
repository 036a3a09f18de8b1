#!/usr/bin/env bash
# Build gpu_wheels/ (or $1): the wheels scripts/gpu_smoke.sh installs for `pgopd preflight` on the GPU machine, which
# has python3 + CUDA torch + transformers + triton and no package index.  Carried: pgopd and
# what the train path imports beyond those (DeepSpeed and its import-time deps, tensorboard's
# SummaryWriter, math-verify for grading, PyYAML), at the versions of this environment.
#   pure Python:  pip wheel --no-deps (DeepSpeed builds from its sdist, no ops compiled);
#   compiled:     pip download of the manylinux wheels for CPython 3.10-3.13 (the GPU
#                 machine's Python version is not known here; pip there picks its own).
# The folder must stay under 64 MiB (what a device run may carry); the script checks.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DEST="${1:-$ROOT/gpu_wheels}"
PY="${PYTHON:-python}"
PURE="deepspeed hjson py-cpuinfo einops tabulate pydantic annotated-types typing-inspection
      tensorboard absl-py math-verify latex2sympy2_extended antlr4-python3-runtime"
BINARY="pydantic_core msgpack psutil protobuf PyYAML"
PYVERS="3.10 3.11 3.12 3.13"

rm -rf "$DEST"
mkdir -p "$DEST"
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pins=()
for name in $PURE; do
  v="$(version "$name")"
  pins+=("$name==$v")
  # --no-build-isolation: DeepSpeed's setup.py imports torch; use this environment's
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" "$name==$v"
done
for name in $BINARY; do
  v="$(version "$name")"
  pins+=("$name==$v")
  for pv in $PYVERS; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$pv" \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$DEST" "$name==$v" || echo "build_gpu_wheels: no $name==$v wheel for CPython $pv" >&2
  done
done
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" "$ROOT"
rm -rf "$ROOT/build"  # setuptools' build dir of the pgopd wheel
pins+=("pgopd==$("$PY" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$ROOT/pyproject.toml")")
printf '%s\n' "${pins[@]}" > "$DEST/requirements.txt"
size=$(du -sb "$DEST" | cut -f1)
echo "build_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((size / 1048576)) MiB in $DEST"
if [ "$size" -gt $((64 * 1048576)) ]; then
  echo "build_gpu_wheels: over the 64 MiB a device run may carry" >&2
  exit 1
fi
