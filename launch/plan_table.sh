#!/bin/bash
# The memory table of docs/results/plans.md (issue 14): every pair on every slice, with and
# without the memory fields, one JSON line per plan (python -m gkd_jax.plan --json). Needs .[tpu-plan]; no TPU.
# Each plan compiles two programs for the topology: ~10-25 min of one CPU core per 7-9B pair
# (measured on a loaded 2-core machine), so the full grid is hours. Run one grid at a time on a
# 24 GB host: the TPU compiler holds ~14 GB of host RAM for a 7-9B pair. It resumes: a plan already
# in $OUT.done (one line per finished plan, fitting or not) is skipped, so rerun it after an
# interruption. A plan that does not fit at $BATCH leaves no JSON line, only a done line that
# says so (the compiler stops at the first buffer that does not fit; there is no peak to report)
# and the compiler's message in $OUT.oom.
#
#   OUT=plans.jsonl BATCH=8 bash launch/plan_table.sh [PAIR_FILTER]
#   OUT=plans.jsonl BATCH=16 SLICES=v5e-16 bash launch/plan_table.sh   # the batch is split over
#                                         # every chip: 16 chips take a multiple of 16
#   python launch/plan_markdown.py plans.jsonl     # docs/results/plans.md's table
#
# A plan the compiler accepts whose peak (arguments + temporaries) still exceeds the chip's HBM
# has a JSON line with fits: false and a done line `over-hbm`.
#
# CASCADE=1 answers "which slice to rent" in fewer compiles: per pair and slice, the variants in
# order until the first that fits (the defaults, else remat + a bfloat16 teacher, else bfloat16
# student weights and Adam state on top, else LoRA).
set -u
OUT=${OUT:-plans.jsonl}
BATCH=${BATCH:-8}
FILTER=${1:-}
CASCADE=${CASCADE:-0}
SLICES=${SLICES:-"v5e-8 v5p-8 v6e-8 v5e-16"}
PY=${PY:-python}
# student teacher prompt new_tokens (the paper's XSum lengths for T5, TRL's for the rest)
PAIRS=(
  "qwen2.5-1.5b qwen2.5-7b 512 128"
  "llama-3.1-8b llama-3.1-8b 512 128"
  "llama-3.2-1b llama-3.1-8b 512 128"
  "gemma-2-2b gemma-2-9b 512 128"
  "flan-t5-large flan-t5-xl 1024 64"
)
# label|flags: the defaults (float32 student, optimizer state and teacher); the memory fields a
# large run would turn on; the student's master weights (and so Adam's moments) in bfloat16 too,
# MaxText's way onto a smaller slice (coarser updates: the whole model still trains); and a
# LoRA student on top of remat + a bfloat16 teacher.
VARIANTS=(
  "defaults|"
  "remat+bf16-teacher|--config.remat=full --config.teacher_param_dtype=bfloat16"
  "bf16-student+remat+bf16-teacher|--config.remat=full --config.teacher_param_dtype=bfloat16 --config.param_dtype=bfloat16"
  "lora16+remat+bf16-teacher|--config.remat=full --config.teacher_param_dtype=bfloat16 --config.lora.rank=16"
)
touch "$OUT.done"
for slice in $SLICES; do
  for pair in "${PAIRS[@]}"; do
    read -r student teacher prompt new <<<"$pair"
    [[ -n "$FILTER" && "$student $teacher" != *"$FILTER"* ]] && continue
    for variant in "${VARIANTS[@]}"; do
      label=${variant%%|*}
      flags=${variant#*|}
      key="$student $teacher $slice $BATCH $label"
      if grep -qxF "$key ok" "$OUT.done"; then
        [[ "$CASCADE" == 1 ]] && break
        continue
      fi
      grep -qxF "$key does-not-fit" "$OUT.done" && continue
      grep -qxF "$key over-hbm" "$OUT.done" && continue
      echo "=== $key ($(date -u +%H:%M:%S))"
      # shellcheck disable=SC2086
      $PY -m gkd_jax.plan --config=configs/chat.py --student="$student" --teacher="$teacher" \
        --topology="$slice" --config.mesh.data=1 --config.mesh.fsdp=-1 \
        --config.data.max_prompt_len="$prompt" --config.max_new_tokens="$new" \
        --batch="$BATCH" --json="$OUT" $flags 2>&1 | tee "$OUT.last.log" |
        grep --line-buffered -E "^\[plan\]|^  |^topology|^student|Error"
      status=${PIPESTATUS[0]}
      if grep -q "runs out of memory" "$OUT.last.log"; then
        echo "$key does-not-fit" >>"$OUT.done"
        # the compiler's own words (how much it needed), for the table
        why=$(grep -o "the total memory required.*" "$OUT.last.log" | head -n 1)
        printf '%s\t%s\n' "$key" "$why" >>"$OUT.oom"
      elif grep -q "step peak.*: FITS" "$OUT.last.log"; then
        echo "$key ok" >>"$OUT.done"
        [[ "$CASCADE" == 1 ]] && break
      elif grep -q "step peak" "$OUT.last.log"; then
        # compiled, but arguments + temporaries exceed the chip: its JSON line says so (fits:
        # false), and the cascade goes on to the next variant
        echo "$key over-hbm" >>"$OUT.done"
      else
        # kept, so the next plan does not overwrite it; 137 = killed, e.g. by the kernel when the
        # host ran out of RAM (a 7-9B compile holds ~14 GB: one planner at a time on 24 GB)
        failed="$OUT.failed.$(date -u +%Y%m%dT%H%M%S).log"
        cp "$OUT.last.log" "$failed"
        echo "(plan failed with exit status $status; see $failed)"
      fi
    done
  done
done
