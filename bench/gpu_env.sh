# Sourced first by the GPU session scripts (bench/gpu_session.sh, bench/gpu_check.sh):
# everything printed is logged to $OUT/$1 (the files that come back), left() says the
# seconds before DEADLINE (default $2), at() stamps a line with the seconds since the
# start, and the wheels in .whl/ are installed for what the machine lacks.
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/rl-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$1") 2>&1
export PYTHONUNBUFFERED=1 ROBUSTLENS_CACHE=/tmp/rl-cache
DEADLINE=${DEADLINE:-$2}
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
at() { echo "$1 at $(( $(date +%s) - START )) s"; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name())"
