#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (one host or a multi-host pod): every worker
# runs the same `python -m gated_pixelcnn.main --distributed ...`, and JAX
# finds the other workers itself.
#
#   bash launch/tpu.sh SUBCOMMAND [--dry-run]
#
# Subcommands, in the order of a run's life:
#   create   create the TPU VM (QUEUED=1: a queued resource, then wait until
#            it is ACTIVE)
#   install  ship the checkout (`git archive HEAD`: committed files only,
#            uncommitted changes are NOT shipped) to every worker, unpack it
#            into ~/REPO_DIR, get Python 3.11 (uv), create ~/REPO_DIR/.venv
#            and install the package with its `tpu` extra; prints JAX's
#            device count on every worker. Safe to rerun (the venv is kept).
#            Refuses (before touching any file) on a worker where training
#            runs: `stop` first.
#   data     copy the prepared TFDS data folder DATA_GCS (gs://...) onto
#            every worker's own disk, into DATA_DIR, with `gcloud storage
#            rsync -r` (copies what is missing or changed only: rerun it to
#            resume or update); prints the size of DATA_DIR on every worker
#   run      start training, detached, on every worker, reading the data
#            from DATA_DIR on the worker's disk; each worker appends its
#            output to ~/logs/RUN_NAME.log. Rerunning resumes from the
#            newest checkpoint in WORKDIR.
#   logs     the last 50 lines of every worker's log
#   stop     SIGTERM to the training processes on every worker: the run
#            saves a checkpoint and exits 0 (waits for that, up to 10 min)
#   copy     every worker's log to RESULTS/logs/worker-<index>.log, and
#            WORKDIR (checkpoints, TensorBoard events, sample PNGs,
#            eval_results.json) to RESULTS/<last part of WORKDIR>
#   delete   delete the TPU VM (QUEUED=1: the queued resource)
#
# Data: training reads the TFDS data (array_record files) by random access,
# which the open-source array_record reader can do on local files only, not
# on gs:// (google/array_record#120), so the data must be on each worker's
# disk. Once: prepare the dataset on a machine that has its files (python
# -m gated_pixelcnn.prepare_data ... --data_dir=DIR, a local DIR) and upload
# the folder (gcloud storage rsync -r DIR gs://my-bucket/tfds); then `data`
# copies it to the workers of each new TPU VM.
#
# WORKDIR (checkpoints, TensorBoard, samples) must be on gs://: every worker
# must see the same folder, as the workers write each checkpoint together
# and must all restore the same step; a folder on each worker's own disk
# breaks resuming. Orbax and TensorBoard write to gs:// directly.
#
# Options:
#   --dry-run  print each command (one line, shell-quoted, after "+ ")
#              instead of running it; runs neither gcloud nor anything on
#              the TPU VM (same as DRY_RUN=1)
#   --help     this text
#
# Variables (environment); each subcommand requires only those it uses:
#   PROJECT           Google Cloud project id, e.g. my-project
#   ZONE              zone of the TPU, e.g. us-central2-b
#   TPU_NAME          name of the TPU VM (and of the queued resource),
#                     e.g. pixelcnn-v4-32
#   ACCELERATOR_TYPE  (create) TPU type and size, e.g. v5litepod-32, v4-32,
#                     v5p-64, v6e-16
#   RUNTIME_VERSION   (create) TPU software version; default from
#                     ACCELERATOR_TYPE: v4 tpu-ubuntu2204-base, v5litepod
#                     v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e
#                     v2-alpha-tpuv6e; required for other types
#   QUEUED            (create, delete) 1: use a queued resource; default 0
#   POLL_SECONDS      (create, QUEUED=1) between checks of the state,
#                     default 60
#   SPOT              (create) 1: Spot VMs (preemptible: `run` again after a
#                     preemption to resume); default 0
#   WORKDIR           (run, logs, copy) the run's folder, a gs:// path
#                     (run and copy refuse any other: see WORKDIR above),
#                     e.g. gs://my-bucket/runs/imagenet64
#   DATA_GCS          (data) the prepared TFDS data folder in Cloud Storage,
#                     the one that holds downsampled_imagenet/64x64/...
#                     (not that dataset's own folder), e.g.
#                     gs://my-bucket/tfds; the TPU VM's service account
#                     must be allowed to read it
#   DATA_DIR          (data, run) the TFDS data folder on each worker's
#                     disk: relative to the worker's home folder, or
#                     absolute; default tensorflow_datasets, i.e.
#                     ~/tensorflow_datasets on each worker (write it without
#                     ~, which your shell would expand to your own home).
#                     Not a gs:// path: refused (see Data above)
#   CONFIG            (run) config file, default configs/imagenet64.py
#   OVERRIDES         (run) more flags for gated_pixelcnn.main, split like
#                     shell words, e.g. "--config.batch_size=256
#                     --config.num_train_steps=100000"
#   RUN_NAME          (run, logs, copy) log name: ~/logs/RUN_NAME.log on each
#                     worker; default the last part of WORKDIR
#   RESULTS           (copy) local folder, default ./results/TPU_NAME
#   WORKERS           (copy) number of workers of the TPU VM, default:
#                     asked from gcloud (tpu-vm describe)
#   REPO_DIR          the checkout on each worker, a folder under the home
#                     folder, default gated_pixelcnn
#
# Example:
#   export PROJECT=my-project ZONE=us-central2-b TPU_NAME=pixelcnn \
#     ACCELERATOR_TYPE=v4-32 WORKDIR=gs://my-bucket/runs/imagenet64 \
#     DATA_GCS=gs://my-bucket/tfds
#   bash launch/tpu.sh create && bash launch/tpu.sh install
#   bash launch/tpu.sh data && bash launch/tpu.sh run; bash launch/tpu.sh logs
#   bash launch/tpu.sh stop; bash launch/tpu.sh copy; bash launch/tpu.sh delete

