#!/usr/bin/env bash
# Fan a sweep out over TPU VMs: one run at a time per VM, the runs dealt round-robin.
#
#   launch/tpu_sweep.sh SWEEP ROOT VM [VM ...] [-- SWEEP_FLAGS ...]
#   ZONE=us-central2-b launch/tpu_sweep.sh xsum:stage=gkd /mnt/gkd/xsum vm-0 vm-1 vm-2 \
#       -- --only='small' --config.steps=40000
#   DRY_RUN=1 launch/tpu_sweep.sh arith /tmp/arith-sweep vm-a vm-b   # print, run nothing
#
# SWEEP is a sweep of launch/sweeps/registry.py (name[:arg]); ROOT is the directory the runs
# write to ON THE VMs (a persistent disk or a gcsfuse mount shared by them, so collect.py sees
# every run); flags after `--` go to launch/sweep.py (--only=REGEX, --config.X=V overrides).
# Each run is
#   gcloud compute tpus tpu-vm ssh VM --worker=all --command="cd REPO_DIR && python -m ..."
# so every host of a multi-host slice starts the same program (JAX's multi-host model). The
# repository must be checked out and installed at REPO_DIR on every worker first, e.g.
#   gcloud compute tpus tpu-vm ssh VM --worker=all --command="git clone URL gkd_jax && \
#       pip install -e 'gkd_jax[hf]' 'jax[tpu]'"
# Environment: ZONE, PROJECT (gcloud defaults if unset), REPO_DIR (default gkd_jax, relative to
# the remote home), REMOTE_PYTHON (default python3), PYTHON (local interpreter for sweep.py),
# DRY_RUN=1, LOG_DIR (local logs, default ./tpu_sweep_logs). Reruns are cheap: runs whose
# ROOT/NAME/results.json exists here are not listed again (with ROOT mounted here too), and a
# rerun run resumes from its own checkpoints.
set -euo pipefail

usage() {
  sed -n '2,4p' "$0" >&2
  exit 2
}

[[ $# -ge 3 ]] || usage
sweep=$1
root=$2
shift 2
vms=()
while [[ $# -gt 0 && $1 != "--" ]]; do
  vms+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift  # the "--"
sweep_flags=("$@")
[[ ${#vms[@]} -ge 1 ]] || usage

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
repo_dir=${REPO_DIR:-gkd_jax}
log_dir=${LOG_DIR:-./tpu_sweep_logs}
gcloud_flags=()
[[ -n ${ZONE:-} ]] && gcloud_flags+=("--zone=$ZONE")
[[ -n ${PROJECT:-} ]] && gcloud_flags+=("--project=$PROJECT")

# "NAME<TAB>COMMAND" per run not yet done.
mapfile -t lines < <(
  "$python" "$here/sweep.py" --sweep="$sweep" --root="$root" --print_commands \
    --python="${REMOTE_PYTHON:-python3}" \
    ${sweep_flags[@]+"${sweep_flags[@]}"}
)
echo "${#lines[@]} runs over ${#vms[@]} VMs" >&2

# ssh_run VM NAME COMMAND: one run on every worker of VM, its output in LOG_DIR/NAME.log.
ssh_run() {
  local vm=$1 name=$2 cmd=$3
  local ssh=(gcloud compute tpus tpu-vm ssh "$vm" ${gcloud_flags[@]+"${gcloud_flags[@]}"}
    --worker=all "--command=cd $repo_dir && $cmd")
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "${ssh[@]}"
    printf '\n'
  else
    echo "[$vm] start $name" >&2
    if "${ssh[@]}" >"$log_dir/$name.log" 2>&1; then
      echo "[$vm] done $name" >&2
    else
      echo "[$vm] FAILED $name (see $log_dir/$name.log)" >&2
    fi
  fi
}

# vm_queue I: the runs dealt to VM number I (I, I + n, I + 2n, ...), one after another.
vm_queue() {
  local i=$1 j
  for ((j = i; j < ${#lines[@]}; j += ${#vms[@]})); do
    ssh_run "${vms[$i]}" "${lines[$j]%%$'\t'*}" "${lines[$j]#*$'\t'}"
  done
}

[[ -n ${DRY_RUN:-} ]] || mkdir -p "$log_dir"
for i in "${!vms[@]}"; do
  if [[ -n ${DRY_RUN:-} ]]; then
    vm_queue "$i"
  else
    vm_queue "$i" &
  fi
done
wait
