#!/usr/bin/env bash
# Every GPU measurement the open work needs, in ONE device call (a session lent a GPU has 15 minutes of device
# time, start-up included): issue 21's attention/model/train bench, then issue 22's bigger VQGAN trained for a
# wall-clock budget. About 9 minutes; everything lands in $OUT (logs, the VQGAN checkpoint, JSON).
#
# Here first (the GPU machine has no apache-beam, decord or sample clips):
#   python benchmarks/bench_gpu.py --pack benchmarks/.shards-8k        # the demo mixture at 8K (or any 8K shards)
#   python benchmarks/bench_vqgan_gpu.py pack --config configs/vqgan-base-gpu.yaml   # benchmarks/.vqgan-frames
# Then the device tool: run(command="bash benchmarks/gpu_session.sh",
#   carry=["benchmarks/.shards-8k", "benchmarks/.vqgan-frames"], timeout_s=600)
# Back here: python benchmarks/bench_vqgan_quality.py --checkpoint tokenizers/data/vqgan-lwmkit-small.msgpack \
#   --checkpoint <files_at>/vqgan-base.msgpack --png docs/vqgan-probes-base.png
#
# GPU_SESSION_SMALL=1 runs both in their CPU smoke modes (a check of this script, not performance).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lwmkit from the checkout, not installed
OUT="${OUT:-runs/gpu-session}"
mkdir -p "$OUT"
SMALL=()
[ "${GPU_SESSION_SMALL:-0}" = 1 ] && SMALL=(--small)
SHARDS=()
[ -f benchmarks/.shards-8k/manifest.json ] && [ ${#SMALL[@]} = 0 ] && SHARDS=(--shards benchmarks/.shards-8k)

echo "== nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
echo "== issue 21: bench_gpu.py (budget ${BENCH_BUDGET_S:-240} s)"
timeout $(( ${BENCH_BUDGET_S:-240} + 60 )) python benchmarks/bench_gpu.py --budget "${BENCH_BUDGET_S:-240}" \
  "${SHARDS[@]}" "${SMALL[@]}" 2>&1 | tee "$OUT/bench_gpu.log"
echo "== issue 22: bench_vqgan_gpu.py train (${VQGAN_MINUTES:-4.5} min)"
if [ -f benchmarks/.vqgan-frames/frames.npz ]; then
  python benchmarks/bench_vqgan_gpu.py train --config configs/vqgan-base-gpu.yaml --minutes "${VQGAN_MINUTES:-4.5}" \
    --out "$OUT/vqgan-base.msgpack" "${SMALL[@]}" 2>&1 | tee "$OUT/vqgan.log"
else
  echo "no benchmarks/.vqgan-frames/frames.npz: run bench_vqgan_gpu.py pack here and carry the folder" | tee "$OUT/vqgan.log"
fi
ls -la "$OUT"
