# shellcheck shell=bash
# Helpers sourced by the launch scripts: dry-run aware command execution and argument checks.

DRY_RUN=0

# run CMD ARGS...: prints the command (shell-quoted) with --dry-run, else runs it.
run() {
  if (( DRY_RUN )); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# need VALUE FLAG: a flag's value must be present (the next word, not another flag).
need() {
  [[ $# -ge 2 && -n "$1" && "$1" != --* ]] || die "$2 needs a value (see --help)"
}

# quote_args ARGS...: one shell-quoted string, for commands run by a remote shell.
quote_args() {
  local out="" arg
  for arg in "$@"; do
    out+=" $(printf '%q' "$arg")"
  done
  printf '%s' "${out# }"
}

# repo_root: the checkout these scripts belong to.
repo_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# jax_version: the jax pin of requirements.txt (the TPU / GPU extras must match it).
jax_version() {
  sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$(repo_root)/requirements.txt"
}
