#!/usr/bin/env bash
# The long fuzz run (npm run fuzz:long, after a build): 10^6 inputs per
# TypeScript target with coverage guidance, then 10^6 per libFuzzer harness
# of the C parsers. Any argument goes to the TypeScript run (e.g. --save to
# write the minimized corpora back, --target NAME, --target-seconds S to cap
# each target's time, --runs N).
#
# It takes hours on 2 cores: the slowest targets (direct/address-claims,
# tun/tcp-coalesce, link/peer-messages, descriptor/verify) run 100-3000
# inputs/s. FUZZ_LONG_RUNS=N changes the count for both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${FUZZ_LONG_RUNS:-1000000}"
cd "$root"
status=0
node dist/test/fuzz/guided.js --runs "$runs" "$@" || status=$?
bash test/native/fuzz/run.sh --runs "$runs" || status=$?
exit $status
