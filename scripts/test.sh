#!/usr/bin/env bash
# The test command: the unit tests, the Triton kernels under the interpreter, and the
# benchmarks as a smoke test (tiny shapes, no timing).
set -euo pipefail
cd "$(dirname "$0")/.."
pytest -q tests
# Without a GPU (where `pytest tests` already ran them) the Triton kernels run under the
# interpreter, which must be on before triton is imported.
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  TRITON_INTERPRET=1 pytest -q tests/test_kernel_backends.py -k triton
fi
pytest -q bench --benchmark-disable -p no:cacheprovider
