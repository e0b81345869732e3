#!/bin/sh
# The exhaustive fault-injection sweep (issue 15): every test of tests/faults.rs with the
# kill landing at calls 1..60 instead of CI's sample. Run as root from the checkout:
#   bench/faults.sh
# Latest figures: bench/results/faults.md.
set -eu
cd "$(dirname "$0")/.."
start=$(date +%s)
AGENTUSER_FAULTS=all cargo test --release --locked --test faults -- --test-threads=1 2>&1 | tail -n 5
echo "elapsed: $(( $(date +%s) - start )) s"
