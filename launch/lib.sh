# shellcheck shell=bash
# Helpers shared by launch/tpu.sh and launch/slurm.sh; sourced, not run.
#
#   usage_error MSG...  print "error: MSG" to stderr and exit 2 (bad usage)
#   die MSG...          print "error: MSG" to stderr and exit 1 (failure)
#   require VAR...      exit 2 after naming every VAR that is unset or empty
#                       (the calling script defines var_help VAR, which
#                       prints what VAR is and an example)
#   check_bool VAR      exit 2 unless $VAR is 0 or 1
#   check_count VAR     exit 2 unless $VAR is a positive integer
#   quote ARG...        the ARGs as one line of shell words: a word that
#                       needs quoting is single-quoted, so the line can be
#                       pasted into bash (and read back with shlex.split)
#   show CMD ARG...     print "+ CMD ARG..." (quoted): on stdout with
#                       DRY_RUN=1, on stderr (a trace, like set -x) otherwise
#   run CMD ARG...      show the command, then run it unless DRY_RUN=1
#   split_words TEXT    the words of TEXT, one a line, split like a shell
#                       splits them (blanks separate, '...', "..." and \
#                       quote) but without any expansion; exit 2 on
#                       unbalanced quotes
#   parse_overrides     sets the array overrides to the words of
#                       $OVERRIDES (split_words); exit 2 if they do not split
#   check_data_dir HINT...
#                       exit 2 if $DATA_DIR is a gs:// (or other URL) path,
#                       saying why training cannot read its data there and
#                       then HINT (one line each: what to do instead)
#   usage               the calling script's header comment (its doc)
#
# Written for bash 3.2 and later (macOS's /bin/bash included): no
# associative arrays, no ${var@Q}, no mapfile.

DRY_RUN=${DRY_RUN:-0}

usage_error() {
  echo "error: $*" >&2
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 1
}

require() {
  local name missing=0
  for name in "$@"; do
    if [[ -z ${!name:-} ]]; then
      echo "error: $name is not set: $(var_help "$name")" >&2
      missing=1
    fi
  done
  if ((missing)); then
    echo "(run with --help for every variable)" >&2
    exit 2
  fi
}

check_bool() {
  case ${!1:-} in
    0 | 1) ;;
    *) usage_error "$1=${!1:-} must be 0 or 1" ;;
  esac
}

check_count() {
  case ${!1:-} in
    '' | 0 | *[!0-9]*) usage_error "$1=${!1:-} must be a positive integer" ;;
  esac
}

# Sets REPLY to ARG in single quotes, each ' in it written as '\''.
_single_quote() {
  local s=$1 q="'" out=""
  while [[ $s == *"$q"* ]]; do
    out="$out${s%%"$q"*}'\\''"
    s=${s#*"$q"}
  done
  REPLY="'$out$s'"
}

# Sets REPLY to ARG as one shell word: as it is if that is safe, else
# single-quoted; of --flag=VALUE only VALUE (--command='...' reads better
# than '--command=...').
_quote_word() {
  local s=$1 flag
  case $s in
    '') REPLY="''" ;;
    *[!A-Za-z0-9_@%+=:,./-]*)
      flag=${s%%=*}
      if [[ $s == -*=* && $flag != *[!A-Za-z0-9_.-]* ]]; then
        _single_quote "${s#*=}"
        REPLY="$flag=$REPLY"
      else
        _single_quote "$s"
      fi
      ;;
    *) REPLY=$s ;;
  esac
}

quote() {
  local arg line=""
  for arg in "$@"; do
    _quote_word "$arg"
    line="${line:+$line }$REPLY"
  done
  printf '%s\n' "$line"
}

show() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
  fi
}

run() {
  show "$@"
  if [[ $DRY_RUN != 1 ]]; then
    "$@"
  fi
}

split_words() {
  # xargs splits words the way POSIX specifies for its input: blanks
  # separate, quotes and backslashes protect; nothing is expanded.
  if [[ -n ${1//[[:space:]]/} ]]; then
    printf '%s\n' "$1" | xargs printf '%s\n' 2>/dev/null ||
      usage_error "cannot split into words (unbalanced quotes?): $1"
  fi
}

parse_overrides() {
  local words word
  overrides=()
  words=$(split_words "${OVERRIDES:-}") || exit 2
  if [[ -n $words ]]; then
    while IFS= read -r word; do
      overrides+=("$word")
    done <<<"$words"
  fi
}

check_data_dir() {
  local line
  case ${DATA_DIR:-} in
    *://*) ;;
    *) return 0 ;;
  esac
  {
    echo "error: DATA_DIR=$DATA_DIR: the data must be in a folder on a file"
    echo "  system, not at a gs:// (or other remote) path."
    echo "  Training reads the prepared TFDS data (array_record files) by"
    echo "  random access (builder.as_data_source), and the open-source"
    echo "  array_record reader cannot do that on GCS (gs://) or any other"
    echo "  remote path: there is no implementation of random access for GCS"
    echo "  (google/array_record#120, tensorflow/datasets#5100). The WORKDIR"
    echo "  (checkpoints, TensorBoard) may stay on gs://."
    for line in "$@"; do
      echo "  $line"
    done
  } >&2
  exit 2
}

usage() {
  # The header comment of the script that sourced this file, without "#".
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' \
    "${BASH_SOURCE[${#BASH_SOURCE[@]} - 1]}"
}