# This script writes shell code that runs on the TPU VM workers, where
# $HOME, $(hostname), ... are to expand: hence the many single quotes.
# shellcheck disable=SC2016
set -euo pipefail

launch_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# lib.sh is linted on its own; shellcheck need not follow it here.
# shellcheck source=/dev/null
source "$launch_dir/lib.sh"

var_help() {
  case $1 in
    PROJECT) echo "the Google Cloud project id, e.g. PROJECT=my-project" ;;
    ZONE) echo "the zone of the TPU, e.g. ZONE=us-central2-b" ;;
    TPU_NAME) echo "the name of the TPU VM, e.g. TPU_NAME=pixelcnn-v4-32" ;;
    ACCELERATOR_TYPE)
      echo "the TPU type and size, e.g. ACCELERATOR_TYPE=v5litepod-32" ;;
    RUNTIME_VERSION)
      echo "the TPU software version (no default for" \
        "ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}), e.g." \
        "RUNTIME_VERSION=tpu-ubuntu2204-base" ;;
    WORKDIR)
      echo "the run's folder, e.g. WORKDIR=gs://my-bucket/runs/imagenet64" ;;
    DATA_GCS)
      echo "the prepared TFDS data folder in Cloud Storage, e.g." \
        "DATA_GCS=gs://my-bucket/tfds" ;;
    *) echo "see --help" ;;
  esac
}

# What pgrep/pkill match against the command lines of the training
# processes. Anchored at the start, so that it matches `.venv/bin/python -m
# gated_pixelcnn.main ...` but not the remote shell running the --command
# string, whose command line contains these words further on.
readonly PROCESS_PATTERN='^[^ ]*python[0-9.]* -m gated_pixelcnn[.]main'
# Remote shell text that sets pattern to PROCESS_PATTERN on a worker.
PATTERN_STEP="pattern=$(quote "$PROCESS_PATTERN")"
readonly PATTERN_STEP
readonly ARCHIVE=gated_pixelcnn-src.tar.gz # shipped to each worker's home

CONFIG=${CONFIG:-configs/imagenet64.py}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
REPO_DIR=${REPO_DIR:-gated_pixelcnn}
POLL_SECONDS=${POLL_SECONDS:-60}
DATA_DIR=${DATA_DIR:-tensorflow_datasets}

default_runtime_version() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

# Exits 2 unless WORKDIR is a gs:// path, saying why.
check_workdir() {
  case $WORKDIR in
    gs://?*) return 0 ;;
  esac
  {
    echo "error: WORKDIR=$WORKDIR: must be a gs:// path, e.g."
    echo "  WORKDIR=gs://my-bucket/runs/imagenet64"
    echo "  All workers must share the WORKDIR: they write each checkpoint"
    echo "  together, and on a restart every process must restore the"
    echo "  same step, which a folder on each worker's own disk breaks."
    echo "  Orbax (checkpoints) and TensorBoard write to gs:// directly, and"
    echo "  copy fetches the WORKDIR from there (gcloud storage cp)."
  } >&2
  exit 2
}

