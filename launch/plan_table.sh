#!/bin/bash
# The README's memory table (issue 14): every pair on every slice, with and without the memory
# fields, one JSON line per plan (python -m gkd_jax.plan --json). Needs .[tpu-plan]; no TPU.
# Each plan compiles two programs for the topology: ~10-25 min of one CPU core per 7-9B pair
# (measured on a loaded 2-core machine), so the full grid is hours; BATCH=bisect multiplies it by
# the number of compiles (~4-7).
#
#   OUT=plans.jsonl BATCH=8 bash launch/plan_table.sh [PAIR_FILTER]
set -u
OUT=${OUT:-plans.jsonl}
BATCH=${BATCH:-8}
FILTER=${1:-}
SLICES=${SLICES:-"v5e-8 v5e-16 v5p-8 v6e-8"}
# student teacher prompt new_tokens (the paper's XSum lengths for T5, TRL's for the rest)
PAIRS=(
  "qwen2.5-1.5b qwen2.5-7b 512 128"
  "llama-3.2-1b llama-3.1-8b 512 128"
  "llama-3.1-8b llama-3.1-8b 512 128"
  "gemma-2-2b gemma-2-9b 512 128"
  "flan-t5-small flan-t5-xl 1024 64"
  "flan-t5-base flan-t5-xl 1024 64"
  "flan-t5-large flan-t5-xl 1024 64"
)
VARIANTS=(
  ""
  "--config.remat=full --config.teacher_param_dtype=bfloat16"
)
for pair in "${PAIRS[@]}"; do
  read -r student teacher prompt new <<<"$pair"
  [[ -n "$FILTER" && "$student $teacher" != *"$FILTER"* ]] && continue
  for slice in $SLICES; do
    for variant in "${VARIANTS[@]}"; do
      echo "=== $student <- $teacher on $slice ${variant:-(defaults)}"
      # shellcheck disable=SC2086
      python -m gkd_jax.plan --config=configs/chat.py --student="$student" --teacher="$teacher" \
        --topology="$slice" --config.mesh.data=1 --config.mesh.fsdp=-1 \
        --config.data.max_prompt_len="$prompt" --config.max_new_tokens="$new" \
        --batch="$BATCH" --json="$OUT" $variant || echo "(plan failed: $?)"
    done
  done
done
