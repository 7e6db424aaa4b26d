#!/usr/bin/env bash
# libFuzzer over the C parsers: build each harness here with clang
# -fsanitize=fuzzer,address,undefined, then fuzz it from its stored corpus
# (test/fuzz/corpus/c/<harness>/) into a scratch corpus.
#
#   bash test/native/fuzz/run.sh [--runs N | --seconds S] [--save] [harness...]
#
# --runs N: N inputs per harness (default: --seconds 10 each). --save merges
# what the run found into the stored corpus (libFuzzer -merge=1: only
# inputs that add coverage), smallest first. Prints per harness: inputs,
# exec/s, corpus size and coverage (libFuzzer's cov: edges, ft: features).
# Exits non-zero on a crash, a sanitizer report or a failed requirement
# (the crashing input is left in the scratch directory, path printed).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
store="$root/test/fuzz/corpus/c"
runs=""
seconds=10
save=0
harnesses=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --save) save=1; shift ;;
    -*) echo "usage: run.sh [--runs N | --seconds S] [--save] [harness...]" >&2; exit 2 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done
[[ ${#harnesses[@]} -gt 0 ]] || harnesses=(wire dtls)

cc="$(command -v clang || true)"
if [[ -z "$cc" ]]; then
  echo "fuzz-c: clang is not installed (apt-get install clang libclang-rt-dev)" >&2
  exit 2
fi
tmp="$(mktemp -d /tmp/shallot-libfuzzer.XXXXXX)"
keep=0
cleanup() { if [[ $keep == 0 ]]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

flags=(-std=c11 -D_DEFAULT_SOURCE -DOPENSSL_API_COMPAT=30000 -g -O1 -Wall -Wextra
  -Wno-unused-parameter -Werror -fsanitize=fuzzer,address,undefined
  -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
build() {
  case "$1" in
    wire) "$cc" "${flags[@]}" "$here/fuzz_wire.c" -o "$tmp/fuzz_wire" ;;
    dtls) "$cc" "${flags[@]}" "$here/fuzz_dtls.c" "$root/src/native/dtls_core.c" \
      -o "$tmp/fuzz_dtls" -lssl -lcrypto -lpthread ;;
    *) echo "fuzz-c: no harness $1" >&2; exit 2 ;;
  esac
}

# LeakSanitizer needs ptrace-like access that some sandboxes deny: where it
# cannot run, the harness runs again without it (run-asan.sh and valgrind
# check dtls_core's leaks there).
leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
for h in "${harnesses[@]}"; do
  build "$h"
  mkdir -p "$store/$h" "$tmp/$h-work" "$tmp/$h-seeds"
  bin="$tmp/fuzz_$h"
  # Seeds the harness writes itself (the DTLS one: a captured handshake).
  SHALLOT_FUZZ_SEEDS="$tmp/$h-seeds" ASAN_OPTIONS=detect_leaks=0 "$bin" -runs=0 "$tmp/$h-seeds" \
    >/dev/null 2>&1 || true
  limit=(-max_total_time="$seconds")
  [[ -n "$runs" ]] && limit=(-runs="$runs")
  log="$tmp/$h.log"
  set +e
  ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=0" "$bin" "${limit[@]}" -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$tmp/$h-" "$tmp/$h-work" "$store/$h" "$tmp/$h-seeds" \
    >"$log" 2>&1
  rc=$?
  if [[ $rc -ne 0 ]] && grep -q 'LeakSanitizer has encountered a fatal error\|LeakSanitizer does not work' "$log"; then
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" "$bin" "${limit[@]}" -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="$tmp/$h-" "$tmp/$h-work" "$store/$h" "$tmp/$h-seeds" \
      >"$log" 2>&1
    rc=$?
  fi
  set -e
  if [[ $rc -ne 0 ]]; then
    keep=1
    status=1
    tail -n 60 "$log"
    echo "fuzz-c: $h FAILED (exit $rc); artifacts and log in $tmp"
    continue
  fi
  inputs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  last="$(grep -E '^#[0-9]+' "$log" | tail -n 1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")"
  if [[ $save == 1 ]]; then
    mkdir -p "$tmp/$h-merged"
    ASAN_OPTIONS=detect_leaks=0 "$bin" -merge=1 -max_len=4096 "$tmp/$h-merged" "$store/$h" \
      "$tmp/$h-seeds" "$tmp/$h-work" >/dev/null 2>&1
    rm -f "$store/$h"/*
    cp "$tmp/$h-merged"/* "$store/$h"/ 2>/dev/null || true
  fi
  stored="$(find "$store/$h" -type f | wc -l) files, $(du -sk "$store/$h" | cut -f1) KB"
  printf 'c/%-26s %9s inputs %6s exec/s  corpus %s  cov %s edges, ft %s  stored %s ok\n' \
    "$h" "$inputs" "$rate" "$corp" "$cov" "$ft" "$stored"
done
exit $status