# Requires VAR... and, unless RUN_NAME is set, WORKDIR; then sets RUN_NAME
# (default: the last part of WORKDIR, whose trailing slash goes). A WORKDIR
# among VAR... (the subcommands that use the folder itself: run, copy) must
# be a gs:// path.
require_run() {
  local needs=("$@")
  if [[ -z ${RUN_NAME:-} && " $* " != *" WORKDIR "* ]]; then
    needs+=(WORKDIR)
  fi
  require "${needs[@]}"
  if [[ " $* " == *" WORKDIR "* ]]; then
    check_workdir
  fi
  if [[ -n ${WORKDIR:-} ]]; then
    WORKDIR=${WORKDIR%/}
  fi
  RUN_NAME=${RUN_NAME:-${WORKDIR##*/}}
  case $RUN_NAME in
    '' | *[!A-Za-z0-9_.=-]*)
      usage_error "RUN_NAME=$RUN_NAME: use letters, digits and _.=- only" ;;
  esac
}

# Remote shell text that sets log to the path of the run's log on a worker.
remote_log() {
  echo "log=\"\$HOME/logs/$RUN_NAME.log\""
}

# The remote steps as one line of shell: "; " between them, or a space
# after a step that ends with "&".
join_steps() {
  local line="" step
  for step in "$@"; do
    case $line in
      '') line=$step ;;
      *'&') line="$line $step" ;;
      *) line="$line; $step" ;;
    esac
  done
  printf '%s\n' "$line"
}

# Remote shell text that fails the worker's command, saying "HOST: MSG...",
# if a training process runs there (pattern: set by PATTERN_STEP).
refuse_if_running() {
  echo 'if pgrep -f "$pattern" >/dev/null; then' \
    "echo \"\$(hostname): $*\" >&2; exit 1; fi"
}

# Runs the steps (remote shell text) on every worker, concurrently. Each
# starts in the home folder, in the login shell (bash).
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --worker=all --command="$(join_steps "$@")"
}

