#!/usr/bin/env bash
# One prepared GPU session: the CUDA tests, then the GPU throughput benchmark.
# Run from the repository root on a CUDA machine. Offline machines: carry wheels in .whl/
# (datasets, dill, multiprocess) and the MiniLM tokenizer/config in .gpu/minilm (no weights).
set -uo pipefail
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
[ -d .gpu/minilm ] && export QA_BENCH_TOKENIZER=$PWD/.gpu/minilm
# CHECK_ON_CPU=1: the same steps on a CPU, one timed step each: checks the script, measures nothing
if [ -n "${CHECK_ON_CPU:-}" ]; then
  PRESET_ARGS=(--preset cpu --warmup 1 --steps 1)
  SYSTEMS=${SYSTEMS:-plain,st,qa_lib,qa_lib-noecho,encode}
  grep -m1 "model name" /proc/cpuinfo | tee "$OUT/gpu.txt"
else
  PRESET_ARGS=(--preset gpu --grad-cache)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)" | tee -a "$OUT/gpu.txt"
# the CUDA tests use the tiny BERT built from the tokenizer/config folder
[ -n "${SKIP_TESTS:-}" ] || QA_TINY_SOURCE=${QA_BENCH_TOKENIZER:-} timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout ${BENCH_TIMEOUT:-420} python3 benchmarks/throughput.py "${PRESET_ARGS[@]}" \
  --systems "${SYSTEMS:-plain,st,qa_lib,qa_lib-noecho,qa_lib-noecho-compile,qa_lib-compile,encode}" \
  --out "$OUT" 2>&1 | tee "$OUT/bench.log"
