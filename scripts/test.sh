#!/usr/bin/env bash
# The test command: the unit tests, the Triton kernels under the interpreter, and the
# benchmarks as a smoke test (tiny shapes, no timing).
set -euo pipefail
cd "$(dirname "$0")/.."
pytest -q tests
pytest -q bench --benchmark-disable -p no:cacheprovider
