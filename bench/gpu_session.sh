#!/usr/bin/env bash
# One lent GPU session (issue 14), as run through the device tool: train, measure and
# export the whole zoo (one archive, split for the trip back), with the test suite on
# CUDA running niced beside the training, then GPU benchmarks in the time left before
# DEADLINE seconds. Needs .data/cifar10-jpeg.tar.gz and, where the machine lacks them,
# wheels in .whl/ (torchattacks, plotly, foolbox and its needs).
source "$(dirname "$0")/gpu_env.sh" session.log 570
export OMP_NUM_THREADS=2
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
