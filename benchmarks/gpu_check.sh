#!/usr/bin/env bash
# One-shot GPU check of qualcl (at most 7 minutes on one H100 / H200, so that a rerun fits the 15-minute device
# budget with the machine's start), run from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else gpu_check/
#
# 1. the Triton kernels on CUDA against the naive torch path: values and gradients in fp32, fp16 and
#    bf16, ragged shapes, every column form, masks, all-masked rows, top-K ties, K = M, column splits,
#    buffer overflow (tests/kernels/triton_checks.py --cuda);
# 2. the GPU benchmark tables at the targets' sizes (docs/performance.md G1-G5: bf16, N = M = 65,536),
#    qualcl and its peers in one process (python -m benchmarks.compare --device cuda);
# 3. the patch-discrimination criterion at 256·B items on CUDA (benchmarks/patch_discrimination.py);
# 4. a --precision bf16-mixed smoke run of every recipe on the GPU;
# 5. exact search on the GPU: qualcl RetrievalIndex vs matmul + torch.topk vs FAISS (on the GPU when
#    faiss' GPU build is importable, else its CPU index), 1,000 x 100k and 10,000 x 100k, k = 10;
# 6. SigLIP: the Triton kernels against the dense path (tests/losses/test_siglip.py, CUDA tests) and
#    fused_siglip vs the dense computation at B = 65,536 (benchmarks/siglip_gpu.py).
# Step 2's InfoNCE tables include the flex_attention InfoNCE peer (compiled, forward + backward).
#
# Everything lands in OUT_DIR (summary.md first). Nothing here is needed by CI; no step stops the
# others. The machine needs torch, triton, lightning, timm, torchmetrics, safetensors, einops and
# pyyaml; qualcl is used from src/ (no install). Peers missing there (pytorch-metric-learning,
# open_clip_torch on the lent H200 image) are recorded as absent in the tables; to include them,
# put their wheels on PYTHONPATH first.
set -uo pipefail
OUT_DIR=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
SUMMARY="$OUT_DIR/summary.md"
started=$(date +%s)

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log to OUT_DIR/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$? t1=$(date +%s)
    local verdict="ok"
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    echo "| $name | $verdict | $((t1 - t0)) s | \`$name.log\` |" >> "$SUMMARY"
    echo "[gpu_check] $name: $verdict after $((t1 - t0)) s"
}

{
    echo "# qualcl GPU check"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
    $PY -c "import torch, triton, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'lightning', lightning.__version__)" 2>&1
    echo '```'
    echo
    echo "| step | result | time | log |"
    echo "|---|---|---|---|"
} > "$SUMMARY"

smoke_runs() {  # every recipe, smoke preset, bf16-mixed, on the GPU; one log for all
    local failed=0
    for recipe in $RECIPES; do
        echo "=== $recipe"
        timeout 25 $PY -m qualcl.cli run "$recipe" --preset smoke --accelerator gpu --precision bf16-mixed \
            --out "$OUT_DIR/runs/$recipe" || failed=1
    done
    return $failed
}

# 1. kernel correctness on CUDA (every check, the slow random sweep included)
step kernels_cuda 60 $PY tests/kernels/triton_checks.py all --cuda

# 2. benchmark tables at the GPU targets' sizes; results into OUT_DIR (cuda.md, cuda.json)
step benchmarks_cuda 100 $PY -m benchmarks.compare --device cuda --budget 2 --repeats 5 --out "$OUT_DIR"

# 3. the patch-discrimination criterion on CUDA: the accelerator default (dense up to 2^24 entries) vs blocks
step patch_discrimination_cuda 30 $PY -m benchmarks.patch_discrimination --device cuda --batches 16 64 256 \
    --out "$OUT_DIR/patch_discrimination_cuda.md"

# 5. exact search on the GPU (qualcl vs matmul + topk vs FAISS), before the long smoke runs
step search_cuda 45 $PY -m benchmarks.retrieval --search-only --device cuda --search 1000x100000,10000x100000 \
    --search-repeats 3 --out "$OUT_DIR/retrieval_cuda.md"

# 6. SigLIP's Triton kernels on CUDA, then its time and memory at B = 65,536
step siglip_cuda 45 bash -c "$PY -m pytest -q -p no:cacheprovider tests/losses/test_siglip.py -k cuda && \
    $PY -m benchmarks.siglip_gpu --batch 65536 --dim 768 --repeats 5 --out $OUT_DIR/siglip_cuda.md"

# 4. bf16-mixed smoke runs of every recipe on the GPU
RECIPES="comcl mkcnet comcl-detector mirror-retrieval fundus-mm local-discrimination"
export -f smoke_runs
export OUT_DIR PY RECIPES
step smoke_bf16 150 bash -c smoke_runs
{
    echo
    echo "Smoke runs (bf16-mixed), test headline:"
    for recipe in $RECIPES; do
        metrics="$OUT_DIR/runs/$recipe/metrics.json"
        [ -f "$metrics" ] && echo "- $recipe: $($PY -c "import json,sys; t=json.load(open(sys.argv[1]))['test']; \
t=t.get('original', t); print(json.dumps(t.get('overall', t)))" "$metrics")"
    done
    echo
    echo "Total: $(( $(date +%s) - started )) s."
} >> "$SUMMARY"
# the device tool returns at most 8 files: keep the summary, the logs and the tables, not the run folders
rm -rf "$OUT_DIR/runs"
cat "$SUMMARY"