# Refuses a gs:// DATA_DIR; sets data_dir_step to remote shell text that sets
# data_dir to the path of DATA_DIR on a worker (a relative DATA_DIR is
# relative to the worker's home folder, not to this machine's).
set_data_dir_step() {
  check_data_dir "Copy the data onto every worker's disk instead:" \
    "  DATA_GCS=${DATA_DIR%/} bash launch/tpu.sh data" \
    "then leave DATA_DIR unset (~/tensorflow_datasets on each worker), or" \
    "set it to a folder on the workers' disks."
  local dir=$DATA_DIR
  while [[ $dir == ?*/ ]]; do
    dir=${dir%/}
  done
  case $dir in
    /*) data_dir_step="data_dir=$(quote "$dir")" ;;
    '~') data_dir_step='data_dir="$HOME"' ;;
    *)
      dir=${dir#'~/'} # ~/x written in quotes: x under the worker's home
      data_dir_step="data_dir=\"\$HOME\"/$(quote "$dir")"
      ;;
  esac
}

cmd_create() {
  local needs=(PROJECT ZONE TPU_NAME ACCELERATOR_TYPE)
  if [[ -z ${RUNTIME_VERSION:-} && -n ${ACCELERATOR_TYPE:-} ]]; then
    RUNTIME_VERSION=$(default_runtime_version "$ACCELERATOR_TYPE")
    if [[ -z $RUNTIME_VERSION ]]; then
      needs+=(RUNTIME_VERSION)
    fi
  fi
  require "${needs[@]}"
  local spot=()
  if [[ $SPOT == 1 ]]; then
    spot=(--spot)
  fi
  if [[ $QUEUED == 0 ]]; then
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
    return
  fi
  run gcloud compute tpus queued-resources create "$TPU_NAME" \
    --node-id="$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
  local describe=(gcloud compute tpus queued-resources describe "$TPU_NAME"
    --project="$PROJECT" --zone="$ZONE" --format='value(state.state)')
  show "${describe[@]}"
  if [[ $DRY_RUN == 1 ]]; then
    echo "# (then again every $POLL_SECONDS s until the state is ACTIVE)"
    return
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    case $state in
      ACTIVE)
        echo "queued resource $TPU_NAME is ACTIVE" >&2
        return
        ;;
      FAILED | SUSPENDED)
        die "queued resource $TPU_NAME is $state (details:" \
          "gcloud compute tpus queued-resources describe $TPU_NAME" \
          "--project=$PROJECT --zone=$ZONE); delete it (QUEUED=1" \
          "launch/tpu.sh delete) before creating it again"
        ;;
    esac
    echo "queued resource $TPU_NAME is ${state:-(no state yet)};" \
      "checking again in $POLL_SECONDS s" >&2
    sleep "$POLL_SECONDS"
  done
}

cleanup_dir=""
cleanup() {
  if [[ -n $cleanup_dir ]]; then
    rm -rf "$cleanup_dir"
  fi
}
trap cleanup EXIT

cmd_install() {
  require PROJECT ZONE TPU_NAME
  local repo tmp
  repo=$(cd "$launch_dir/.." && pwd)
  if [[ -n $(git -C "$repo" status --porcelain) ]]; then
    echo "warning: uncommitted changes and new files in $repo are not" \
      "shipped: install sends the files of the last commit (git archive" \
      "HEAD)" >&2
  fi
  if [[ $DRY_RUN == 1 ]]; then
    tmp=${TMPDIR:-/tmp}/tmp.XXXXXXXXXX # stands for mktemp -d's folder
  else
    tmp=$(mktemp -d)
    cleanup_dir=$tmp
  fi
  run git -C "$repo" archive --format=tar.gz --output="$tmp/$ARCHIVE" HEAD
  run gcloud compute tpus tpu-vm scp "$tmp/$ARCHIVE" "$TPU_NAME:" \
    --project="$PROJECT" --zone="$ZONE" --worker=all
  # Replaces the checkout but keeps its .venv; not while training runs from
  # it (that is checked before anything changes). TPU VM images have Python
  # 3.10: uv (pip-installed for the user) gets 3.11. Each step is skipped
  # or quick when its result is there already.
  local get_uv='command -v uv >/dev/null'
  get_uv+=' || python3 -m pip install --user --quiet uv'
  get_uv+=' || python3 -m pip install --user --quiet --break-system-packages uv'
  on_workers 'set -eu' "$PATTERN_STEP" \
    "$(refuse_if_running "training is running from ~/$REPO_DIR;" \
      "launch/tpu.sh stop first")" \
    'export PATH="$HOME/.local/bin:$PATH"' \
    "mkdir -p $REPO_DIR" \
    "find $REPO_DIR -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +" \
    "tar -xzf $ARCHIVE -C $REPO_DIR" \
    "rm -f $ARCHIVE" \
    "cd $REPO_DIR" \
    "$get_uv" \
    'uv python install 3.11' \
    '[ -x .venv/bin/python ] || uv venv --python 3.11 .venv' \
    "uv pip install --python .venv/bin/python --quiet -e '.[tpu]'" \
    "n=\$(.venv/bin/python -c 'import jax; print(jax.device_count())')" \
    'echo "$(hostname): JAX devices: $n"'
}

cmd_data() {
  require PROJECT ZONE TPU_NAME DATA_GCS
  local data_dir_step source=$DATA_GCS
  set_data_dir_step
  case $source in
    gs://?*) ;;
    *) usage_error "DATA_GCS=$DATA_GCS must be a gs:// folder, e.g." \
      "gs://my-bucket/tfds" ;;
  esac
  while [[ $source == gs://?*/ ]]; do
    source=${source%/}
  done
  # rsync copies the contents of source into data_dir (source's own name
  # is not repeated there), skipping the files that are there already.
  on_workers 'set -eu' "$data_dir_step" \
    'mkdir -p "$data_dir"' \
    "gcloud storage rsync -r $(quote "$source") \"\$data_dir\"" \
    'echo "$(hostname): $(du -sh "$data_dir" | cut -f1) in $data_dir"'
}

