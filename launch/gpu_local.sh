#!/usr/bin/env bash
# Train pgm_jax on the GPUs of this machine: one process for all, or one process per GPU.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu_local.sh [--processes N] [--port PORT] [--dry-run] -- MAIN FLAGS...

  --processes 1   (default) one process drives every visible GPU; no jax.distributed
  --processes N   N processes; process i sees GPU i only (CUDA_VISIBLE_DEVICES=i) and joins
                  the others through --coordinator_address=localhost:PORT. Each writes
                  logs/gpu_local/process_<i>.log; if one fails the others are stopped.
  --port PORT     coordinator port (default 12355)
  --dry-run       print the commands instead of running them
  -h, --help      this help

The checkout's .venv needs the CUDA build of jax:
  .venv/bin/pip install 'jax[cuda12]==<the jax pin of requirements.txt>'
Example:
  launch/gpu_local.sh -- --config=configs/owt.py:pgm_8_8 --workdir=runs/pgm_8_8 \
      --config.data.path=/data/owt --config.train.grad_accum=4
USAGE
}

processes=1 port=12355
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) need "${2:-}" "$1"; processes="$2"; shift 2 ;;
    --port) need "${2:-}" "$1"; port="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer, got $processes"
[[ $# -gt 0 ]] || die "the training flags are required after --, e.g. -- --config=configs/owt.py:pgm_8_8 --workdir=runs/x"

root="$(repo_root)"
python="$root/.venv/bin/python"
cd "$root"
if (( processes == 1 )); then
  run "$python" -m pgm_jax.main "$@"
  exit 0
fi

run mkdir -p logs/gpu_local
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
for (( i = 0; i < processes; i++ )); do
  cmd=(env "CUDA_VISIBLE_DEVICES=$i" "$python" -m pgm_jax.main
       "--coordinator_address=localhost:$port" "--num_processes=$processes" "--process_id=$i"
       "$@")
  if (( DRY_RUN )); then
    run "${cmd[@]}"
  else
    "${cmd[@]}" > "logs/gpu_local/process_$i.log" 2>&1 &
    pids+=("$!")
  fi
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    status=1
    stop_all
  fi
done
(( status == 0 )) || die "a process failed; see logs/gpu_local/process_<i>.log"
