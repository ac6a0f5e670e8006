#!/usr/bin/env bash
# Run the engage_jax pipeline on a Cloud TPU VM pod slice (default: TPU v5e-16, 4 hosts × 4 chips).
#
# Usage:
#   launch/tpu_vm.sh [--dry-run] [STEP ...] [-- EXTRA PIPELINE FLAGS]
#   STEP: create | copy | install | run | delete | all (= create copy install run; the default)
#
# Examples:
#   PROJECT=my-proj ZONE=us-west4-a TPU_NAME=engage-v5e16 \
#   WORKDIR=gs://my-bucket/esconv_llama3_8b CONFIG=configs/esconv_llama3_8b.py \
#     launch/tpu_vm.sh all -- --config.model.agent.path=/mnt/ckpt/Meta-Llama-3-8B-Instruct \
#                             --config.model.simulator.path=/mnt/ckpt/Meta-Llama-3-8B-Instruct \
#                             --config.tokenizer.path=/mnt/ckpt/Meta-Llama-3-8B-Instruct \
#                             --config.data.path=/mnt/data/esconv
#   launch/tpu_vm.sh --dry-run all        # print the gcloud commands only
#   launch/tpu_vm.sh delete               # release the slice
#
# Settings (environment variables):
#   PROJECT           GCP project                     (default: gcloud's configured project)
#   ZONE              zone with v5e capacity          (default: us-west4-a)
#   TPU_NAME          name of the TPU VM              (default: engage-jax)
#   ACCELERATOR_TYPE  slice type                      (default: v5litepod-16; 8×H100 is not a TPU: use
#                                                      launch/pipeline.py with --config.mesh.fsdp=8 there)
#   RUNTIME_VERSION   TPU VM image                    (default: v2-alpha-tpuv5-lite)
#   CONFIG            config file                     (default: configs/esconv_llama3_8b.py)
#   WORKDIR           output dir, a gs:// bucket so all hosts share it (required for run)
#   REMOTE_DIR        repo dir on each worker         (default: engage_jax)
#   SPOT              "1" to request spot capacity    (default: 0)
#   GIT_REF           what 'copy' ships (git archive)  (default: HEAD)
#
# The same command runs on every worker (--worker=all); launch/pipeline.py --distributed calls
# jax.distributed.initialize(), which on TPU VMs finds the coordinator and process ids itself, and
# the mesh in CONFIG (data=1, fsdp=16, tensor=1) spans all 16 chips. Check the memory plan first:
#   python launch/plan.py --config=configs/esconv_llama3_8b.py
set -euo pipefail

DRY_RUN=0
STEPS=()
EXTRA=()
usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    create|copy|install|run|delete) STEPS+=("$1") ;;
    all) STEPS+=(create copy install run) ;;
    *) echo "tpu_vm.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ ${#STEPS[@]} -eq 0 ]] && STEPS=(create copy install run)

PROJECT="${PROJECT:-$( (gcloud config get-value project 2>/dev/null || true) | tail -n1)}"
PROJECT="${PROJECT:-YOUR_PROJECT}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-engage-jax}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
CONFIG="${CONFIG:-configs/esconv_llama3_8b.py}"
WORKDIR="${WORKDIR:-}"
REMOTE_DIR="${REMOTE_DIR:-engage_jax}"
SPOT="${SPOT:-0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${TMPDIR:-/tmp}/engage_jax_src.tar.gz"
GC=(gcloud compute tpus tpu-vm)
COMMON=(--project="$PROJECT" --zone="$ZONE")

# Prints a command (shell-quoted); runs it unless --dry-run.
run_cmd() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

step_create() {
  local extra=()
  [[ "$SPOT" == "1" ]] && extra+=(--spot)
  run_cmd "${GC[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${extra[@]+"${extra[@]}"}"
}

step_copy() {
  # Only committed, tracked files (no .venv, no outputs): commit before copying. GIT_REF=<ref> to pick another.
  run_cmd git -C "$REPO_ROOT" archive --format=tar.gz -o "$TARBALL" "${GIT_REF:-HEAD}"
  run_cmd "${GC[@]}" scp "$TARBALL" "$TPU_NAME:~/engage_jax_src.tar.gz" "${COMMON[@]}" --worker=all
  run_cmd "${GC[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all \
    --command="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/engage_jax_src.tar.gz -C ~/$REMOTE_DIR"
}

step_install() {
  run_cmd "${GC[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all \
    --command="cd ~/$REMOTE_DIR && python3 -m pip install -U pip && python3 -m pip install -e . 'jax[tpu]'"
}

step_run() {
  if [[ -z "$WORKDIR" ]]; then
    if [[ $DRY_RUN -eq 1 ]]; then WORKDIR="gs://YOUR_BUCKET/engage_jax_run"; else
      echo "tpu_vm.sh: set WORKDIR (a gs:// path shared by all hosts) for 'run'" >&2; exit 2; fi
  fi
  local flags
  flags="$(printf ' %q' "${EXTRA[@]+"${EXTRA[@]}"}")"
  run_cmd "${GC[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all \
    --command="cd ~/$REMOTE_DIR && python3 launch/pipeline.py --distributed --config=$CONFIG --workdir=$WORKDIR${flags% }"
}

step_delete() {
  run_cmd "${GC[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet
}

for s in "${STEPS[@]}"; do "step_$s"; done
