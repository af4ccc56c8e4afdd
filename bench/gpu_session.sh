#!/usr/bin/env bash
# One lent GPU session (issue 14), as run through the device tool: train, measure and
# export the whole zoo (one archive, split for the trip back), with the test suite on
# CUDA running niced beside the training, then GPU benchmarks in the time left before
# DEADLINE seconds. Needs .data/cifar10-jpeg.tar.gz and, where the machine lacks them,
# wheels in .whl/ (torchattacks, plotly, foolbox and its needs).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/rl-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1 ROBUSTLENS_CACHE=/tmp/rl-cache OMP_NUM_THREADS=2
left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - START) )); }
at() { echo "$1 at $(( $(date +%s) - START )) s"; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
python3 -m core data --from .data/cifar10-jpeg.tar.gz > "$OUT/data.json" || exit 1
at "data ready"
# the suite on CUDA, beside the training (its models are tiny; the zoo tests wait for the export)
ROBUSTLENS_DATA=/tmp/rl-cache/data nice -n 10 timeout "${TEST_S:-420}" python3 -m pytest \
  -m "not browser and not slow" -q -p no:cacheprovider --timeout 120 \
  --ignore=tests/test_app.py --ignore=tests/test_pages.py --ignore=tests/test_browser.py \
  --ignore=tests/test_shipped.py > "$OUT/pytest-cuda.log" 2>&1 &
TESTS=$!
python3 -m core train --all --budget "${BUDGET:-320}" --archive "$OUT/zoo.tar" ${TRAIN_ARGS:-} > "$OUT/train.json"
at "train rc=$?"
if [ -f "$OUT/zoo.tar" ]; then split -b 15m "$OUT/zoo.tar" "$OUT/zoo.tar.part-" && rm "$OUT/zoo.tar"; fi
wait $TESTS
at "pytest rc=$?"
tail -3 "$OUT/pytest-cuda.log"
[ "$(left)" -gt 30 ] && timeout $(( $(left) - 10 )) python3 bench/gpu.py ${BENCH_ARGS:-} --out "$OUT/bench-gpu.json"
at "bench done"