cmd_run() {
  require_run PROJECT ZONE TPU_NAME WORKDIR
  local data_dir_step
  set_data_dir_step
  local overrides=() # the words of OVERRIDES, set by parse_overrides
  parse_overrides
  local main
  main=$(quote .venv/bin/python -m gated_pixelcnn.main --distributed \
    --config="$CONFIG" --workdir="$WORKDIR")
  main+=' --config.data_dir="$data_dir"' # set by data_dir_step, on the worker
  if [[ ${#overrides[@]} -gt 0 ]]; then
    main+=" $(quote "${overrides[@]}")"
  fi
  local check_venv='if [ ! -x .venv/bin/python ]; then echo "$(hostname):'
  check_venv+=' no .venv, run launch/tpu.sh install first" >&2; exit 1; fi'
  # Only a warning: with --config.manual_dir or --config.download=True in
  # OVERRIDES the training prepares the data itself.
  local check_data='[ -d "$data_dir" ] || echo "$(hostname): warning: no'
  check_data+=' $data_dir (launch/tpu.sh data copies the data there)" >&2'
  # setsid + nohup + all three streams redirected: the training process
  # outlives the ssh session, which returns at once.
  on_workers 'set -eu' "$(remote_log)" "$PATTERN_STEP" \
    "$data_dir_step" \
    'mkdir -p "$HOME/logs"' \
    "cd $REPO_DIR" \
    "$check_venv" \
    "$(refuse_if_running "training is running already (launch/tpu.sh stop)")" \
    "$check_data" \
    'echo "== $(date -u +%FT%TZ) launch/tpu.sh run" >>"$log"' \
    "setsid nohup $main >>\"\$log\" 2>&1 </dev/null &" \
    'echo "$(hostname): started, log $log"'
}

cmd_logs() {
  require_run PROJECT ZONE TPU_NAME
  local tail='if [ -f "$log" ]; then tail -n 50 "$log"'
  tail+=' | sed "s/^/[$(hostname)] /"; else echo "[$(hostname)] no $log"; fi'
  on_workers "$(remote_log)" "$tail"
}

cmd_copy() {
  require_run PROJECT ZONE TPU_NAME WORKDIR
  local results=${RESULTS:-results/$TPU_NAME} workers=${WORKERS:-}
  run mkdir -p "$results/logs"
  # scp takes files from one worker at a time (gcloud refuses --worker=all
  # for a download): hence the number of workers.
  if [[ -z $workers ]]; then
    local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME"
      --project="$PROJECT" --zone="$ZONE"
      --format='value(networkEndpoints.len())')
    show "${describe[@]}"
    if [[ $DRY_RUN == 1 ]]; then
      echo "# then for each worker, 0 to that number - 1 (here worker 0):"
      workers=1
    else
      workers=$("${describe[@]}")
      case $workers in
        '' | 0 | *[!0-9]*)
          die "cannot tell the number of workers of $TPU_NAME (got" \
            "'$workers'); set WORKERS" ;;
      esac
    fi
  fi
  local i
  for ((i = 0; i < workers; i++)); do
    run gcloud compute tpus tpu-vm scp "$TPU_NAME:logs/$RUN_NAME.log" \
      "$results/logs/worker-$i.log" --project="$PROJECT" --zone="$ZONE" \
      --worker="$i" || echo "warning: no log from worker $i" >&2
  done
  run gcloud storage cp -r "$WORKDIR" "$results/"
}

cmd_stop() {
  require PROJECT ZONE TPU_NAME
  # pkill does not match itself, and the pattern does not match the shell.
  local signal='if ! pkill -TERM -f "$pattern"; then'
  signal+=' echo "$(hostname): no training process"; exit 0; fi'
  local wait='for _ in $(seq 300); do'
  wait+=' pgrep -f "$pattern" >/dev/null || break; sleep 2; done'
  local check='if pgrep -f "$pattern" >/dev/null; then'
  check+=' echo "$(hostname): still running after 10 min" >&2; exit 1; fi'
  on_workers "$PATTERN_STEP" "$signal" \
    'echo "$(hostname): sent SIGTERM, waiting for the checkpoint"' \
    "$wait" "$check" 'echo "$(hostname): stopped"'
}

cmd_delete() {
  require PROJECT ZONE TPU_NAME
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" \
      --project="$PROJECT" --zone="$ZONE" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --quiet
  fi
}

subcommand=""
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) usage_error "unknown option $arg (see --help)" ;;
    *)
      if [[ -n $subcommand ]]; then
        usage_error "one subcommand at a time, got $subcommand and $arg"
      fi
      subcommand=$arg
      ;;
  esac
done
check_bool DRY_RUN
check_bool QUEUED
check_bool SPOT
if [[ -n ${WORKERS:-} ]]; then
  check_count WORKERS
fi
case $POLL_SECONDS in
  '' | *[!0-9]*) usage_error "POLL_SECONDS=$POLL_SECONDS must be a number" ;;
esac
# A plain relative path: the checkout is replaced on install, so neither
# the home folder itself nor anything outside it.
case $REPO_DIR in
  [A-Za-z0-9_]*) ;;
  *) usage_error "REPO_DIR=$REPO_DIR must be a folder under the home folder" ;;
esac
case /$REPO_DIR/ in
  *[!A-Za-z0-9_./-]* | */./* | */../* | *//*)
    usage_error "REPO_DIR=$REPO_DIR must be a folder under the home folder" \
      "(letters, digits, _.-/)" ;;
esac

case $subcommand in
  create | install | data | run | logs | stop | copy | delete)
    "cmd_$subcommand"
    ;;
  '')
    usage >&2
    usage_error "no subcommand given"
    ;;
  *)
    usage_error "unknown subcommand '$subcommand'; expected one of: create," \
      "install, data, run, logs, stop, copy, delete (see --help)"
    ;;
esac
