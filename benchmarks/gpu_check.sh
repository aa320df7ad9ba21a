#!/usr/bin/env bash
# The accelerator check of issue 15, in one call on one lent GPU (H100): fused-attention
# numerics against the dense path on the device, training speed (OWT PGM 8/8 and MDLM,
# L=1024, bf16: tokens/s and MFU) with dense and with tokamax attention, and sampling speed
# (paper preset: PGM/MDLM ratio, PGM latency). Each part runs under its own timeout, so one
# that fails or hangs costs only its own time; logs and a summary go to $OUT.
#
# 1. Here (PyPI reachable), once, in the checkout that the device call sends:
#      bash benchmarks/gpu_check.sh --prepare
#    downloads into .whl/ (git-ignored, ~4 MB) the wheels that the device image lacks
#    (tokamax and its needs, ml-collections), for its Python 3.12. Its jax is the image's
#    own (0.11.x for CUDA 13, not the pinned 0.10.2: jaxlib and the CUDA plugin exceed the
#    64 MiB a call carries), so the summary starts with the versions that ran.
# 2. On the device (its image's python3 with its own jax + CUDA; nothing can be fetched):
#      bash benchmarks/gpu_check.sh             carry .whl, timeout_s 600
#    At most 500 s of parts (their timeouts: 60 + 4 x 80 + 120) plus start-up; a rerun can
#    pick parts:
#      PARTS="train_pgm_tokamax sampling" bash benchmarks/gpu_check.sh
#
# Environment: OUT (default runs/gpu_check), PY (python3), BATCH (sequences per device for
# train_speed, default 32), PARTS (default: all, in the order of ALL_PARTS below).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

WHEELS=(tokamax==0.0.12 qwix==0.1.8 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 einshape==1.0 typeguard==2.13.3
        immutabledict==4.3.1 ml-collections==1.1.0)

if [[ "${1:-}" == "--prepare" ]]; then
  pip_py=python3
  [[ -x .venv/bin/python ]] && pip_py=.venv/bin/python
  exec "$pip_py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT="${OUT:-runs/gpu_check}"
PY="${PY:-python3}"
BATCH="${BATCH:-32}"
ALL_PARTS="numerics train_pgm_dense train_pgm_tokamax train_mdlm_dense train_mdlm_tokamax sampling"
PARTS="${PARTS:-$ALL_PARTS}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
export PYTHONUNBUFFERED=1

if [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  echo "gpu_check $(date -u +%FT%TZ) parts: $PARTS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c 'import sys, jax, jaxlib, tokamax
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__,
      "tokamax", tokamax.__version__, "devices", jax.devices())' 2>&1 | tail -3
} | tee "$summary"

# part NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in $OUT/NAME.log, appends
# "NAME rc=.. s=.." and the command's last JSON line to the summary.
part() {
  local name=$1 limit=$2
  shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "== $name (timeout ${limit} s): $*" | tee -a "$summary"
  local start=$SECONDS rc=0
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local verdict="ok"
  ((rc == 124 || rc == 137)) && verdict="TIMED OUT"
  ((rc != 0 && rc != 124 && rc != 137)) && verdict="FAILED"
  echo "$name: $verdict rc=$rc $((SECONDS - start)) s" | tee -a "$summary"
  grep -v '^{' "$OUT/$name.log" | grep -v '^\s*$' | tail -n 30 >> "$summary"
  grep '^{' "$OUT/$name.log" | tail -n 1 >> "$summary"
}

part numerics 60 "$PY" benchmarks/attention_numerics.py --kernels tokamax --length 1024 \
  --heads 12 --head_dim 64 --quadratic
for algo in pgm mdlm; do
  for kernel in dense tokamax; do
    part "train_${algo}_${kernel}" 80 "$PY" benchmarks/train_speed.py --preset paper \
      --algos "$algo" --attention "$kernel" --batch_per_device "$BATCH" --steps 10 --warmup 2
  done
done
# Sampling: auto attention (tokamax on GPU), float32 sampling arithmetic only (float64 adds
# a compile per sampler and shape; the ratio is the comparison that matters here).
part sampling 120 "$PY" -m benchmarks.sampling_speed --preset paper --precisions float32 \
  --runs 2

echo "== done; logs in $OUT" | tee -a "$summary"
cat "$summary"
