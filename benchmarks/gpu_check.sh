#!/usr/bin/env bash
# GPU check of the Triton k-Adam kernel (issue 16), for a machine with one CUDA GPU; under 5 minutes.
#   1. tests/optimizer/test_cuda.py: the kernel against the loop and torch's fused AdamW, inside a CUDA
#      graph, under torch.compile, with torch.amp.GradScaler (fails if torch sees no GPU);
#   2. benchmarks/step_time_cuda.py: ms per step for 1M-256M parameters, one table with the ratios to
#      torch's fused AdamW and to the memory-traffic floor.
# Needs a CUDA build of torch and triton (pip install -e '.[triton]'). PYTHON picks the interpreter
# (default: .venv/bin/python if present, else python). Extra arguments go to step_time_cuda.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # the compiled kernel, not the interpreter

"$PYTHON" - <<'PY'
import sys, torch, triton
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}, "
      f"{torch.cuda.device_count()} device(s)")
PY

start=$SECONDS
status=0
# -rs lists any skip with its reason; a skip here means the GPU path was not checked.
timeout 150 "$PYTHON" -m pytest tests/optimizer/test_cuda.py -q -p no:cacheprovider -p no:xdist -rs || status=$?
echo "CUDA tests: exit ${status} in $((SECONDS - start)) s"

start=$SECONDS
timeout 150 "$PYTHON" benchmarks/step_time_cuda.py --device cuda --sizes 1M,4M,16M,64M,256M "$@" || status=$?
echo "step-time table: $((SECONDS - start)) s"
exit "$status"
