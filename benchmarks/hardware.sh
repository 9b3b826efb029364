#!/usr/bin/env bash
# The accelerator benchmark, one command: our on-policy GKD step on the bench pair and on a
# Qwen2.5-0.5B <- 1.5B-shaped pair (random weights), then TRL's GKDTrainer on the same pairs where
# torch + CUDA + trl are importable (else one {"impl": "trl", "skipped": ...} line). JSON lines on
# stdout, also appended to $OUT/hardware.jsonl (stderr to $OUT/hardware.log) when OUT is set.
#
#   bash benchmarks/hardware.sh [--quick] [hardware_step.py flags]
#
# Carried wheels (.whl/*.whl: ml_collections, trl, datasets, ...; see hardware_step.py's
# docstring) are installed into /tmp/site first. Env: PY (python3), BENCH (the TRL runners' dir).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$ROOT"/.whl/*.whl >&2 || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

jsonl=/dev/null
log=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  jsonl=$OUT/hardware.jsonl
  log=$OUT/hardware.log
fi
# Two processes: JAX holds most of the GPU's memory until its process ends.
for impl in ours trl; do
  "$PY" "$HERE/hardware_step.py" --impl "$impl" "$@" 2> >(tee -a "$log" >&2) | tee -a "$jsonl"
done
