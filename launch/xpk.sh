#!/usr/bin/env bash
# Train pgm_jax as an xpk workload on a GKE TPU cluster (one or more slices).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/xpk.sh COMMAND --cluster CLUSTER --workload NAME [options] [-- MAIN FLAGS...]

xpk builds an image from this checkout on top of --base-image, and runs one container per
TPU VM host of --slices slices; each runs `python -m pgm_jax.main MAIN FLAGS`, which joins
the others through jax.distributed (detected on GKE TPU pods). With several slices the mesh
gets --config.mesh.dcn_data=SLICES (data parallelism across slices), unless MAIN FLAGS set it.

Commands:
  create   xpk workload create (installs the pinned requirements and jax[tpu] in the image)
  delete   xpk workload delete
  list     xpk workload list

Options:
  --cluster CLUSTER      xpk / GKE cluster (required)
  --workload NAME        workload name (required for create and delete)
  --zone ZONE            cluster zone (default: xpk's)
  --project PROJECT      default: gcloud's configured project
  --tpu-type TYPE        e.g. v5litepod-256 (default v5litepod-16)
  --slices N             number of slices (default 1)
  --base-image IMAGE     image with Python 3.11 (default python:3.11-slim)
  --spot                 spot capacity
  --dry-run              print the commands instead of running them
  -h, --help             this help

Every host's output is in the workload's container logs (xpk prints the link); the run also
writes WORKDIR/logs/process_<i>.log, so WORKDIR must be storage all hosts share.

Example:
  launch/xpk.sh create --cluster my-v5e --workload pgm-owt --tpu-type v5litepod-256 \
      --slices 2 -- --config=configs/owt.py:pgm_8_8 --workdir=/mnt/runs/pgm_8_8 \
      --config.data.path=/mnt/data/owt --config.mesh.data=1 --config.mesh.fsdp=-1
USAGE
}

command="${1:-}"
[[ "$command" == "-h" || "$command" == "--help" ]] && { usage; exit 0; }
[[ -n "$command" ]] && shift
cluster="" workload="" zone="" project="" tpu_type="v5litepod-16" slices=1
base_image="python:3.11-slim" spot=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) need "${2:-}" "$1"; cluster="$2"; shift 2 ;;
    --workload) need "${2:-}" "$1"; workload="$2"; shift 2 ;;
    --zone) need "${2:-}" "$1"; zone="$2"; shift 2 ;;
    --project) need "${2:-}" "$1"; project="$2"; shift 2 ;;
    --tpu-type) need "${2:-}" "$1"; tpu_type="$2"; shift 2 ;;
    --slices) need "${2:-}" "$1"; slices="$2"; shift 2 ;;
    --base-image) need "${2:-}" "$1"; base_image="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
main_flags=("$@")
[[ -n "$cluster" ]] || die "--cluster is required"
[[ "$slices" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got $slices"
common=(--cluster "$cluster")
[[ -n "$zone" ]] && common+=(--zone "$zone")
[[ -n "$project" ]] && common+=(--project "$project")

case "$command" in
  create)
    [[ -n "$workload" ]] || die "--workload is required"
    [[ ${#main_flags[@]} -gt 0 ]] || die "create needs the training flags after --, e.g. -- --config=configs/owt.py:pgm_8_8 --workdir=/mnt/runs/x"
    if (( slices > 1 )) && [[ " ${main_flags[*]} " != *" --config.mesh.dcn_"* ]]; then
      main_flags+=("--config.mesh.dcn_data=$slices")
    fi
    inner="pip install -q -r requirements.txt 'jax[tpu]==$(jax_version)' && python -m pgm_jax.main $(quote_args "${main_flags[@]}")"
    args=(xpk workload create "${common[@]}" --workload "$workload" --tpu-type "$tpu_type"
          --num-slices "$slices" --base-docker-image "$base_image" --script-dir "$(repo_root)"
          --command "$inner")
    (( spot )) && args+=(--spot)
    run "${args[@]}"
    ;;
  delete)
    [[ -n "$workload" ]] || die "--workload is required"
    run xpk workload delete "${common[@]}" --workload "$workload"
    ;;
  list) run xpk workload list "${common[@]}" ;;
  "") die "a command is required: create, delete or list (see --help)" ;;
  *) die "unknown command $command: create, delete or list (see --help)" ;;
esac
