#!/usr/bin/env bash
# Check the CUDA path and time `distill` on a machine with one NVIDIA GPU (no internet, that machine's torch).
# Usage: tools/device_check.sh [OUT_DIR] [--dry-run]
#   OUT_DIR defaults to $OUT, else ./device-check-out; device_check.json and one log per step go there.
#   --dry-run runs the same plan tiny on the CPU (checks the script itself); it installs nothing, so an
#   environment where gan_prune is installed from another checkout is left alone.
# Capped under 8 minutes: 45 s for the install, then tools/device_check.py within its own budget (400 s),
# every step of it with its own timeout; the outer timeout (415 s, then a kill 10 s later) is a last resort.
set -u
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
out="${OUT:-device-check-out}"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    out="$1"
    shift
fi
mkdir -p "$out"

dry_run=0
for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && dry_run=1
done

# The project only, without dependencies: that machine's torch (and whatever else it has) stays as it is.
if [ $dry_run -eq 1 ]; then
    echo "dry run: pip install skipped" >"$out/pip-install.log"
elif ! timeout 45 "$python" -m pip install --no-deps --no-build-isolation -e . >"$out/pip-install.log" 2>&1; then
    echo "pip install --no-deps -e . failed (see $out/pip-install.log); using the source tree through PYTHONPATH"
fi
# Either way the checked-out sources are the ones tested.
export PYTHONPATH="$PWD:$PWD/third_party/stylegan2_ada${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1

limit=415
[ $dry_run -eq 1 ] && limit=1300  # a shared CPU can be slow; nothing there is capped by GPU time
timeout --kill-after=10 "${DEVICE_CHECK_TIMEOUT:-$limit}" "$python" tools/device_check.py "$out" "$@"
status=$?
if [ $status -eq 124 ] || [ $status -eq 137 ]; then
    echo "device_check.py ran out of time; $out/device_check.json holds the steps that finished"
fi
exit $status
