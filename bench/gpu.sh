#!/usr/bin/env bash
# The CPU benchmarks' ratios on a GPU box, in one command (about 6-8 minutes):
#
#   bench/gpu.sh [LARGE_MODEL_DIR]
#
# 1. checks that CTranslate2 sees a GPU (its CUDA build needs cuBLAS 12 and
#    cuDNN 9; on a machine without them: pip install nvidia-cublas-cu12
#    nvidia-cudnn-cu12 into .venv and put their lib folders on LD_LIBRARY_PATH);
# 2. bench/batching.py on Whisper base, float16: N = 1, 16, 64 jobs, modes a
#    (faster-whisper per job), c (altyazi, all at once), 1 (altyazi batch 1)
#    and d (bare CTranslate2 ceiling), with --steps (each engine step and its WER);
# 3. bench/longmedia.py on base: 4 videos of 6 min, VAD on, modes a and c;
# 4. with LARGE_MODEL_DIR (a CTranslate2 folder, e.g. large-v3 converted), step 2
#    again on it with N = 16.
#
# Results land in bench/out/gpu/ (JSON) and in bench/out/gpu/summary.txt.
# Run `make setup` first (it prepares the base model under ./data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
OUT=bench/out/gpu
BASE=data/models/whisper-base
LARGE="${1:-}"
mkdir -p "$OUT"

[[ -x $PY ]] || { echo "gpu.sh: run 'make setup' first (no $PY)" >&2; exit 2; }
if ! "$PY" -c 'import ctranslate2, sys; sys.exit(ctranslate2.get_cuda_device_count() == 0)'; then
    echo "gpu.sh: CTranslate2 sees no CUDA device (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))" >&2
    exit 2
fi
[[ -d $BASE ]] || "$PY" -m app.model_files prepare base --data-dir data >/dev/null
[[ -z $LARGE || -f $LARGE/model.bin ]] || { echo "gpu.sh: $LARGE has no model.bin" >&2; exit 2; }

{
    echo "# altyazi on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1), $(date -u +%F)"
    echo "## bench/batching.py, base float16"
    "$PY" bench/batching.py --device cuda --compute-type float16 --model "$BASE" \
        --n 1,16,64 --modes ac1d --steps --max-batch-size 16 --no-fairness \
        --out "$OUT/batching-base.json" 2>&1 | grep -v '^note:'
    echo "## bench/longmedia.py, base float16, VAD on"
    "$PY" bench/longmedia.py --device cuda --compute-type float16 --model base \
        --modes a,c --vad on --json "$OUT/longmedia-base.json" 2>&1 | sed -n '/^mode /,/^x rt/p'
    if [[ -n $LARGE ]]; then
        echo "## bench/batching.py, $LARGE float16"
        "$PY" bench/batching.py --device cuda --compute-type float16 --model "$LARGE" \
            --n 16 --modes ac1 --steps --max-batch-size 16 --no-fairness \
            --out "$OUT/batching-large.json" 2>&1 | grep -v '^note:'
    fi
} | tee "$OUT/summary.txt"
