#!/usr/bin/env bash
# Trains on a Slurm GPU cluster: one process per node, each driving all the
# node's GPUs, joined by jax.distributed (`python -m gated_pixelcnn.main
# --distributed`; JAX reads the coordinator, process count and process id
# from Slurm's variables).
#
#   bash launch/slurm.sh [--dry-run]
#
# Outside a job (no SLURM_JOB_ID) it submits itself with sbatch, to run in
# the repository root; inside the job (or an salloc allocation) it starts
# the training with srun, one task per node. Submitting again with the same
# WORKDIR resumes from the newest checkpoint there.
#
# Stopping: 120 s before the time limit Slurm sends SIGTERM to the training
# processes, which save a checkpoint and exit 0 (then submit again to go
# on); `scancel --signal=TERM JOBID` does the same at any time.
#
# Setup, once, in the repository root on the cluster's shared file system
# (Python >= 3.11):
#   python3.11 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#
# Options:
#   --dry-run  print the sbatch command and the commands the job would run
#              (inside a job: the srun command) instead of running them;
#              needs neither sbatch nor srun (same as DRY_RUN=1)
#   --help     this text
#
# Variables (environment):
#   WORKDIR        (required) the run's folder, which every node can reach,
#                  e.g. /shared/runs/imagenet64 or gs://my-bucket/runs/x
#   DATA_DIR       (required) TFDS data folder, a path that every node
#                  can read: on a shared file system (NFS, Lustre, ...) or
#                  copied to the same path on each node's local disk, e.g.
#                  /shared/tfds; not gs:// (refused, see Data below)
#   NODES          number of nodes, default 4
#   GPUS_PER_NODE  GPUs of each node to use, default 8
#   PARTITION      Slurm partition, default: the cluster's default
#   TIME           time limit, default 24:00:00
#   CONFIG         config file, default configs/imagenet64.py
#   VENV           the virtual environment, default .venv
#   OVERRIDES      more flags for gated_pixelcnn.main, split like shell
#                  words, e.g. "--config.batch_size=256"
#   JOB_NAME       default pixelcnn-<last part of WORKDIR>
# Relative paths are relative to the repository root. Other sbatch options
# through Slurm's own variables, e.g. SBATCH_ACCOUNT=... SBATCH_QOS=...
#
# Data: training reads the TFDS data (array_record files) by random access,
# which the open-source array_record reader can do on files only, not on
# gs:// (google/array_record#120): prepare the dataset into DATA_DIR (python
# -m gated_pixelcnn.prepare_data ... --data_dir=/shared/tfds), or copy a
# prepared folder there (gcloud storage rsync -r gs://my-bucket/tfds
# /shared/tfds). WORKDIR may be on gs://.
#
# Example:
#   WORKDIR=/shared/runs/imagenet64 DATA_DIR=/shared/tfds NODES=2 \
#     bash launch/slurm.sh
set -euo pipefail

launch_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ! -f $launch_dir/lib.sh ]]; then
  # Under sbatch this file runs from a copy in Slurm's spool folder; the
  # job starts in the repository root (sbatch --chdir below).
  launch_dir=$PWD/launch
fi
if [[ ! -f $launch_dir/lib.sh ]]; then
  echo "error: $launch_dir/lib.sh not found: submit with launch/slurm.sh," \
    "or run sbatch from the repository root" >&2
  exit 2
fi
# lib.sh is linted on its own; shellcheck need not follow it here.
# shellcheck source=/dev/null
source "$launch_dir/lib.sh"

var_help() {
  case $1 in
    WORKDIR)
      echo "the run's folder, which every node can reach, e.g." \
        "WORKDIR=/shared/runs/imagenet64" ;;
    DATA_DIR)
      echo "the TFDS data folder, which every node can read, e.g." \
        "DATA_DIR=/shared/tfds" ;;
    *) echo "see --help" ;;
  esac
}

for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument $arg (see --help)" ;;
  esac
done
check_bool DRY_RUN

