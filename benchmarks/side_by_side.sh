#!/usr/bin/env bash
# Ours and the three references (../shared/bench), back to back, alternating, ROUNDS times.
# Prints one JSON line per run: {"round", "clock", "threads", "load_1m", "cmd", "result": {...}}.
#
#   benchmarks/side_by_side.sh [ROUNDS=2] [CLOCK=wall|cpu] [THREADS=1|0] > sitting.jsonl
#
# CLOCK=cpu runs each script under benchmarks/cpu_clock.py (step times in process CPU seconds).
# THREADS=1: one thread per process (torch: OMP_NUM_THREADS=1; XLA: no Eigen thread pool), the
# steadier setting when other jobs share the CPUs; 0: each runtime's default.
# Env: MODELS (/tmp/bench-models), BENCH (../shared/bench), REF_PY (~/ref-venv/bin/python),
# EASYDEL_PY (~/easydel-venv/bin/python), PY (python), STEPS (4), ONLY (the runs, in order, from
# ours ours_chunked ours_full trl_distill trl_gkd easydel; ours: the default loss_impl, auto;
# ours_chunked / ours_full: --loss-impl chunked / full).
set -u
ROUNDS=${1:-2}
CLOCK=${2:-wall}
THREADS=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
MODELS=${MODELS:-/tmp/bench-models}
BENCH=${BENCH:-$HERE/../../shared/bench}
REF_PY=${REF_PY:-$HOME/ref-venv/bin/python}
EASYDEL_PY=${EASYDEL_PY:-$HOME/easydel-venv/bin/python}
PY=${PY:-python}
STEPS=${STEPS:-4}
ONLY=${ONLY:-"ours trl_distill trl_gkd easydel"}

wrap=""
[ "$CLOCK" = cpu ] && wrap="$HERE/cpu_clock.py"
env_threads=()
if [ "$THREADS" = 1 ]; then
  env_threads=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false")
fi

run() {  # name python script args...
  local name=$1 py=$2
  shift 2
  local load out
  load=$(cut -d' ' -f1 /proc/loadavg)
  out=$(env "${env_threads[@]}" JAX_PLATFORMS=cpu "$py" $wrap "$@" 2>/dev/null | grep '^{' | tail -n 1)
  [ -z "$out" ] && out='{"error": "no JSON line (see the command)"}'
  printf '{"round": %s, "impl": "%s", "clock": "%s", "threads": %s, "load_1m": %s, "cmd": "%s", "result": %s}\n' \
    "$r" "$name" "$CLOCK" "$THREADS" "$load" "$*" "$out"
}

for r in $(seq 1 "$ROUNDS"); do
  for impl in $ONLY; do
    case $impl in
      ours) run ours "$PY" "$HERE/gkd_step.py" --models "$MODELS" --lmbda 1.0 --steps "$STEPS" ;;
      ours_chunked) run ours_chunked "$PY" "$HERE/gkd_step.py" --models "$MODELS" --lmbda 1.0 \
        --steps "$STEPS" --loss-impl chunked ;;
      ours_full) run ours_full "$PY" "$HERE/gkd_step.py" --models "$MODELS" --lmbda 1.0 \
        --steps "$STEPS" --loss-impl full ;;
      trl_distill) run trl_distill "$REF_PY" "$BENCH/trl_distill_anchor.py" --models "$MODELS" --steps "$STEPS" ;;
      trl_gkd) run trl_gkd "$REF_PY" "$BENCH/trl_gkd_anchor.py" --models "$MODELS" --lmbda 1.0 --steps "$STEPS" ;;
      easydel) run easydel "$EASYDEL_PY" "$BENCH/easydel_gkd_anchor.py" --models "$MODELS" --lmbda 1.0 --steps "$STEPS" ;;
    esac
  done
done
