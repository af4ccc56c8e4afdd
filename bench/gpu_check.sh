#!/usr/bin/env bash
# One lent GPU session after the zoo is trained (issue 15): the 224 px inversion
# benchmark on the GPU (and that machine's CPU), then the suite's CPU-GPU agreement:
# the tests that need neither the app nor a package the GPU machine lacks, on CUDA,
# until DEADLINE seconds. Needs wheels in .whl/ for what the machine lacks (plotly,
# foolbox and its needs, torchattacks).
source "$(dirname "$0")/gpu_env.sh" check.log 420
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