NODES=${NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
TIME=${TIME:-24:00:00}
CONFIG=${CONFIG:-configs/imagenet64.py}
VENV=${VENV:-.venv}
require WORKDIR DATA_DIR
check_data_dir \
  "Use a folder that every node can read, on a shared file system" \
  "(NFS, Lustre, ...) or copied to the same path on each node's local disk," \
  "e.g.:" "  gcloud storage rsync -r ${DATA_DIR%/} /shared/tfds" \
  "and DATA_DIR=/shared/tfds."
check_count NODES
check_count GPUS_PER_NODE
WORKDIR=${WORKDIR%/}
JOB_NAME=${JOB_NAME:-pixelcnn-${WORKDIR##*/}}
overrides=() # the words of OVERRIDES, set by parse_overrides
parse_overrides

# JAX's Slurm detection gives each process local_device_ids=[SLURM_LOCALID]:
# with one task per node that is GPU 0 alone. JAX_LOCAL_DEVICE_IDS (read by
# jax.distributed.initialize when it is given no local_device_ids) makes
# the one process per node use all its GPUs (their indices as the process
# sees them, i.e. after Slurm set CUDA_VISIBLE_DEVICES).
device_ids=0
for ((i = 1; i < GPUS_PER_NODE; i++)); do
  device_ids+=",$i"
done

# One task per node with all the node's GPUs (the job's own allocation,
# given again so that an salloc allocation gets the same). --kill-on-bad-
# exit=1: a process that fails ends all of them (the others would wait for
# it in their collectives forever). --label: each output line starts with
# its task (= process) number.
srun_cmd=(srun --ntasks-per-node=1 --gpus-per-node="$GPUS_PER_NODE"
  --kill-on-bad-exit=1 --label
  "$VENV/bin/python" -m gated_pixelcnn.main --distributed
  --config="$CONFIG" --workdir="$WORKDIR" --config.data_dir="$DATA_DIR"
  ${overrides[@]+"${overrides[@]}"})

if [[ -n ${SLURM_JOB_ID:-} ]]; then # inside the job
  if [[ $DRY_RUN != 1 && ! -x $VENV/bin/python ]]; then
    die "no $VENV/bin/python in $PWD (see Setup in --help)"
  fi
  show export JAX_LOCAL_DEVICE_IDS="$device_ids"
  export JAX_LOCAL_DEVICE_IDS=$device_ids
  run "${srun_cmd[@]}"
  exit
fi

repo=$(cd "$launch_dir/.." && pwd)
if [[ $DRY_RUN != 1 ]]; then
  command -v sbatch >/dev/null ||
    die "sbatch not found: run this on a Slurm login node"
  (cd "$repo" && [[ -x $VENV/bin/python ]]) ||
    die "no $VENV/bin/python in $repo (see Setup in --help)"
fi
partition=()
if [[ -n ${PARTITION:-} ]]; then
  partition=(--partition="$PARTITION")
fi
# The job runs this script again (with SLURM_JOB_ID set): it sees these
# variables through --export=ALL.
export WORKDIR DATA_DIR NODES GPUS_PER_NODE TIME CONFIG VENV JOB_NAME
export OVERRIDES=${OVERRIDES:-}
# --signal=TERM@120, not B:TERM@120: without "B:" Slurm signals the job's
# steps, i.e. the training processes srun started, directly; "B:" would
# signal only this batch shell, which would then have to forward the
# signal to srun. (Slurm may send it up to a minute earlier than asked.)
run sbatch --nodes="$NODES" --ntasks-per-node=1 \
  --gpus-per-node="$GPUS_PER_NODE" --time="$TIME" \
  ${partition[@]+"${partition[@]}"} --job-name="$JOB_NAME" \
  --output=slurm-%x-%j.out --signal=TERM@120 --export=ALL --chdir="$repo" \
  "$repo/launch/slurm.sh"
if [[ $DRY_RUN == 1 ]]; then
  echo "# then the job runs, in $repo:"
  show export JAX_LOCAL_DEVICE_IDS="$device_ids"
  show "${srun_cmd[@]}"
fi
