#!/usr/bin/env bash
# Adaptive concurrency vs static caps when a server's capacity drops (see bench/adaptive.rs).
# Prints a markdown table; with BENCH_WRITE=1 appends it to bench/RESULTS.md with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example adaptive >/dev/null
table=$(./target/release/examples/adaptive)
echo "$table"
if [[ "${BENCH_WRITE:-0}" == "1" ]]; then
  {
    echo
    echo "## Adaptive concurrency: a server's capacity drops from 40 to 10"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), command: \`bench/adaptive.sh\`"
    echo
    echo "$table"
  } >> bench/RESULTS.md
fi
