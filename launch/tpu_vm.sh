#!/usr/bin/env bash
# One training run on a (multi-host) Cloud TPU VM slice: create it, copy this checkout to every
# worker, start the same command on all of them, delete the slice.
#
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup                       # this checkout (git HEAD) -> every worker
#   launch/tpu_vm.sh run --config=configs/arith.py --workdir=/mnt/gkd/arith [--config.X=V ...]
#   launch/tpu_vm.sh delete
#   DRY_RUN=1 launch/tpu_vm.sh run --config=...   # print the gcloud commands, run nothing
#
# Environment: TPU_NAME (default gkd-tpu), ZONE (default us-central2-b), ACCELERATOR_TYPE
# (default v4-16: 2 hosts), TPU_VERSION (runtime, default tpu-ubuntu2204-base), PROJECT (gcloud
# default if unset), SPOT=1 (a spot slice), REPO_DIR (on the workers, default gkd_jax),
# REMOTE_PYTHON (default python3), DETACH=1 (`run` starts the workers under nohup, logging to
# ~/gkd_train.log on each, and returns), DRY_RUN=1.
#
# `run` starts `python -m gkd_jax.train ARGS` on every worker (--worker=all): each host is one
# JAX process; gkd_jax.parallel.distributed.initialize_from_env finds the others through the TPU
# metadata (jax.distributed.initialize's own detection), each host feeds only its rows of a
# batch, and process 0 alone writes metrics and models. The --workdir must be one directory all
# workers share (a gcsfuse mount of a bucket or an NFS/Filestore path): orbax writes each host's
# shards of a checkpoint there. A preempted or stopped run resumes when `run` is repeated.
set -euo pipefail

name=${TPU_NAME:-gkd-tpu}
zone=${ZONE:-us-central2-b}
accelerator=${ACCELERATOR_TYPE:-v4-16}
version=${TPU_VERSION:-tpu-ubuntu2204-base}
repo_dir=${REPO_DIR:-gkd_jax}
python=${REMOTE_PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

where=("--zone=$zone")
[[ -n ${PROJECT:-} ]] && where+=("--project=$PROJECT")

# run_or_print CMD...: run it, or print it (shell-quoted) with DRY_RUN=1.
run_or_print() {
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# on_all_workers COMMAND: one shell command on every host of the slice, at once.
on_all_workers() {
  run_or_print gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all "--command=$1"
}

usage() {
  sed -n '2,9p' "$0" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
action=$1
shift
case $action in
  create)
    flags=("--accelerator-type=$accelerator" "--version=$version")
    [[ -n ${SPOT:-} ]] && flags+=(--spot)
    run_or_print gcloud compute tpus tpu-vm create "$name" "${where[@]}" "${flags[@]}"
    ;;
  setup)
    # The committed tree (git HEAD), so every worker runs the same code; then JAX for TPU.
    tarball=${TMPDIR:-/tmp}/gkd_jax-$$.tar.gz
    run_or_print git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
    run_or_print gcloud compute tpus tpu-vm scp "$tarball" "$name:gkd_jax.tar.gz" "${where[@]}" \
      --worker=all  # into the remote home
    on_all_workers "mkdir -p $repo_dir && tar -xzf ~/gkd_jax.tar.gz -C $repo_dir && \
$python -m pip install -q -U 'jax[tpu]' && $python -m pip install -q -e './${repo_dir}[hf]'"
    ;;
  run)
    [[ $# -ge 1 ]] || usage
    train="$python -m gkd_jax.train$(printf ' %q' "$@")"
    if [[ -n ${DETACH:-} ]]; then
      train="nohup $train > ~/gkd_train.log 2>&1 &"
    fi
    on_all_workers "cd $repo_dir && $train"
    ;;
  delete)
    run_or_print gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    ;;
  *)
    usage
    ;;
esac
