#!/usr/bin/env bash
# The GPU check (docs/gpu.md): every figure of the GPU path on one CUDA device, one JSON
# line each, in about 10 minutes. Run it on a cluster's GPU node, in the checkout, after
# `bash scripts/install.sh` (a GPU node needs a CUDA wheel of torch: see docs/gpu.md):
#     bash scripts/gpu_check.sh | tee gpu_check.jsonl
# Without CUDA it prints every CUDA figure as skipped, with the reason, and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
run() {  # run LIMIT_S FIGURE CMD...: one figure's lines; a failure or timeout is a line too
    local limit=$1 figure=$2
    shift 2
    timeout "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        status=1
        printf '{"bench": "gpu_check", "figure": "%s", "failed": true, "exit_code": %d}\n' "$figure" "$rc"
    fi
}
reason=$("$PY" -c 'import torch; print("" if torch.cuda.is_available() else "torch sees no CUDA device")')
"$PY" -c 'import json, torch; print(json.dumps({"bench": "gpu_check", "figure": "device", "torch": torch.__version__, "cuda": torch.version.cuda, "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))'
if [ -n "$reason" ]; then
    for figure in ot_cuda_eps0.01 ot_cuda_eps0.05 step_fp32 step_bf16; do
        printf '{"bench": "gpu_check", "figure": "%s", "skipped": true, "reason": "%s"}\n' "$figure" "$reason"
    done
    run 60 bench_gpu "$PY" benchmarks/bench_gpu.py
    exit $status
fi
# Sinkhorn on CUDA, its ratio to the cost-matrix floor (forward + backward), eps 0.01 and 0.05
run 150 ot_cuda "$PY" benchmarks/bench_ot.py --device cuda --eps 0.01 0.05 --no-pot --repeats 11
# One MiniLM-sized distillation step (OT and token MSE) in fp32 and bf16
run 90 step_fp32 "$PY" benchmarks/bench_step.py --device cuda --precision fp32
run 90 step_bf16 "$PY" benchmarks/bench_step.py --device cuda --precision bf16
# A 1-GPU train, a 2-trial sweep with GPU trials, the real MiniLM's examples/s
run 300 bench_gpu "$PY" benchmarks/bench_gpu.py
exit $status
