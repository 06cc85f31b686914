#!/usr/bin/env bash
# Runs on the GPU machine (see load-tests/gpu_bundle.sh for what it needs beside the repository).
#   bash load-tests/gpu_device.sh setup   unpack .gpu/*.tar.xz into $GPU_ROOT, report what is there
#   bash load-tests/gpu_device.sh run     the check (load-tests/gpu_check.py), JSON into $OUT
#   bash load-tests/gpu_device.sh deepbet the real network on the GPU vs the CPU (load-tests/gpu_deepbet.py)
# The repository's package folders are linked into radstream/ (as the installed package maps
# them), and a .pth file in the interpreter's site-packages names the unpacked dependencies and
# the repository: Triton's Python-backend stubs start with their own environment (no PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${GPU_ROOT:-/tmp/radstream-gpu}
PY=${PYTHON:-python3}
export JAVA_HOME="$ROOT/jre" PYTHONUNBUFFERED=1
link() {
  for pkg in producers:producers consumers:consumers stream-apps:stream_apps schemas:schemas; do
    [ -e "radstream/${pkg#*:}" ] || ln -s "../${pkg%%:*}" "radstream/${pkg#*:}"
  done
  # first on sys.path (an "import" line), so the numpy<2 that pytriton needs wins over the machine's numpy 2
  echo "import sys; sys.path[:0] = ['$ROOT/site', '$PWD']" \
    > "$($PY -c 'import site; print(site.getsitepackages()[0])')/radstream-gpu-check.pth"
}
case "${1:-run}" in
setup)
  mkdir -p "$ROOT/site"
  [ -f .gpu/site.tar.xz ] && tar xJf .gpu/site.tar.xz -C "$ROOT/site"
  [ -f .gpu/jre.tar.xz ] && tar xJf .gpu/jre.tar.xz -C "$ROOT"
  link
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h /dev/shm | tail -1; nproc
  "$JAVA_HOME/bin/java" -version 2>&1 | head -1
  $PY - <<'PY'
import sys, sysconfig, pathlib
lib = pathlib.Path(sysconfig.get_config_var("LIBDIR")) / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
print(sys.version.split()[0], "libpython:", lib, lib.exists())
import numpy, torch
print("numpy", numpy.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())
PY
  ;;
run)
  link
  shift || true
  $PY load-tests/gpu_check.py --out "${OUT:-var/gpu_check}" "$@"
  ;;
deepbet)
  link
  shift || true
  $PY load-tests/gpu_deepbet.py --wheel .gpu/deepbet-1.0.2-py3-none-any.whl --out "${OUT:-var/gpu_deepbet}" "$@"
  ;;
esac
