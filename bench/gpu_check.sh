#!/usr/bin/env bash
# One lent GPU session after the zoo is trained (issue 15): the 224 px inversion
# benchmark on the GPU (and that machine's CPU), then the suite's CPU-GPU agreement:
# the tests that need neither the app nor a package the GPU machine lacks, on CUDA,
# until DEADLINE seconds. Needs wheels in .whl/ for what the machine lacks (plotly,
# foolbox and its needs, torchattacks).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/rl-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1 ROBUSTLENS_CACHE=/tmp/rl-cache
left() { echo $(( ${DEADLINE:-420} - ($(date +%s) - START) )); }
at() { echo "$1 at $(( $(date +%s) - START )) s"; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name())"
timeout 240 python3 bench/imagenet_inversion.py --out "$OUT/imagenet-inversion-gpu.json"
at "inversion bench rc=$?"
# left out: the files that need streamlit (the app's), RobustBench, dill or Ray, which
# the GPU machine lacks
timeout $(( $(left) - 5 )) python3 -m pytest -m "not browser" -q -p no:cacheprovider \
  -p no:randomly -n 8 --timeout 120 --ignore=tests/test_app.py --ignore=tests/test_pages.py \
  --ignore=tests/test_browser.py --ignore=tests/test_decks.py --ignore=tests/test_shiplist.py \
  --deselect tests/test_one_way.py::test_the_cli_and_the_app_ask_for_the_same_keys \
  --ignore=tests/test_archs.py --ignore=tests/test_sources.py --ignore=tests/test_zoo.py \
  --ignore=tests/test_sweep.py > "$OUT/pytest-cuda.log" 2>&1
at "pytest rc=$?"
tail -15 "$OUT/pytest-cuda.log"
