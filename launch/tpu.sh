#!/usr/bin/env bash
# Train pgm_jax on a Cloud TPU slice (one or many hosts) requested through queued resources.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu.sh COMMAND --name NAME --zone ZONE [options] [-- MAIN FLAGS...]

Runs pgm_jax on a Cloud TPU VM slice: every worker runs the same `python -m pgm_jax.main`,
which joins the other workers through jax.distributed (detected on TPU VMs).

Commands:
  create   request the slice as a queued resource (--spot / --reserved) and wait for ACTIVE
  setup    copy this checkout to every worker and install the pinned requirements plus the
           matching jax[tpu] into ~/pgm_jax/.venv
  train    run `python -m pgm_jax.main MAIN FLAGS` on --worker=all; each worker tees its
           output to ~/pgm_jax/logs/worker-<hostname>.log (the run itself also writes
           WORKDIR/logs/process_<i>.log)
  delete   delete the queued resource and its slice
  all      create, setup, train, then delete (also when training fails)

Options:
  --name NAME          queued resource and TPU node name (required)
  --zone ZONE          e.g. us-central2-b (required)
  --project PROJECT    default: gcloud's configured project
  --type TYPE          accelerator type (default v5litepod-16)
  --runtime VERSION    TPU VM software version (default v2-alpha-tpuv5-lite)
  --spot | --reserved  capacity (default on-demand)
  --dry-run            print the commands instead of running them
  -h, --help           this help

WORKDIR must be storage that every worker sees (a gcsfuse or NFS mount): checkpoints are
written by all workers together, config / metrics / samples by worker 0.

Example (16 v4 chips, parameters sharded over all of them):
  launch/tpu.sh all --name pgm --zone us-central2-b --type v4-32 \
      --runtime tpu-ubuntu2204-base --spot -- --config=configs/owt.py:pgm_8_8 \
      --workdir=/mnt/runs/pgm_8_8 --config.data.path=/mnt/data/owt \
      --config.mesh.data=1 --config.mesh.fsdp=-1
USAGE
}

command="${1:-}"
[[ "$command" == "-h" || "$command" == "--help" ]] && { usage; exit 0; }
[[ -n "$command" ]] && shift
name="" zone="" project="" type="v5litepod-16" runtime="v2-alpha-tpuv5-lite" capacity=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need "${2:-}" "$1"; name="$2"; shift 2 ;;
    --zone) need "${2:-}" "$1"; zone="$2"; shift 2 ;;
    --project) need "${2:-}" "$1"; project="$2"; shift 2 ;;
    --type) need "${2:-}" "$1"; type="$2"; shift 2 ;;
    --runtime) need "${2:-}" "$1"; runtime="$2"; shift 2 ;;
    --spot) capacity="--spot"; shift ;;
    --reserved) capacity="--reserved"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
main_flags=("$@")
case "$command" in
  create|setup|train|delete|all) ;;
  "") die "a command is required: create, setup, train, delete or all (see --help)" ;;
  *) die "unknown command $command: create, setup, train, delete or all (see --help)" ;;
esac
[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
if [[ "$command" == train || "$command" == all ]]; then
  [[ ${#main_flags[@]} -gt 0 ]] || die "$command needs the training flags after --, e.g. -- --config=configs/owt.py:pgm_8_8 --workdir=/mnt/runs/x"
fi

where=(--zone "$zone")
[[ -n "$project" ]] && where+=(--project "$project")

create() {
  local args=(gcloud compute tpus queued-resources create "$name" --node-id "$name"
              "${where[@]}" --accelerator-type "$type" --runtime-version "$runtime")
  [[ -n "$capacity" ]] && args+=("$capacity")
  run "${args[@]}"
  local describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
                  --format 'value(state.state)')
  if (( DRY_RUN )); then
    run "${describe[@]}"
    return
  fi
  local state=""
  until [[ "$state" == ACTIVE ]]; do
    state="$("${describe[@]}")"
    echo "queued resource $name: $state"
    case "$state" in
      FAILED|SUSPENDED) die "queued resource $name is $state" ;;
      ACTIVE) ;;
      *) sleep 30 ;;
    esac
  done
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command "$1"
}

setup() {
  local root archive
  root="$(repo_root)"
  archive="${TMPDIR:-/tmp}/pgm_jax-$name.tgz"
  # The checkout as it is (tracked and new files, nothing git ignores), not only commits.
  run bash -c "cd $(printf '%q' "$root") && git ls-files -co --exclude-standard -z | tar --null -T - -czf $(printf '%q' "$archive")"
  run gcloud compute tpus tpu-vm scp "$archive" "$name:pgm_jax.tgz" "${where[@]}" --worker=all
  ssh_all "mkdir -p ~/pgm_jax/logs && tar -xzf ~/pgm_jax.tgz -C ~/pgm_jax && cd ~/pgm_jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$(jax_version)'"
}

train() {
  ssh_all "cd ~/pgm_jax && .venv/bin/python -m pgm_jax.main $(quote_args "${main_flags[@]}") 2>&1 | tee logs/worker-\$(hostname).log; exit \${PIPESTATUS[0]}"
}

delete() {
  run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
}

case "$command" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  delete) delete ;;
  all)
    trap delete EXIT
    create
    setup
    train
    ;;
esac
